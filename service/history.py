"""Job history queries: filters and keyset pagination.

Pages are keyed on ``(created_at, id)`` descending, never on OFFSET: a page 10,000 rows
deep costs the same as the first, and new jobs arriving meanwhile cannot shift a page
(they are newer than every cursor). Each filter lands on an index that starts with the
owner (see migrations/versions/0001_initial.py).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, Select, and_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import FieldError, ValidationFailed
from service.models import Job
from service.schemas import MODELS, NUL_RULE
from service.states import JobStatus

jobs_t = Job.__table__
MAX_LIMIT = 200
DEFAULT_LIMIT = 50


@dataclass
class HistoryFilter:
    statuses: list[str] = field(default_factory=list)
    model: str | None = None
    created_after: dt.datetime | None = None
    created_before: dt.datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    limit: int = DEFAULT_LIMIT
    cursor: tuple[dt.datetime, str] | None = None


def encode_cursor(created_at: dt.datetime, job_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        stamp, job_id = json.loads(raw)
        if "\x00" in str(job_id):
            raise ValueError("NUL in a cursor id")  # Postgres text cannot hold it
        return _utc(dt.datetime.fromisoformat(stamp)), str(job_id)
    except (ValueError, TypeError, OverflowError, binascii.Error):
        raise ValidationFailed([FieldError("cursor", "is not a cursor this API returned")]) from None


def _utc(moment: dt.datetime) -> dt.datetime:
    """``moment`` in UTC (no offset means UTC). Converting here, where OverflowError can be
    caught, rather than in the database driver: 9999-12-31T23:59:59-05:00 is past year 9999
    in UTC."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


def _parse_time(name: str, value: str) -> dt.datetime:
    try:
        return _utc(dt.datetime.fromisoformat(value))  # 3.11+ reads a trailing Z
    except (ValueError, OverflowError):
        raise ValidationFailed([FieldError(name, "must be an ISO 8601 date-time, e.g. 2026-01-31T12:00:00Z")]) from None


def parse_filter(params: Sequence[tuple[str, str]]) -> HistoryFilter:
    """Query parameters → HistoryFilter; every problem names its parameter."""
    f = HistoryFilter()
    errors: list[FieldError] = []
    valid_statuses = {s.value for s in JobStatus}
    for key, value in params:
        if key == "status":
            for status in value.split(","):
                if status not in valid_statuses:
                    errors.append(FieldError("status", f"must be one of {', '.join(sorted(valid_statuses))}"))
                else:
                    f.statuses.append(status)
        elif key == "model":
            if value not in MODELS:
                errors.append(FieldError("model", f"must be one of {', '.join(MODELS)}"))
            f.model = value
        elif key in ("created_after", "created_before"):
            try:
                setattr(f, key, _parse_time(key, value))
            except ValidationFailed as exc:
                errors.extend(exc.fields)
        elif key.startswith("metadata."):
            name = key[len("metadata.") :]
            if not name:
                errors.append(FieldError(key, "must name a metadata key: metadata.<key>=<value>"))
            elif "\x00" in key or "\x00" in value:
                errors.append(FieldError(key, NUL_RULE))
            f.metadata[name] = value
        elif key == "limit":
            # isascii: str.isdigit() is also true for "²", which int() refuses.
            if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_LIMIT:
                errors.append(FieldError("limit", f"must be an integer from 1 to {MAX_LIMIT}"))
            else:
                f.limit = int(value)
        elif key == "cursor":
            try:
                f.cursor = decode_cursor(value)
            except ValidationFailed as exc:
                errors.extend(exc.fields)
        else:
            errors.append(FieldError(key, "unknown query parameter"))
    if errors:
        raise ValidationFailed(errors)
    return f


def history_query(owner: str, f: HistoryFilter) -> Select[Any]:
    conditions = [jobs_t.c.owner == owner]
    if f.statuses:
        conditions.append(jobs_t.c.status.in_(f.statuses))
    if f.model:
        conditions.append(jobs_t.c.model == f.model)
    if f.created_after:
        conditions.append(jobs_t.c.created_at > f.created_after)
    if f.created_before:
        conditions.append(jobs_t.c.created_at < f.created_before)
    if f.metadata:
        # @> uses the GIN (jsonb_path_ops) index.
        conditions.append(jobs_t.c.metadata.contains(f.metadata))
    if f.cursor:
        created_at, job_id = f.cursor
        conditions.append(tuple_(jobs_t.c.created_at, jobs_t.c.id) < tuple_(created_at, job_id))
    return (
        select(jobs_t)
        .where(and_(*conditions))
        .order_by(jobs_t.c.created_at.desc(), jobs_t.c.id.desc())
        .limit(f.limit + 1)
    )


async def list_jobs(conn: AsyncConnection, owner: str, f: HistoryFilter) -> tuple[list[Row[Any]], str | None]:
    rows = list((await conn.execute(history_query(owner, f))).all())
    next_cursor = None
    if len(rows) > f.limit:
        rows = rows[: f.limit]
        last = rows[-1]
        next_cursor = encode_cursor(last.created_at, last.id)
    return rows, next_cursor

