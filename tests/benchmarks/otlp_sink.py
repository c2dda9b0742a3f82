"""A loopback OTLP/HTTP trace collector for the benchmarks' traced sides: it decodes every
export (opentelemetry-proto), counts the spans, and answers as a collector does, so the
service pays the whole cost of exporting. Its own CPU is not the service's.

    python -m tests.benchmarks.otlp_sink PORT

``GET /count`` answers ``{"requests": n, "spans": m}``.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import sys
from collections.abc import Iterator

import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devtools.devstack import free_port
from tests.benchmarks import procs

ANSWER = ExportTraceServiceResponse().SerializeToString()


def app() -> Starlette:
    counts = {"requests": 0, "spans": 0}

    async def traces(request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        counts["requests"] += 1
        counts["spans"] += sum(len(s.spans) for r in export.resource_spans for s in r.scope_spans)
        return Response(ANSWER, media_type="application/x-protobuf")

    async def count(request: Request) -> JSONResponse:
        return JSONResponse(counts)

    async def healthz(request: Request) -> Response:
        return Response("ok")

    return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"]), Route("/count", count),
                             Route("/healthz", healthz)])


@contextlib.contextmanager
def running() -> Iterator[str]:
    """A sink in its own process (at the lowest priority: the service is measured, not
    this); yields its base URL, to be given as OTEL_EXPORTER_OTLP_ENDPOINT."""
    port = free_port()
    argv = ["nice", "-n", "19", procs.PYTHON, "-m", "tests.benchmarks.otlp_sink", str(port)]
    with procs.running(argv, ready_url=f"http://127.0.0.1:{port}/healthz"):
        yield f"http://127.0.0.1:{port}"


def traced_env(endpoint: str) -> dict[str, str]:
    """The variables a traced side gets: OTLP to the sink, every trace recorded."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            "OTEL_SERVICE_NAME": "wavespeed-jobs-bench"}


if __name__ == "__main__":
    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    uvicorn.run(app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
