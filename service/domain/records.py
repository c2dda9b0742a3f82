"""A job and its outputs as typed, immutable records: what the API, serialize and the
workers pass around instead of untyped database rows, so `mypy --strict` checks every
use of job data.

JobRecord is a NamedTuple rather than a frozen dataclass: both are immutable and typed,
but a frozen dataclass sets each of its 33 fields through object.__setattr__, about ten
times the cost of building a tuple, and a history page builds 200 of them.

Built from a row of ``jobs`` / ``job_outputs`` by the db layer (service/db/jobs.py
``job_record``, ``output_record``). Columns not named here are ignored, so a new column
is read only once it is added here: that is the point, every reader then sees its type.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal, NamedTuple, Self

from service.domain.states import JobStatus

CallbackStatus = Literal["pending", "delivered", "failed"]
DeletedReason = Literal["request", "retention"]
CALLBACK_STATUSES: tuple[CallbackStatus, ...] = ("pending", "delivered", "failed")
DELETED_REASONS: tuple[DeletedReason, ...] = ("request", "retention")


def _one_of(value: Any, allowed: tuple[str, ...], column: str) -> Any:
    # The database's CHECK constraints hold these sets; a value outside one is a schema
    # drift to fail on loudly, not a string to pass on.
    if value is not None and value not in allowed:
        raise ValueError(f"jobs.{column} holds {value!r}, not one of {allowed}")
    return value


class JobRecord(NamedTuple):
    id: str
    owner: str
    model: str
    status: JobStatus
    input: dict[str, Any]  # JSON: the validated input with defaults filled in
    metadata: dict[str, str]
    callback_url: str | None
    idempotency_key: str | None
    request_hash: str | None

    provider_task_id: str | None
    provider_status: str | None
    error: str | None
    has_nsfw_contents: list[bool] | None
    inference_ms: int | None
    cost_usd: Decimal | None

    # Scheduling: the job row is its own queue entry (service/db/queries.py).
    run_after: dt.datetime | None
    attempts: int
    locked_until: dt.datetime | None
    locked_by: str | None
    submit_sent_at: dt.datetime | None
    deadline_at: dt.datetime | None
    last_news_at: dt.datetime | None

    callback_status: CallbackStatus | None
    callback_attempts: int

    created_at: dt.datetime
    updated_at: dt.datetime
    submitted_at: dt.datetime | None
    completed_at: dt.datetime | None

    deleted_at: dt.datetime | None
    deleted_reason: DeletedReason | None
    retry_of: str | None

    # Tenancy (service/db/admission.py): 0 is sent first; vtag is the job's place in its
    # owner's weighted turn (service/db/fairness.py); not sent by start_deadline_at → timed_out.
    priority: int
    vtag: float
    start_timeout_seconds: int | None
    start_deadline_at: dt.datetime | None
    # W3C traceparent of the job's admission span: the parent of every later span of the
    # job (service/observability/tracing.py); None for jobs made before traces were kept.
    traceparent: str | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> JobRecord:
        converted = {
            "status": JobStatus(row["status"]),
            "callback_status": _one_of(row["callback_status"], CALLBACK_STATUSES, "callback_status"),
            "deleted_reason": _one_of(row["deleted_reason"], DELETED_REASONS, "deleted_reason"),
        }
        return cls(*[converted[n] if n in converted else row[n] for n in cls._fields])

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None


@dataclasses.dataclass(frozen=True, slots=True)
class OutputRecord:
    job_id: str
    index: int
    source_url: str
    key: str | None
    content_type: str | None
    size_bytes: int | None
    sha256: str | None
    thumbnail_key: str | None
    stored_at: dt.datetime | None
    content_credentials: bool = False  # an embedded, signed C2PA manifest (service/domain/content_credentials.py)

    @classmethod
    def from_row(cls, row: Mapping[Any, Any], prefix: str = "") -> Self:
        """From a row whose columns bear the field names, after ``prefix`` if given."""
        return cls(*[row[prefix + n] for n in _OUTPUT_FIELDS])


_OUTPUT_FIELDS = tuple(f.name for f in dataclasses.fields(OutputRecord))
