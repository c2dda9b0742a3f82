"""``GET /metrics``: Prometheus text exposition (service/observability/metrics.py builds it).

Unauthenticated, like /healthz: it carries counts and latencies, never an owner, a job
id, a URL or a secret. Keep it off the public internet all the same (docs/operations.md).
"""

from __future__ import annotations

import functools

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.plumbing.auth import resources
from service.api.plumbing.openapi_doc import documented
from service.db import gauges
from service.observability import metrics as service_metrics


@documented(
    operationId="metrics", tags=["operations"], summary="Prometheus metrics",
    responses={"200": {"description": "Prometheus text format 0.0.4 (OpenMetrics when asked).",
                       "content": {"text/plain": {"schema": {"type": "string"}},
                                   "application/openmetrics-text": {"schema": {"type": "string"}}}}},
)
async def scrape(request: Request) -> Response:
    read = functools.partial(gauges.snapshot, resources(request).engine)
    body, content_type = await service_metrics.exposition(read, request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})


routes = [Route("/metrics", scrape, methods=["GET"])]
