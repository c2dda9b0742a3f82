"""A job is one trace (service/observability/tracing.py): admission in the API, the
upstream submit, the webhook, the store and its output copies, the callback attempt, in
two processes' worth of resources, each with its own tracer and the SDK's in-memory
exporter, on real Postgres, S3 over HTTP and the simulator over HTTP.

The API is a real ``create_app`` without workers under uvicorn; the workers run on
resources of their own (another tracer, another engine, another HTTP client), as a
separate ``worker`` would: what links their spans to the API's is only what the job row
keeps. tests/integration/test_traces_otlp.py does the same with real OS processes and a
real OTLP/HTTP receiver.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devtools.devstack import free_port
from devtools.serverthread import ServerThread
from service.app import build_duties, create_app, open_resources
from service.db.keys import create_key_blocking
from service.observability.tracing import Tracing, parse_traceparent
from service.work.runner import Runner
from tests.conftest import SIM_SECRET, fresh_database, make_settings
from tests.integration.helpers import sim_tasks
from tests.servers import WebhookCatcher

CALLER_TRACE = secrets.token_hex(16)
CALLER_SPAN = secrets.token_hex(8)
CALLER = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


def by_name(spans: Sequence[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    return named


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def attribute_strings(spans: Sequence[ReadableSpan]) -> list[str]:
    """Every value a span carries as text: attributes, events' and links' attributes,
    names, status, the resource."""
    found: list[str] = []
    for span in spans:
        groups: list[Any] = [span.attributes, span.resource.attributes,
                             *(e.attributes for e in span.events), *(link.attributes for link in span.links)]
        for group in groups:
            for key, value in (group or {}).items():
                values = value if isinstance(value, (list, tuple)) else [value]
                found += [str(key), *(str(v) for v in values)]
        found += [span.name, str(span.status.description)]
    return found


async def run_one_job(trace_db: str, s3_endpoint: str, simulator_url: str, prompt: str) -> dict[str, Any]:
    """One job with a callback, submitted with the caller's traceparent, through an API
    and a worker of their own; returns what the test looks at."""
    port = free_port()
    settings = make_settings(trace_db, s3_endpoint, simulator_url, port, callback_retry_schedule="0,0.5")
    api_spans, worker_spans = InMemorySpanExporter(), InMemorySpanExporter()
    api_tracing = Tracing.from_settings(settings, api_spans)
    worker_tracing = Tracing.from_settings(settings, worker_spans)
    key = await asyncio.to_thread(create_key_blocking, trace_db, "traced")
    headers = {"Authorization": f"Bearer {key}"}
    with WebhookCatcher() as catcher, ServerThread(
            create_app(settings, run_workers=False, tracing=api_tracing), port=port) as api:
        async with open_resources(settings, tracing=worker_tracing) as res, \
                httpx.AsyncClient(base_url=api.url, headers=headers, timeout=30) as client:
            runner = Runner(res, build_duties(res))
            await runner.start()
            try:
                body = {"model": "wavespeed-ai/flux-dev-lora", "callback_url": catcher.url("/hook"),
                        "input": {"prompt": prompt, "size": "256*256"}}
                created = await client.post("/v1/jobs", json=body, headers={"traceparent": CALLER})
                assert created.status_code == 202, created.text
                [callback] = await asyncio.to_thread(catcher.wait_for, 1, 60)
                job = (await client.get(f"/v1/jobs/{created.json()['id']}")).json()
                callback_secret = (await client.get("/v1/callback-secret")).json()
                scrape = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
            finally:
                await runner.stop(5)
    api_tracing.flush()
    worker_tracing.flush()
    task = next(t for t in sim_tasks(simulator_url) if t["id"] == job["provider"]["task_id"])
    return {"created": created.json(), "job": job, "callback": callback, "key": key, "task": task,
            "api": list(api_spans.get_finished_spans()), "worker": list(worker_spans.get_finished_spans()),
            "callback_secret": callback_secret, "metrics": scrape.text}


@pytest.fixture(scope="module")
def traced_job(postgres_server: str, s3_endpoint: str, simulator: ServerThread) -> Iterator[dict[str, Any]]:
    """One job, looked at by every test of this module (a database of its own: the
    session service's workers must not take it)."""
    prompt = f"a lighthouse in fog, seen by {secrets.token_hex(6)}"
    with fresh_database(postgres_server) as url:
        seen = asyncio.run(run_one_job(url, s3_endpoint, simulator.url, prompt))
    seen["prompt"] = prompt
    yield seen


def test_a_job_is_one_trace_from_the_callers_request_to_its_callback_across_api_and_worker(
    traced_job: dict[str, Any],
) -> None:
    trace_id = int(CALLER_TRACE, 16)
    api = [s for s in traced_job["api"] if s.context and s.context.trace_id == trace_id]
    worker = [s for s in traced_job["worker"] if s.context and s.context.trace_id == trace_id]
    assert traced_job["created"]["trace_id"] == traced_job["job"]["trace_id"] == CALLER_TRACE
    named_api, named_worker = by_name(api), by_name(worker)

    # Admission, in the API: a child of the request's span, itself the caller's child.
    [admit] = named_api["job.admit"]
    [request] = named_api["POST /v1/jobs"]
    assert parent_of(request) == int(CALLER_SPAN, 16) and request.parent and request.parent.is_remote
    assert parent_of(admit) == span_id(request)
    assert admit.attributes and admit.attributes["job.id"] == traced_job["job"]["id"]

    # Everything done for the job later is a child of its admission, wherever it ran.
    [webhook] = [s for s in named_api["webhook.receive"] if s.attributes and s.attributes["provider.status"]
                 == "completed"]
    [submit] = named_worker["job.submit"]
    [store] = named_worker["job.store"]
    [attempt] = named_worker["callback.attempt"]
    for span in (webhook, submit, store, attempt):
        assert parent_of(span) == span_id(admit), span.name
    [upstream] = named_worker["provider.submit"]
    assert parent_of(upstream) == span_id(submit)
    [copy] = named_worker["output.copy"]
    assert parent_of(copy) == span_id(store)
    assert copy.attributes and copy.attributes["output.index"] == 0
    assert attempt.attributes and attempt.attributes["http.response.status_code"] == 200
    assert attempt.attributes["callback.outcome"] == "delivered"

    # The callback carries the attempt's span; the upstream submit carries the job's trace.
    callback_parent = parse_traceparent(traced_job["callback"].headers["traceparent"])
    assert callback_parent is not None
    assert (callback_parent.trace_id, callback_parent.span_id) == (trace_id, span_id(attempt))
    upstream_parent = parse_traceparent(traced_job["task"]["traceparent"])
    assert upstream_parent is not None and upstream_parent.trace_id == trace_id
    assert upstream_parent.span_id in {span_id(s) for s in worker}  # the submit's own (or its HTTP client's) span


def test_no_span_attribute_carries_the_api_key_a_secret_or_the_prompt(traced_job: dict[str, Any]) -> None:
    spans = traced_job["api"] + traced_job["worker"]
    values = attribute_strings(spans)
    assert len(spans) > 8 and len(values) > 50  # the scan saw the job's spans, the libraries' included
    secret = traced_job["callback_secret"]["secret"]
    forbidden = {"API key": traced_job["key"], "callback secret": secret, "its key": secret.removeprefix("whsec_"),
                 "webhook secret": SIM_SECRET, "prompt": traced_job["prompt"],
                 "prompt's words": traced_job["prompt"].rsplit(" ", 1)[-1]}
    leaks = [(what, value) for what, needle in forbidden.items() for value in values if needle in value]
    assert leaks == []


def test_the_submit_latency_histogram_leads_to_the_jobs_trace(traced_job: dict[str, Any]) -> None:
    exemplars = [line for line in traced_job["metrics"].splitlines()
                 if line.startswith("wavespeed_jobs_submit_latency_seconds_bucket") and "# {" in line]
    assert any(f'trace_id="{CALLER_TRACE}"' in line for line in exemplars), exemplars
