"""Prometheus metrics: what ``GET /metrics`` shows (docs/operations.md lists them).

Two kinds, because they answer different questions:

* The state of the work, read from Postgres by a scrape at most once every
  METRICS_CACHE_SECONDS (service/db/gauges.py reads it, figures_cache.py keeps it; this
  module never touches the database), so every process shows the same truth
  whichever of them did the work: jobs by status and model (exact, from the
  ``job_counts`` plus live counts, migrations/versions/0008_job_counts_without_churn.py), and per duty the
  work that is due but not taken, the age of the oldest such row, and the rows leased
  now. Each query reads a dozen rows or walks a partial index of the active set only.
* What this process did, counted as it happens: submit latency, provider calls and
  errors by code, webhooks by outcome, webhook-to-stored latency, bytes stored, callback
  attempts by outcome. These are per process, as Prometheus expects (it sums them).
  The duration histograms carry an exemplar, the trace id of the job whose observation
  it is when its trace is recorded (OpenMetrics shows them: ``Accept:
  application/openmetrics-text``), so a slow bucket leads to a trace.

The process-local metrics live in one registry per process (``REGISTRY``), like
prometheus_client's own default one, so a one-line call at the place an event happens
is all the instrumentation there is; the database-derived families are built per scrape.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from service.domain.schemas import MODELS
from service.domain.states import JobStatus
from service.observability.owner_metrics import OwnerCollector, OwnerSnapshot
from service.observability.tracing import exemplar

PREFIX = "wavespeed_jobs"

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# Seconds: sub-second for the fast paths, up to hours for work that waits on the
# provider's limits or on an outage.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600, 14400)

SUBMIT_LATENCY = Histogram(
    f"{PREFIX}_submit_latency_seconds",
    "From a job's creation to the provider accepting its task (queueing, throttling and the call).",
    ["model"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
WEBHOOK_TO_STORED = Histogram(
    f"{PREFIX}_webhook_to_stored_seconds",
    "From the provider's final news about a job (its webhook, or a result the reconciler fetched) "
    "to every output stored in S3 and the job completed.",
    ["model"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
PROVIDER_REQUESTS = Histogram(
    f"{PREFIX}_provider_request_seconds",
    "Duration of the provider API calls that got an HTTP answer, by operation and HTTP status.",
    ["operation", "code"], buckets=_LATENCY_BUCKETS[:9], registry=REGISTRY,
)
PROVIDER_ERRORS = Counter(
    f"{PREFIX}_provider_errors",
    "Provider API calls that failed, by operation and code: the HTTP status, or timeout, connect, "
    "transport (no answer) or invalid_answer (HTTP 200 without a usable body).",
    ["operation", "code"], registry=REGISTRY,
)
WEBHOOKS = Counter(
    f"{PREFIX}_webhooks_received",
    "Provider webhooks by outcome: advanced, unchanged, duplicate, late, task_mismatch, unknown_job, "
    "or invalid_signature (answered 401, nothing recorded).",
    ["outcome"], registry=REGISTRY,
)
STORED_BYTES = Counter(
    f"{PREFIX}_stored_bytes", "Bytes of outputs written to S3 by the storer.", ["model"], registry=REGISTRY,
)
STORED_OUTPUTS = Counter(
    f"{PREFIX}_stored_outputs", "Outputs written to S3 by the storer.", ["model"], registry=REGISTRY,
)
CALLBACK_ATTEMPTS = Counter(
    f"{PREFIX}_callback_attempts",
    "Callback delivery attempts to backends, by outcome: delivered, retrying, or failed (the last one).",
    ["outcome"], registry=REGISTRY,
)

ERASED_JOBS = Counter(
    f"{PREFIX}_erased_jobs", "Jobs whose data was erased (deletions and retention), leaving a tombstone.",
    registry=REGISTRY,
)
ERASED_BYTES = Counter(
    f"{PREFIX}_erased_bytes", "Bytes of outputs deleted from S3 by erasures.", registry=REGISTRY,
)
ERASED_OBJECTS = Counter(
    f"{PREFIX}_erased_objects", "S3 objects (outputs and thumbnails) deleted by erasures.", registry=REGISTRY,
)
RETENTION_DELETED = Counter(
    f"{PREFIX}_retention_deleted_jobs", "Jobs the retention sweep marked deleted.", registry=REGISTRY,
)
ADMISSIONS = Counter(
    f"{PREFIX}_admissions",
    "Job submits (POST /v1/jobs and the WaveSpeed facade) by outcome: accepted, replayed (an "
    "Idempotency-Key's first job), or the error type answered (invalid_request, budget_exceeded, conflict, "
    "egress_refused…).",
    ["outcome"], registry=REGISTRY,
)
ADMISSION_LATENCY = Histogram(
    f"{PREFIX}_admission_seconds",
    "Time to validate and record a submitted job (the answer, without ?wait), whatever the outcome.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=REGISTRY,
)
S3_ERRORS = Counter(
    f"{PREFIX}_s3_errors",
    "S3 calls that failed (no answer, or an error answer), by operation: put_object, upload_part, "
    "head_bucket (readiness), get_object, delete_objects…",
    ["operation"], registry=REGISTRY,
)
READY = Gauge(
    f"{PREFIX}_ready",
    "1 if this process's last /readyz found the check (database, s3) answering, else 0; absent until the "
    "first readiness check.",
    ["check"], registry=REGISTRY,
)
STREAMS_OPEN = Gauge(
    f"{PREFIX}_streams_open", "Live streams (GET /v1/jobs/{id}/stream) this process holds open.", registry=REGISTRY,
)
STREAMS_REFUSED = Counter(
    f"{PREFIX}_streams_refused",
    "Streams refused: 503 (STREAMS_MAX_PER_PROCESS reached, or shutting down) or 429 (STREAMS_MAX_PER_OWNER).",
    registry=REGISTRY,
)


# --------------------------------------------------------------------------- events


def _seconds_since(moment: dt.datetime | None) -> float | None:
    if moment is None:
        return None
    return max(0.0, (dt.datetime.now(dt.UTC) - moment).total_seconds())


def observe_submit(model: str, created_at: dt.datetime) -> None:
    if (seconds := _seconds_since(created_at)) is not None:
        SUBMIT_LATENCY.labels(model).observe(seconds, exemplar())


def observe_stored_job(model: str, news_at: dt.datetime | None) -> None:
    if (seconds := _seconds_since(news_at)) is not None:
        WEBHOOK_TO_STORED.labels(model).observe(seconds, exemplar())


def observe_output(model: str, size_bytes: int) -> None:
    STORED_BYTES.labels(model).inc(size_bytes)
    STORED_OUTPUTS.labels(model).inc()


def provider_operation(path: str) -> str:
    """The provider call a URL path belongs to (a bounded label, never the task id)."""
    if path.endswith("/result"):
        return "result"
    if path.endswith("/webhook/secret"):
        return "webhook_secret"
    if path.endswith("/predictions"):
        return "predictions"
    if "/api/v3/wavespeed-ai/" in path:
        return "submit"
    return "other"


def provider_answer(path: str, status_code: int, seconds: float) -> None:
    """One provider call that got an HTTP answer; non-200 answers also count as errors."""
    operation = provider_operation(path)
    PROVIDER_REQUESTS.labels(operation, str(status_code)).observe(seconds, exemplar())
    if status_code != 200:
        PROVIDER_ERRORS.labels(operation, str(status_code)).inc()


def provider_failure(path: str, code: str) -> None:
    """A provider call without a usable answer: ``timeout``, ``connect``, ``transport``
    or ``invalid_answer``."""
    PROVIDER_ERRORS.labels(provider_operation(path), code).inc()


def transport_code(exc: BaseException) -> str:
    import httpx  # here, so this module stays importable without the HTTP stack

    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect"
    return "transport"


# The outcomes are a few fixed names: each one's counter is looked up once (``labels``
# takes a lock and checks its values on every call, on the receiver's busiest path).
_WEBHOOK_OUTCOMES: dict[str, Counter] = {}


def webhook_received(outcome: str) -> None:
    counter = _WEBHOOK_OUTCOMES.get(outcome)
    if counter is None:
        counter = _WEBHOOK_OUTCOMES[outcome] = WEBHOOKS.labels(outcome)
    counter.inc()


def observe_erasure(jobs: int, size_bytes: int, objects: int) -> None:
    ERASED_JOBS.inc(jobs)
    ERASED_BYTES.inc(size_bytes)
    ERASED_OBJECTS.inc(objects)


def callback_attempt(outcome: str) -> None:
    CALLBACK_ATTEMPTS.labels(outcome).inc()


def admission(outcome: str, seconds: float) -> None:
    ADMISSIONS.labels(outcome).inc()
    ADMISSION_LATENCY.observe(seconds)


def s3_error(operation: str) -> None:
    S3_ERRORS.labels(operation).inc()


def readiness(check: str, ok: bool) -> None:
    READY.labels(check).set(1.0 if ok else 0.0)


# --------------------------------------------------------------------------- the database's figures


DUTIES = ("submit", "store", "reconcile", "deliver")


@dataclass
class DatabaseSnapshot:
    """What the database says at one scrape (filled by service/db/gauges.py)."""

    ok: bool = True
    jobs: dict[tuple[str, str], int] = field(default_factory=dict)
    due: dict[str, int] = field(default_factory=dict)
    leased: dict[str, int] = field(default_factory=dict)
    oldest: dict[str, float] = field(default_factory=dict)
    owners: OwnerSnapshot | None = None  # None: no per-owner figures in this scrape


# How a scrape gets the database's figures (service/db/gauges.py ``snapshot``, bound to
# the process's engine by the caller).
ReadDatabase = Callable[[], Awaitable[DatabaseSnapshot]]


class DatabaseCollector(Collector):
    """The database-derived families of one scrape, every label combination present
    (zeros included), so dashboards and alerts never see a series vanish."""

    def __init__(self, snap: DatabaseSnapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(f"{PREFIX}_database_up",
                               "1 if the database answered this scrape's queries in time, else 0.")
        up.add_metric([], 1.0 if self.snap.ok else 0.0)
        yield up
        if not self.snap.ok:
            return
        jobs = GaugeMetricFamily(f"{PREFIX}_jobs", "Jobs in the database by status and model (all owners).",
                                 labels=["status", "model"])
        models = sorted(set(MODELS) | {m for _, m in self.snap.jobs})
        for status in JobStatus:
            for model in models:
                jobs.add_metric([status.value, model], float(self.snap.jobs.get((status.value, model), 0)))
        yield jobs
        for name, doc, values in (
            ("work_due", "Rows due for a duty and not leased by any worker: work waiting to be picked up.",
             self.snap.due),
            ("work_oldest_due_seconds", "How long the oldest due, unleased row of a duty has been due (0 if none).",
             self.snap.oldest),
            ("work_leased", "Due rows of a duty that a worker holds right now.", self.snap.leased),
        ):
            family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=["duty"])
            for duty in DUTIES:
                family.add_metric([duty], float(values.get(duty, 0)))
            yield family


class _ProcessCollector(Collector):
    """This process's registry, as one collector of a scrape's registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def exposition(snap: DatabaseSnapshot, accept: str | None = None) -> tuple[bytes, str]:
    """The whole /metrics body and its content type: this process's metrics, then the
    database's figures (``snap``, service/observability/figures_cache.py), in the format
    the scraper's Accept header asks for (Prometheus text 0.0.4 by default, OpenMetrics
    on request). A snapshot that is not ``ok`` shows ``database_up 0`` and no database
    figure, so the process metrics still arrive during an outage."""
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(_ProcessCollector())
    scrape.register(DatabaseCollector(snap))
    if snap.ok and snap.owners is not None:
        scrape.register(OwnerCollector(snap.owners))  # service/observability/owner_metrics.py
    encode, content_type = choose_encoder(accept or "")
    return encode(scrape), content_type
