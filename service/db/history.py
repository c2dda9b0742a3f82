"""Job history queries: filters and keyset pagination.

Pages are keyed on ``(created_at, id)`` descending, never on OFFSET: a page 10,000 rows
deep costs the same as the first, and new jobs arriving meanwhile cannot shift a page
(they are newer than every cursor).

Every page is an ordered index walk that stops after ``limit + 1`` rows, whatever the
filter's selectivity: ``(owner, created_at, id)``, ``(owner, status, …)`` and ``(owner,
model, …)`` on jobs, and for ``metadata.<key>=<value>`` the ``(owner, key, value,
created_at, job_id)`` index of job_metadata (one row per key, kept by a trigger; see
migrations/versions/0003_history_indexes.py). A GIN index on the jsonb could find the
matches but not in order, so a value matching thousands of jobs meant fetching and
sorting them all. tests/benchmarks/bench_history.py measures every shape at 1,000,000
jobs of one owner.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import FromClause, Row, Select, and_, select, tuple_, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db import queries
from service.db.models import Delivery, Job, JobEvent, JobMetadata, table
from service.domain.errors import FieldError, ValidationFailed
from service.domain.records import JobRecord
from service.domain.schemas import MODELS, NUL_RULE
from service.domain.states import JobStatus

jobs_t = table(Job)
metadata_t = table(JobMetadata)
events_t = table(JobEvent)
deliveries_t = table(Delivery)
MAX_LIMIT = 200
DEFAULT_LIMIT = 50
# Metadata filters beyond this many are checked on the job row (jsonb @>) rather than
# joined: each join adds a table the planner must order, and three keys already narrow
# a page to a handful of rows.
MAX_JOINED_KEYS = 3
ALL_STATUSES = frozenset(s.value for s in JobStatus)


@dataclass
class HistoryFilter:
    statuses: list[str] = field(default_factory=list)
    model: str | None = None
    created_after: dt.datetime | None = None
    created_before: dt.datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    limit: int = DEFAULT_LIMIT
    cursor: tuple[dt.datetime, str] | None = None
    include_deleted: bool = False  # deleted jobs (tombstones) are left out unless asked for


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
        elif key == "include_deleted":
            if value not in ("true", "false"):
                errors.append(FieldError(key, "must be true or false"))
            f.include_deleted = value == "true"
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


def _bounds(f: HistoryFilter, stamp: Any, tiebreak: Any) -> list[Any]:
    """The time range and the cursor, on one pair of (created_at, id) columns."""
    out = []
    if f.created_after:
        out.append(stamp > f.created_after)
    if f.created_before:
        out.append(stamp < f.created_before)
    if f.cursor:
        out.append(tuple_(stamp, tiebreak) < tuple_(*f.cursor))
    return out


def _branch(owner: str, f: HistoryFilter, status: str | None) -> Select[Any]:
    """One ordered, limited walk: jobs of ``owner`` (in one ``status``, if given) that
    pass every other filter, newest first from the cursor on."""
    conditions = [jobs_t.c.owner == owner]
    if not f.include_deleted:
        conditions.append(jobs_t.c.deleted_at.is_(None))
    if f.model:
        conditions.append(jobs_t.c.model == f.model)
    items = list(f.metadata.items())
    source: FromClause
    if not items:
        # (owner[, status | model], created_at DESC, id DESC): the walk starts at the cursor.
        stamp, tiebreak, source = jobs_t.c.created_at, jobs_t.c.id, jobs_t
        if status is not None:
            conditions.append(jobs_t.c.status == status)
    else:
        # The first metadata key leads: its job_metadata rows carry the job's owner,
        # created_at and status, so its index yields the page's order, the cursor is an
        # index bound, and the status is checked on index entries. Those conditions go
        # on that side only: repeated on jobs, the planner would count them twice and
        # underestimate the rows (then plan for a full scan instead of a short walk).
        (key, value), *others = items
        lead = metadata_t.alias("m0")
        stamp, tiebreak = lead.c.created_at, lead.c.job_id
        conditions += [lead.c.owner == owner, lead.c.key == key, lead.c.value == value]
        if status is not None:
            conditions.append(lead.c.status == status)
        source = lead.join(jobs_t, jobs_t.c.id == lead.c.job_id)
        for n, (key, value) in enumerate(others[: MAX_JOINED_KEYS - 1], start=1):
            # Joined on the whole ordering key, so every key's index is in page order
            # too: the planner merges two walks in step, or walks the rarer key and
            # probes the other's index, whichever key the user happened to name first.
            other = metadata_t.alias(f"m{n}")
            source = source.join(other, and_(
                other.c.owner == lead.c.owner, other.c.created_at == lead.c.created_at,
                other.c.job_id == lead.c.job_id,
            ))
            conditions += [other.c.key == key, other.c.value == value]
            # The same bounds as the lead's (equal by the join): whichever walk the
            # planner picks starts at the cursor instead of at the newest job.
            conditions += _bounds(f, other.c.created_at, other.c.job_id)
        if rest := dict(others[MAX_JOINED_KEYS - 1 :]):
            conditions.append(jobs_t.c.metadata.contains(rest))
    conditions += _bounds(f, stamp, tiebreak)
    return (
        select(jobs_t)
        .select_from(source)
        .where(and_(*conditions))
        .order_by(stamp.desc(), tiebreak.desc())
        .limit(f.limit + 1)
    )


def history_query(owner: str, f: HistoryFilter) -> Select[Any]:
    """The page (plus one row, to know whether another follows) as one statement.

    Several statuses become one branch per status, merged: each branch walks
    ``(owner, status, created_at, id)`` from the cursor and stops after a page, so a
    page costs the same whether the statuses are common or rare (``status IN (...)``
    would have to fetch every match of the rare ones and sort them).
    """
    statuses = list(dict.fromkeys(f.statuses))
    if set(statuses) == ALL_STATUSES:
        statuses = []
    if len(statuses) <= 1:
        return _branch(owner, f, statuses[0] if statuses else None)
    merged = union_all(*(_branch(owner, f, s) for s in statuses)).subquery("page")
    return select(merged).order_by(merged.c.created_at.desc(), merged.c.id.desc()).limit(f.limit + 1)


async def page_query(conn: AsyncConnection, owner: str, f: HistoryFilter) -> Select[Any]:
    """The statement ``list_jobs`` runs, with the settings it runs under applied to the
    transaction (tests/benchmarks/bench_history.py explains this very statement)."""
    await conn.execute(queries.PAGE_SETTINGS)
    return history_query(owner, f)


async def list_jobs(conn: AsyncConnection, owner: str, f: HistoryFilter) -> tuple[list[JobRecord], str | None]:
    """One page of ``owner``'s jobs and the cursor of the next, if there is one."""
    rows = list((await conn.execute(await page_query(conn, owner, f))).all())
    next_cursor = None
    if len(rows) > f.limit:
        rows = rows[: f.limit]
        last = rows[-1]
        next_cursor = encode_cursor(last.created_at, last.id)
    return [JobRecord.from_row(r._mapping) for r in rows], next_cursor


# --------------------------------------------------------------------------- by id


async def jobs_by_id(conn: AsyncConnection, owner: str, ids: Sequence[str]) -> list[JobRecord]:
    """The owner's jobs among ``ids``, in no particular order: another owner's ids
    simply match nothing (one statement for all of them)."""
    rows = await conn.execute(select(jobs_t).where(jobs_t.c.id.in_(ids), jobs_t.c.owner == owner))
    return [JobRecord.from_row(r._mapping) for r in rows]


async def jobs_by_owner_and_id(conn: AsyncConnection, pairs: Sequence[tuple[str, str]]) -> list[JobRecord]:
    """The jobs among ``(owner, id)`` pairs, each only as its own owner's (one statement
    for many readers: the live streams' batched reads)."""
    rows = await conn.execute(select(jobs_t).where(tuple_(jobs_t.c.owner, jobs_t.c.id).in_(pairs)))
    return [JobRecord.from_row(r._mapping) for r in rows]


async def job_events(conn: AsyncConnection, job_id: str, *, owner: str) -> Sequence[Row[Any]]:
    """``owner``'s job's events, oldest first: the owner is in the statement itself, so
    another owner's id yields nothing even if a caller forgot to check it first."""
    return (await conn.execute(
        select(events_t).join(jobs_t, jobs_t.c.id == events_t.c.job_id)
        .where(events_t.c.job_id == job_id, jobs_t.c.owner == owner).order_by(events_t.c.id))).all()


async def job_deliveries(conn: AsyncConnection, job_id: str, *, owner: str) -> Sequence[Row[Any]]:
    """``owner``'s job's callback deliveries, oldest first (the owner in the statement, as
    for the events)."""
    return (await conn.execute(
        select(deliveries_t).join(jobs_t, jobs_t.c.id == deliveries_t.c.job_id)
        .where(deliveries_t.c.job_id == job_id, jobs_t.c.owner == owner).order_by(deliveries_t.c.created_at))).all()
