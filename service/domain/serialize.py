"""The job object as the API, callbacks and the dashboard show it (contract.md)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Row


def iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def output_dict(row: Row[Any], presign: Callable[[str], str]) -> dict[str, Any]:
    return {
        "index": row.index,
        "url": presign(row.key) if row.key else None,
        "key": row.key,
        "content_type": row.content_type,
        "size_bytes": row.size_bytes,
        "sha256": row.sha256,
        "thumbnail_url": presign(row.thumbnail_key) if row.thumbnail_key else None,
    }


def job_dict(job: Row[Any], outputs: Sequence[Row[Any]], presign: Callable[[str], str]) -> dict[str, Any]:
    stored = [o for o in outputs if o.stored_at is not None]
    return {
        "id": job.id,
        "object": "job",
        "model": job.model,
        "status": job.status,
        "input": job.input,
        "metadata": job.metadata,
        "callback_url": job.callback_url,
        "provider": {
            "task_id": job.provider_task_id,
            "status": job.provider_status,
            "inference_ms": job.inference_ms,
        },
        "outputs": [output_dict(o, presign) for o in stored],
        "has_nsfw_contents": job.has_nsfw_contents,
        "error": job.error,
        "cost_usd": format(job.cost_usd.normalize(), "f") if job.cost_usd is not None else None,
        "callback": (
            {"status": job.callback_status, "attempts": job.callback_attempts} if job.callback_url else None
        ),
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "submitted_at": iso(job.submitted_at),
        "completed_at": iso(job.completed_at),
    }
