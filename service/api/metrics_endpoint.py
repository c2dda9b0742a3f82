"""``GET /metrics``: Prometheus text exposition (service/observability/metrics.py builds it).

It carries counts and latencies, never a job id, a URL or a secret; owner names only
with METRICS_PER_OWNER=true. With METRICS_TOKEN set it answers only a request carrying
``Authorization: Bearer <METRICS_TOKEN>`` (compared in constant time); an API key does
not open it. The database's figures are read at most once every METRICS_CACHE_SECONDS
(service/observability/figures_cache.py), so scrapes cost the database nothing more
however many arrive.
"""

from __future__ import annotations

import functools
import hmac

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.plumbing.auth import bearer_token, resources
from service.api.plumbing.openapi_doc import documented
from service.db import gauges
from service.domain.errors import Unauthorized
from service.observability import metrics as service_metrics


class MetricsUnauthorized(Unauthorized):
    """/metrics needs `Authorization: Bearer <METRICS_TOKEN>` (the operator's metrics token, not an API key)."""


def require_token(request: Request) -> None:
    expected = resources(request).settings.metrics_token
    if expected is None:
        return
    given = bearer_token(request) or ""
    if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise MetricsUnauthorized()


@documented(
    operationId="metrics", tags=["operations"], summary="Prometheus metrics",
    responses={"200": {"description": "Prometheus text format 0.0.4 (OpenMetrics when asked).",
                       "content": {"text/plain": {"schema": {"type": "string"}},
                                   "application/openmetrics-text": {"schema": {"type": "string"}}}},
               "401": {"description": "METRICS_TOKEN is set and the request does not carry it as a bearer token."}},
)
async def scrape(request: Request) -> Response:
    require_token(request)
    res = resources(request)
    read = functools.partial(gauges.snapshot, res.engine, res.settings.metrics_per_owner)
    snap = await res.metrics_figures.get(read)
    body, content_type = service_metrics.exposition(snap, request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})


routes = [Route("/metrics", scrape, methods=["GET"])]
