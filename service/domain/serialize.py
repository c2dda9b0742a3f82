"""The job object as the API, callbacks and the history page show it (docs/api.md).

The TypedDicts below are the answer's one description: ``job_dict`` must build exactly
them (mypy checks it) and /openapi.json documents them as they are (service/api/
openapi_doc.py turns them into JSON Schema), so a field added here is documented too.
Answers may gain fields; a client ignores the ones it does not know.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Annotated, Any, Literal, overload

from pydantic import Field
from typing_extensions import TypedDict  # pydantic reads TypedDicts from typing_extensions before 3.12

from service.domain.records import JobRecord, OutputRecord
from service.domain.schemas import MODELS
from service.domain.states import JobStatus

# ISO 8601 in UTC with a ``Z``, as ``iso`` writes it.
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class ProviderInfo(TypedDict):
    task_id: str | None
    status: str | None
    inference_ms: int | None


class StoredOutput(TypedDict):
    index: int
    url: Annotated[str | None, Field(description="A presigned GET URL of the object in S3.")]
    key: str | None
    content_type: str | None
    size_bytes: int | None
    sha256: str | None
    thumbnail_url: Annotated[str | None, Field(description="A presigned URL of a 256 px WebP thumbnail.")]


class CallbackInfo(TypedDict):
    status: Literal["pending", "delivered", "failed"] | None
    attempts: int


class Job(TypedDict):
    """A job: what `GET /v1/jobs/{id}` answers and a callback's `data` carries."""

    id: str
    object: Literal["job"]
    model: Annotated[str, Field(json_schema_extra={"enum": list(MODELS)})]
    status: JobStatus
    input: Annotated[dict[str, Any], Field(description="The validated input with every default filled in.")]
    metadata: dict[str, str]
    callback_url: str | None
    provider: ProviderInfo
    outputs: Annotated[list[StoredOutput], Field(description="Stored outputs only; a completed job has all of them.")]
    has_nsfw_contents: list[bool] | None
    error: str | None
    cost_usd: Annotated[str | None, Field(description='Decimal string, e.g. "0.015".')]
    priority: Annotated[int, Field(ge=0, le=9, description="0 is sent upstream first when jobs wait for capacity.")]
    start_timeout_seconds: Annotated[int | None, Field(description="Not sent upstream this long after creation: "
                                                                   "the job ends timed_out.")]
    callback: Annotated[CallbackInfo | None, Field(description="Null when the job has no callback_url.")]
    created_at: Timestamp
    updated_at: Timestamp
    submitted_at: Timestamp | None
    completed_at: Timestamp | None
    deleted_at: Annotated[Timestamp | None, Field(description="Set once the job is deleted: it is then a tombstone "
                                                             "(input {}, metadata {}, outputs []).")]
    deleted_reason: Literal["request", "retention"] | None
    retry_of: Annotated[str | None, Field(description="The job this one retries (bulk retry).")]
    trace_id: Annotated[str | None, Field(
        pattern="^[0-9a-f]{32}$",
        description="The job's OpenTelemetry trace (W3C trace-id, 32 hex digits): a child of the `traceparent` "
                    "sent with the submit, else a trace of its own. Every callback's `traceparent` carries it. "
                    "Null only for jobs made before traces were kept.")]


def usd(value: Decimal | None) -> str | None:
    """Dollars as the answers write them: a decimal string without trailing zeros ("0.03")."""
    return format(value.normalize(), "f") if value is not None else None


@overload
def iso(value: dt.datetime) -> str: ...
@overload
def iso(value: dt.datetime | None) -> str | None: ...
def iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def output_dict(row: OutputRecord, presign: Callable[[str], str]) -> StoredOutput:
    return {
        "index": row.index,
        "url": presign(row.key) if row.key else None,
        "key": row.key,
        "content_type": row.content_type,
        "size_bytes": row.size_bytes,
        "sha256": row.sha256,
        "thumbnail_url": presign(row.thumbnail_key) if row.thumbnail_key else None,
    }


def job_dict(job: JobRecord, outputs: Sequence[OutputRecord], presign: Callable[[str], str]) -> Job:
    deleted = job.deleted
    # A deleted job is a tombstone from the moment it is marked, even before the eraser
    # has run: its input, metadata, outputs, error text and callback URL are never shown again.
    stored = [] if deleted else [o for o in outputs if o.stored_at is not None]
    return {
        "id": job.id,
        "object": "job",
        "model": job.model,
        "status": job.status,
        "input": {} if deleted else job.input,
        "metadata": {} if deleted else job.metadata,
        "callback_url": None if deleted else job.callback_url,
        "provider": {
            "task_id": job.provider_task_id,
            "status": job.provider_status,
            "inference_ms": job.inference_ms,
        },
        "outputs": [output_dict(o, presign) for o in stored],
        "has_nsfw_contents": None if deleted else job.has_nsfw_contents,
        "error": None if deleted else job.error,  # the provider's text can echo the prompt
        "cost_usd": usd(job.cost_usd),
        "priority": job.priority,
        "start_timeout_seconds": job.start_timeout_seconds,
        "callback": (
            {"status": job.callback_status, "attempts": job.callback_attempts} if job.callback_url else None
        ),
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "submitted_at": iso(job.submitted_at),
        "completed_at": iso(job.completed_at),
        "deleted_at": iso(job.deleted_at),
        "deleted_reason": job.deleted_reason,
        "retry_of": job.retry_of,
        "trace_id": job.traceparent[3:35] if job.traceparent else None,  # 00-<trace-id>-<span-id>-<flags>
    }
