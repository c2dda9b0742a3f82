"""One trace per job (W3C Trace Context, OpenTelemetry).

* A job's trace begins at admission: the ``job.admit`` span is a child of the caller's
  ``traceparent`` (through the request's own span when requests are instrumented), or
  the root of a new trace. Its context is stored with the job (``jobs.traceparent``), and
  every later piece of work for the job, in whichever process and however much later
  (the upstream submit, the webhook, each output copy, each callback attempt, a
  reconciliation, an erasure), is a span whose parent is that stored context: one job,
  one trace (docs/operations.md lists the spans).
* Export follows OpenTelemetry's own variables, read once by service/settings.py
  (``traces_exporter``). With none set nothing is exported, no library is instrumented and
  the SDK makes no span: each span is a ``Propagation`` (a new span id in the job's
  trace, current for its block), so every job still has a trace id, shown in its answer
  and sent as ``traceparent`` on its callbacks and upstream submit. That is the whole
  cost: a few random numbers and a context switch per span (docs/benchmarks.md).
* Attributes are chosen where spans are made (``job_attributes``) and never carry a
  secret, a prompt or a key; URL attributes recorded by instrumentations lose their query
  string (``StripQueries``): a callback URL may carry a backend's own token there.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from typing import Any
from urllib.parse import unquote

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import Attributes

from service.domain.public_urls import public_reference
from service.settings import Settings

TRACEPARENT = "traceparent"
_HEX = "0123456789abcdef"
# A traceparent of version 00 is exactly this long; later versions may append fields.
_LENGTH = 55
_MAX_LENGTH = 512


def _hex(text: str) -> bool:
    return not text.strip(_HEX)  # lower-case hex digits only (strip runs in C, in one pass)


def parse_traceparent(value: str | None) -> SpanContext | None:
    """A W3C ``traceparent`` as a remote span context; None when absent or malformed (a
    malformed header is ignored: the job starts a trace of its own, never a 4xx). Read by
    position, never by a pattern: the header is the caller's text."""
    if not value:
        return None
    value = value.strip()
    if not _LENGTH <= len(value) <= _MAX_LENGTH or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    version, trace_id, span_id, flags = value[0:2], value[3:35], value[36:52], value[53:55]
    if not (_hex(version) and _hex(trace_id) and _hex(span_id) and _hex(flags)) or version == "ff":
        return None
    if (version == "00" and len(value) != _LENGTH) or (len(value) > _LENGTH and value[_LENGTH] != "-"):
        return None
    trace_number, span_number = int(trace_id, 16), int(span_id, 16)
    if not trace_number or not span_number:
        return None
    return SpanContext(trace_number, span_number, is_remote=True, trace_flags=TraceFlags(int(flags, 16) & 0x01))


def format_traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags) & 0x01:02x}"


def current_traceparent() -> str | None:
    """The traceparent of the span this task is in (None outside any span)."""
    context = trace.get_current_span().get_span_context()
    return format_traceparent(context) if context.is_valid else None


def job_context(traceparent: str | None) -> otel_context.Context:
    """The context whose span is the job's stored one (an empty context when the job has
    none: its spans then start traces of their own). Whatever this task is in otherwise
    (a runner's loop, a request of another job) is not the parent."""
    parent = parse_traceparent(traceparent)
    if parent is None:
        return otel_context.Context()
    return trace.set_span_in_context(NonRecordingSpan(parent), otel_context.Context())


def caller_context(traceparent: str | None) -> otel_context.Context:
    """A job's parent at admission: the request's span when requests are instrumented
    (it already continues the caller's trace), else the caller's ``traceparent``, else
    nothing (a new trace)."""
    if trace.get_current_span().get_span_context().is_valid:
        return otel_context.get_current()
    return job_context(traceparent)


def job_attributes(job_id: str, owner: str | None = None, model: str | None = None,
                   status: str | None = None) -> dict[str, str]:
    """What every span of a job names: ids and labels, never its input or any secret."""
    attributes = {"job.id": job_id}
    for key, value in (("job.owner", owner), ("job.model", model), ("job.status", status)):
        if value is not None:
            attributes[key] = str(getattr(value, "value", value))  # a status enum as its value
    return attributes


def exemplar() -> dict[str, str] | None:
    """The current trace as a Prometheus exemplar, when its spans are recorded (a trace
    nobody recorded is no place to lead a slow bucket to)."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid and context.trace_flags.sampled:
        return {"trace_id": f"{context.trace_id:032x}"}
    return None


class NoOrphanClients(Sampler):
    """A CLIENT span without a parent is not recorded: the database queries of polling
    loops and lease renewals, LISTEN, an S3 call outside any job would each be a trace of
    one span, several a second. Everything else is the configured sampler's to decide."""

    def __init__(self, inner: Sampler) -> None:
        self.inner = inner

    def should_sample(
        self, parent_context: otel_context.Context | None, trace_id: int, name: str,
        kind: SpanKind | None = None, attributes: Attributes = None, links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if kind == SpanKind.CLIENT and not trace.get_current_span(parent_context).get_span_context().is_valid:
            return SamplingResult(Decision.DROP)
        return self.inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"NoOrphanClients{{{self.inner.get_description()}}}"


class StripQueries(SpanProcessor):
    """URL attributes that instrumentations record keep their path only: a query string
    may carry someone's token (a callback URL given to the facade as ``?webhook=``), a
    full URL its user and password (the one rule of service/domain/public_urls.py)."""

    KEYS = ("http.url", "http.target", "url.full")

    def on_start(self, span: SdkSpan, parent_context: otel_context.Context | None = None) -> None:
        attributes = span.attributes or {}
        for key in self.KEYS:
            value = attributes.get(key)
            if isinstance(value, str) and ("?" in value or "#" in value or "@" in value):
                span.set_attribute(key, public_reference(value))
        if attributes.get("url.query"):
            span.set_attribute("url.query", "")

    def on_end(self, span: ReadableSpan) -> None:
        pass


def sampler(settings: Settings) -> Sampler:
    """OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, as the standard names them."""
    ratio = TraceIdRatioBased(settings.otel_traces_sampler_arg)
    return {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(ratio),
    }[settings.otel_traces_sampler]


def exporter_for(settings: Settings) -> SpanExporter | None:
    """The exporter the settings ask for; None: nothing is exported."""
    kind = settings.traces_exporter
    if kind == "console":
        return ConsoleSpanExporter(service_name=settings.otel_service_name)
    if kind != "otlp":
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    headers = settings.otel_exporter_otlp_headers
    return OTLPSpanExporter(
        endpoint=settings.otlp_traces_url or "http://localhost:4318/v1/traces",
        headers=_headers(headers.get_secret_value()) if headers else None,
        timeout=settings.otel_exporter_otlp_timeout / 1000,
    )


def _headers(text: str) -> dict[str, str]:
    """``key=value,key2=value2`` (OTEL_EXPORTER_OTLP_HEADERS, values URL-encoded)."""
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {unquote(key).strip(): unquote(value).strip() for key, value in pairs}


def otlp_header_values(settings: Settings) -> list[str]:
    """OTEL_EXPORTER_OTLP_HEADERS' values (a collector's token): kept out of the logs."""
    headers = settings.otel_exporter_otlp_headers
    return list(_headers(headers.get_secret_value()).values()) if headers else []


def _version() -> str:
    try:
        return metadata.version("wavespeed-jobs")
    except metadata.PackageNotFoundError:
        return "unknown"


class Propagation:
    """A span when nothing is recorded: a new span id in its parent's trace (or a new
    trace), current for the block, so what is sent (``traceparent``) and logged names it.
    What the SDK's tracer would do with a sampler that records nothing, at a fraction of
    the cost (tests/benchmarks/bench_receiver.py measured the SDK's path: ~20 µs a span
    on the receiver's path, this one ~3 µs). The sampled flag is off: nothing was recorded."""

    __slots__ = ("_parent", "_token")

    def __init__(self, parent: otel_context.Context | None) -> None:
        self._parent = parent  # None: the current context

    def __enter__(self) -> Span:
        parent = trace.get_current_span(self._parent).get_span_context()
        trace_id = parent.trace_id if parent.is_valid else (random.getrandbits(128) or 1)
        span = NonRecordingSpan(SpanContext(trace_id, random.getrandbits(64) or 1, is_remote=False))
        self._token = otel_context.attach(trace.set_span_in_context(span, self._parent))
        return span

    def __exit__(self, *exc: object) -> None:
        otel_context.detach(self._token)


class Tracing:
    """A process's tracer: opened once at the edge (``from_settings``) and held by the
    resources; ``shutdown`` sends what is still buffered."""

    def __init__(self, provider: TracerProvider, *, exporting: bool) -> None:
        self.provider = provider
        self.exporting = exporting  # spans may be recorded and sent: libraries are instrumented too
        self.tracer = provider.get_tracer("wavespeed-jobs", _version())

    @classmethod
    def from_settings(cls, settings: Settings, exporter: SpanExporter | None = None) -> Tracing:
        """``exporter``: where spans go instead of what the settings say (tests hand in
        the SDK's in-memory exporter)."""
        exporter = exporter or exporter_for(settings)
        resource = Resource.create({"service.name": settings.otel_service_name, "service.version": _version(),
                                    "process.pid": os.getpid()})  # which process of the service
        chosen = sampler(settings) if exporter is not None else ALWAYS_OFF
        provider = TracerProvider(resource=resource, sampler=NoOrphanClients(chosen))
        if exporter is not None:
            provider.add_span_processor(StripQueries())
            provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider, exporting=exporter is not None)

    @classmethod
    def off(cls) -> Tracing:
        """Ids and propagation only, nothing recorded (what no configuration gives)."""
        return cls(TracerProvider(sampler=ALWAYS_OFF), exporting=False)

    def flush(self, timeout_millis: int = 5000) -> None:
        self.provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.provider.shutdown()

    def span(
        self, name: str, *, context: otel_context.Context | None = None, kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None, start_time: int | None = None,
        links: Sequence[Link] = (),
    ) -> contextlib.AbstractContextManager[Span]:
        """A span, current for the block. ``context``: its parent's (``job_context`` for a
        job's work; None: the current span). An exception marks it failed with the
        exception's type only: messages can hold what a span must not. With nothing
        exported it is only ids (``Propagation``): the SDK is not involved at all."""
        if not self.exporting:
            return Propagation(context)
        return self._recorded(name, context, kind, attributes, start_time, links)

    def started(self, name: str, attributes: Mapping[str, Any] | None = None) -> Span:
        """A span begun now, a child of the current one, that is not made current: the
        caller ends it (a bulk retry's ``job.admit`` spans, one per new job, around one
        statement). With nothing exported only its ids are made, as in ``Propagation``."""
        if not self.exporting:
            parent = trace.get_current_span().get_span_context()
            trace_id = parent.trace_id if parent.is_valid else (random.getrandbits(128) or 1)
            return NonRecordingSpan(SpanContext(trace_id, random.getrandbits(64) or 1, is_remote=False))
        return self.tracer.start_span(name, attributes=dict(attributes) if attributes else None)

    @contextlib.contextmanager
    def _recorded(
        self, name: str, context: otel_context.Context | None, kind: SpanKind, attributes: Mapping[str, Any] | None,
        start_time: int | None, links: Sequence[Link],
    ) -> Iterator[Span]:
        with self.tracer.start_as_current_span(
            name, context=context, kind=kind, attributes=dict(attributes) if attributes else None,
            start_time=start_time, links=links, record_exception=False, set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise


def job_span(tracing: Tracing, name: str, traceparent: str | None, **kwargs: Any
             ) -> contextlib.AbstractContextManager[Span]:
    """A span of a job's trace (its stored ``traceparent``), whatever this task is in; the
    span this task is in (a request's, say) is linked instead. A job without a trace
    (made before traces were kept) gets none: the block runs under an invalid span."""
    if traceparent is None:
        return contextlib.nullcontext(trace.INVALID_SPAN)
    if not tracing.exporting:
        return Propagation(job_context(traceparent))
    current = trace.get_current_span().get_span_context()
    links = [Link(current)] if current.is_valid else []
    return tracing.span(name, context=job_context(traceparent), links=links, **kwargs)
