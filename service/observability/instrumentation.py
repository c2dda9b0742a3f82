"""The libraries' own spans, when traces are exported (service/observability/tracing.py):
each request the API serves (ASGI), each provider and S3 call over the lifespan's httpx
client, each Postgres statement (asyncpg, under SQLAlchemy too) and each boto3 call.

Without an exporter none of this is installed: nothing is wrapped, nothing costs.

The request spans are named after the route's template (``POST /v1/jobs``), never the
path (a job id would make every name unique), and skip the probes, the scrape, static
files and the provider's webhooks (``UNTRACED``). asyncpg's spans carry the statement's
text, never its parameters.
"""

from __future__ import annotations

from typing import Any

import httpx
from starlette.middleware import Middleware
from starlette.routing import Match

from service.observability.tracing import Tracing

# Paths whose requests get no span (regular expressions, searched in the URL). The
# provider's webhooks are the ``webhook.receive`` span of their job's own trace instead: a
# request span would be a trace apart per webhook, and it tripled the CPU of each one
# (bench_receiver --compare-rev --traced, 2026-12-07: traced 0.49 of untraced's rate).
UNTRACED = "/healthz$,/readyz$,/metrics$,/static/,/favicon,/webhooks/wavespeed/"
# Request headers that would be recorded if an operator asked for them
# (OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST): masked all the same.
SECRET_HEADERS = ["authorization", "cookie", "set-cookie", ".*secret.*", ".*token.*", ".*key.*", "webhook-signature"]


def route_details(scope: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A request span's name and route: the template of the route that matches."""
    method = str(scope.get("method", "")) or "HTTP"
    for route in getattr(scope.get("app"), "routes", ()):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            path = str(getattr(route, "path", ""))
            return f"{method} {path}", {"http.route": path}
    return method, {}


def request_middleware(tracing: Tracing) -> list[Middleware]:
    """The ASGI middleware that makes each request's span (continuing a caller's
    ``traceparent``), or none when nothing is exported."""
    if not tracing.exporting:
        return []
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return [Middleware(
        OpenTelemetryMiddleware, excluded_urls=UNTRACED, default_span_details=route_details,
        tracer_provider=tracing.provider, exclude_spans=["receive", "send"],
        http_capture_headers_sanitize_fields=SECRET_HEADERS,
    )]


def instrument_client(tracing: Tracing, client: httpx.AsyncClient) -> None:
    """Spans for the calls of ``client`` (the provider's API, S3 deletions); they carry
    ``traceparent`` out as well."""
    if tracing.exporting:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor.instrument_client(client, tracer_provider=tracing.provider)


class Libraries:
    """asyncpg's and botocore's instrumentation: they wrap the libraries process-wide, so
    one holder installs them (``start``) and takes them off again (``stop``)."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing
        self._installed: list[Any] = []

    def start(self) -> None:
        if not self.tracing.exporting:
            return
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.instrumentation.botocore import BotocoreInstrumentor

        for instrumentor in (AsyncPGInstrumentor(), BotocoreInstrumentor()):  # type: ignore[no-untyped-call]
            if not instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.instrument(tracer_provider=self.tracing.provider)
                self._installed.append(instrumentor)

    def stop(self) -> None:
        for instrumentor in self._installed:
            instrumentor.uninstrument()
        self._installed.clear()
