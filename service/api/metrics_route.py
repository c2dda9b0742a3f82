"""``GET /metrics``: Prometheus text exposition (service/metrics.py builds it).

Unauthenticated, like /healthz: it carries counts and latencies, never an owner, a job
id, a URL or a secret. Keep it off the public internet all the same (docs/operations.md).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.auth import resources
from service.observability import metrics as service_metrics


async def scrape(request: Request) -> Response:
    body, content_type = await service_metrics.exposition(resources(request).engine, request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})


routes = [Route("/metrics", scrape, methods=["GET"])]
