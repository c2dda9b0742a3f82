"""Traces without I/O (service/observability/tracing.py): reading a caller's traceparent,
what the OTEL_* settings turn on, what is recorded with nothing configured, which spans
are kept, what instrumentations' URLs keep, and the log lines' trace ids."""

from __future__ import annotations

from typing import Any

import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from service.observability import logs
from service.observability.tracing import (
    NoOrphanClients,
    StripQueries,
    Tracing,
    caller_context,
    current_traceparent,
    exemplar,
    format_traceparent,
    job_context,
    job_span,
    otlp_header_values,
    parse_traceparent,
)
from service.settings import Settings

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"


@pytest.mark.parametrize(("header", "sampled"), [
    (VALID, True),
    (f"00-{TRACE}-{SPAN}-00", False),
    (f" {VALID} ", True),  # optional whitespace around the value
    (f"01-{TRACE}-{SPAN}-01-a-later-version-field", True),  # a later version may add fields
    (f"00-{TRACE}-{SPAN}-ff", True),  # unknown flags are ignored, the sampled bit is read
])
def test_a_well_formed_traceparent_is_read_as_the_callers_remote_span(header: str, sampled: bool) -> None:
    context = parse_traceparent(header)
    assert context is not None and context.is_remote
    assert (f"{context.trace_id:032x}", f"{context.span_id:016x}") == (TRACE, SPAN)
    assert context.trace_flags.sampled is sampled


@pytest.mark.parametrize("header", [
    None, "", "00", VALID[:-1], VALID + "0", VALID + "-x",  # version 00 is exactly 55 characters
    f"ff-{TRACE}-{SPAN}-01", f"0g-{TRACE}-{SPAN}-01", f"00-{TRACE.upper()}-{SPAN}-01",
    f"00-{'0' * 32}-{SPAN}-01", f"00-{TRACE}-{'0' * 16}-01", f"00_{TRACE}_{SPAN}_01",
    f"01-{TRACE}-{SPAN}-01x", f"00-{TRACE[:-1]}é-{SPAN}-01", "01-" + "a" * 600,
])
def test_a_malformed_traceparent_is_ignored(header: str | None) -> None:
    assert parse_traceparent(header) is None


def test_a_traceparent_written_reads_back_the_same() -> None:
    context = parse_traceparent(VALID)
    assert context is not None and format_traceparent(context) == VALID


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


@pytest.mark.parametrize(("values", "exporter", "url"), [
    ({}, "none", None),
    ({"otel_exporter_otlp_endpoint": "http://collector:4318/"}, "otlp", "http://collector:4318/v1/traces"),
    ({"otel_exporter_otlp_traces_endpoint": "https://c.example/in"}, "otlp", "https://c.example/in"),
    ({"otel_exporter_otlp_endpoint": "http://a:4318", "otel_exporter_otlp_traces_endpoint": "http://b/t"},
     "otlp", "http://b/t"),
    ({"otel_traces_exporter": "otlp"}, "otlp", None),  # the exporter's default, localhost:4318
    ({"otel_traces_exporter": "console"}, "console", None),
    ({"otel_exporter_otlp_endpoint": "http://a:4318", "otel_traces_exporter": "none"}, "none", "http://a:4318/v1/traces"),
    ({"otel_exporter_otlp_endpoint": "http://a:4318", "otel_sdk_disabled": True}, "none", "http://a:4318/v1/traces"),
])
def test_spans_are_exported_only_when_an_otel_variable_asks_for_it(
    values: dict[str, Any], exporter: str, url: str | None
) -> None:
    chosen = settings(**values)
    assert (chosen.traces_exporter, chosen.otlp_traces_url) == (exporter, url)
    assert Tracing.from_settings(chosen).exporting is (exporter != "none")


@pytest.mark.parametrize("values", [
    {"otel_exporter_otlp_endpoint": "collector:4318"}, {"otel_traces_exporter": "zipkin"},
    {"otel_exporter_otlp_protocol": "grpc"}, {"otel_traces_sampler": "sometimes"},
    {"otel_traces_sampler_arg": 1.5}, {"otel_exporter_otlp_timeout": 0}, {"otel_service_name": ""},
])
def test_an_otel_variable_out_of_its_bounds_is_refused_at_start(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        settings(**values)


def test_the_collectors_header_values_are_secrets_for_the_logs() -> None:
    chosen = settings(otel_exporter_otlp_headers="authorization=Bearer%20tok-123456,x-team=images")
    assert otlp_header_values(chosen) == ["Bearer tok-123456", "images"]


def test_with_nothing_configured_a_job_still_gets_ids_but_nothing_is_recorded() -> None:
    tracing = Tracing.off()
    with tracing.span("job.admit", context=caller_context(VALID)) as span:
        assert not span.is_recording()
        mine = span.get_span_context()
        assert f"{mine.trace_id:032x}" == TRACE and f"{mine.span_id:016x}" != SPAN  # a child of the caller
        assert current_traceparent() == format_traceparent(mine)
        assert exemplar() is None  # not recorded: no exemplar leads to it
    with tracing.span("job.admit", context=caller_context(None)) as root:
        assert root.get_span_context().is_valid and f"{root.get_span_context().trace_id:032x}" != TRACE


def recorded() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=NoOrphanClients(ALWAYS_ON))
    provider.add_span_processor(StripQueries())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider, exporting=True), exporter


def test_a_jobs_later_work_is_a_child_of_its_stored_span_whatever_the_task_was_in() -> None:
    tracing, exporter = recorded()
    with tracing.span("request of another job"), job_span(tracing, "job.store", VALID) as span:
        assert exemplar() == {"trace_id": TRACE}
    [store, other] = exporter.get_finished_spans()
    assert store.parent is not None and f"{store.parent.span_id:016x}" == SPAN
    assert store.context and f"{store.context.trace_id:032x}" == TRACE
    assert [link.context.span_id for link in store.links] == [other.context.span_id if other.context else 0]
    assert span.get_span_context().span_id == (store.context.span_id if store.context else 0)


def test_a_started_span_is_a_child_of_the_current_one_and_recorded_only_when_exporting() -> None:
    # A bulk retry's job.admit spans: begun before their statement, ended after it, never current.
    off = Tracing.off()
    with off.span("job.admit", context=caller_context(VALID)) as parent:
        quiet = off.started("job.admit", {"job.retry_of": "job_old"})
        assert trace.get_current_span() is parent  # not made current
    context = quiet.get_span_context()
    assert not quiet.is_recording() and f"{context.trace_id:032x}" == TRACE and context.span_id != SPAN
    assert not context.trace_flags.sampled  # its traceparent says nothing was recorded
    assert off.started("job.admit").get_span_context().trace_id != context.trace_id  # outside any span: a new trace
    tracing, exporter = recorded()
    with tracing.span("POST /v1/jobs/bulk"):
        tracing.started("job.admit", {"job.retry_of": "job_old"}).end()
    [admit, request] = exporter.get_finished_spans()
    assert admit.name == "job.admit" and admit.attributes == {"job.retry_of": "job_old"}
    assert admit.parent is not None and request.context is not None and admit.parent.span_id == request.context.span_id


def test_a_job_without_a_trace_gets_no_span() -> None:
    tracing, exporter = recorded()
    with job_span(tracing, "job.store", None) as span:
        assert not span.get_span_context().is_valid and current_traceparent() is None
    assert exporter.get_finished_spans() == ()
    assert job_context(None) == job_context("not a traceparent")


def test_a_library_call_outside_any_span_is_not_recorded() -> None:
    sampler = NoOrphanClients(ALWAYS_ON)
    orphan = sampler.should_sample(None, 1, "SELECT", SpanKind.CLIENT)
    inside = sampler.should_sample(job_context(VALID), 1, "SELECT", SpanKind.CLIENT)
    own = sampler.should_sample(None, 1, "job.admit", SpanKind.INTERNAL)
    assert (orphan.decision, inside.decision, own.decision) == (
        Decision.DROP, Decision.RECORD_AND_SAMPLE, Decision.RECORD_AND_SAMPLE)


def test_urls_recorded_by_instrumentations_keep_their_path_only() -> None:
    tracing, exporter = recorded()
    with tracing.span("POST /api/v3/x", attributes={
            "http.url": "http://h/api/v3/x?webhook=https%3A%2F%2Fb%2Fhook%3Ftoken%3Ds3cr3t",
            "http.target": "/api/v3/x?webhook=1", "url.full": "https://u:pw@h/p?sig=abc", "url.query": "sig=abc",
            "url.path": "/api/v3/x"}):
        pass
    [span] = exporter.get_finished_spans()
    assert dict(span.attributes or {}) == {"http.url": "http://h/api/v3/x", "http.target": "/api/v3/x",
                                           "url.full": "https://h/p", "url.query": "", "url.path": "/api/v3/x"}


def test_a_failed_span_names_the_exception_type_and_not_its_message() -> None:
    tracing, exporter = recorded()
    with pytest.raises(ValueError), tracing.span("job.submit"):
        raise ValueError("whsec_a-secret-in-a-message")
    [span] = exporter.get_finished_spans()
    assert span.status.description == "ValueError" and span.events == ()


def test_a_log_line_written_in_a_span_carries_its_trace_and_span_ids() -> None:
    tracing = Tracing.off()
    with structlog.testing.capture_logs(processors=[logs.add_trace]) as lines:
        structlog.get_logger().info("outside")
        with tracing.span("job.submit", context=job_context(VALID)) as span:
            structlog.get_logger().info("inside")
    outside, inside = lines
    assert "trace_id" not in outside
    assert (inside["trace_id"], inside["span_id"]) == (TRACE, f"{span.get_span_context().span_id:016x}")
    assert trace.get_current_span().get_span_context().is_valid is False
