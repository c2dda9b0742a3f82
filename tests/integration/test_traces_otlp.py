"""End to end: real ``serve --no-workers`` and ``worker`` processes, configured only by
OTEL_* variables, export a job's spans over OTLP/HTTP to a collector on loopback, which
decodes them with opentelemetry-proto. The two processes' spans are one trace, the
caller's; their log lines about the job carry its trace and span ids.
"""

from __future__ import annotations

import gzip
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devtools.devstack import free_port
from devtools.serverthread import ServerThread
from service.db.keys import create_key_blocking
from tests.conftest import make_settings
from tests.integration.helpers import eventually
from tests.processes import ServiceProcess
from tests.servers import WebhookCatcher

pytestmark = pytest.mark.slow  # starts serve and worker as processes of their own


@dataclass
class ExportedSpan:
    service: str
    pid: int
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]


@dataclass
class Collector:
    """An OTLP/HTTP trace receiver: keeps every span it is sent."""

    spans: list[ExportedSpan] = field(default_factory=list)
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        async def traces(request: Request) -> Response:
            body = await request.body()
            if request.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            export = ExportTraceServiceRequest()
            export.ParseFromString(body)
            with self._lock:
                self.requests += 1
                self.spans += list(self._decode(export))
            return Response(ExportTraceServiceResponse().SerializeToString(),
                            media_type="application/x-protobuf")

        return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])

    @staticmethod
    def _decode(export: ExportTraceServiceRequest) -> Iterator[ExportedSpan]:
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    yield ExportedSpan(
                        service=resource["service.name"].string_value, pid=resource["process.pid"].int_value,
                        name=span.name, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        attributes={a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes})

    def of_trace(self, trace_id: str) -> list[ExportedSpan]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]


def otel_env(endpoint: str) -> dict[str, str]:
    """The only tracing configuration the processes get; the batch processor sends every
    200 ms so the test needs no long wait."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "wavespeed-jobs-e2e",
            "OTEL_BSP_SCHEDULE_DELAY": "200"}


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                continue
    return lines


def test_serve_and_worker_processes_export_one_trace_per_job_over_otlp(
    own_db: str, s3_endpoint: str, simulator: ServerThread, tmp_path: Path
) -> None:
    collector = Collector()
    port = free_port()
    settings = make_settings(own_db, s3_endpoint, simulator.url, port, callback_retry_schedule="0,0.5")
    key = create_key_blocking(own_db, "otlp")
    trace_id = secrets.token_hex(16)
    caller_span = secrets.token_hex(8)
    with ServerThread(collector.app()) as receiver, WebhookCatcher() as catcher:
        api = ServiceProcess(["serve", "--host", "127.0.0.1", "--port", str(port), "--no-workers"], settings,
                             tmp_path / "serve.log", port)
        worker = ServiceProcess(["worker"], settings, tmp_path / "worker.log")
        for process in (api, worker):
            process.env.update(otel_env(receiver.url))
        with api, worker:
            answer = httpx.post(
                api.url + "/v1/jobs", timeout=30,
                headers={"Authorization": f"Bearer {key}", "traceparent": f"00-{trace_id}-{caller_span}-01"},
                json={"model": "wavespeed-ai/flux-dev-lora", "callback_url": catcher.url("/hook"),
                      "input": {"prompt": "a windmill at dusk", "size": "256*256"}})
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["id"]
            catcher.wait_for(1, timeout=60)
            wanted = {"job.admit", "job.submit", "provider.submit", "webhook.receive", "job.store", "output.copy",
                      "callback.attempt"}
            eventually(lambda: wanted <= {s.name for s in collector.of_trace(trace_id)} or None, timeout=30)
    spans = collector.of_trace(trace_id)
    named = {s.name: s for s in spans}
    assert {s.service for s in spans} == {"wavespeed-jobs-e2e"}
    assert named["job.admit"].pid != named["job.submit"].pid  # two processes, one trace
    admit = named["job.admit"]
    for name in ("job.submit", "webhook.receive", "job.store", "callback.attempt"):
        assert named[name].parent_id == admit.span_id, name
        assert named[name].attributes["job.id"] == job_id
    assert named["POST /v1/jobs"].parent_id == caller_span
    # Libraries' spans of the job's work arrive too: its SQL and its S3 writes.
    assert any(s.attributes.get("db.system") == "postgresql" for s in spans)
    assert any(s.attributes.get("rpc.service") == "S3" for s in spans)

    # Log lines about the job lead to its trace: job_id, trace_id and span_id together.
    for log, event in ((tmp_path / "serve.log", "webhook.received"), (tmp_path / "worker.log", "callback.attempt")):
        [line] = [x for x in log_lines(log) if x.get("event") == event and x.get("job_id") == job_id][:1]
        assert line["trace_id"] == trace_id and line["span_id"] in {s.span_id for s in spans}, line
