"""Deleted jobs: the tombstone and its erasure row (``MARK_DELETED``), the retention
sweep's choice of jobs past their period, and the erasure of a batch's data.

The order of the erasure's steps and why a crash between them is harmless is written in
service/work/eraser.py; the statements and their lock order are here and in
service/db/queries.sql.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db import queries
from service.db.engine import one_statement
from service.db.jobs import id_list
from service.domain.states import TERMINAL

TERMINAL_VALUES = sorted(s.value for s in TERMINAL)


async def mark_deleted(conn: AsyncConnection, ids: list[str], reason: str, owner: str | None) -> list[str]:
    """Tombstone ``ids`` (terminal jobs of ``owner``; any owner when None) and queue their
    erasure, in the caller's transaction; returns the ids newly marked."""
    if not ids:
        return []
    marked: list[str] = (await conn.execute(queries.MARK_DELETED, {
        "ids": id_list(ids), "reason": reason, "terminal": TERMINAL_VALUES, "owner": owner})).scalar_one()
    if marked:
        await conn.execute(queries.NOTIFY, {"channel": queries.CHANNEL_WORK, "payload": "erase"})
    return marked


# --- The retention sweep (service/work/retention.py)

async def shortest_retention(engine: AsyncEngine, default_days: int | None) -> int | None:
    """The shortest retention period anyone has, in days (None: keep everything)."""
    async with engine.connect() as conn:
        days: int | None = (await conn.execute(queries.SHORTEST_RETENTION, {"days": default_days})).scalar()
        return days


async def past_retention(conn: AsyncConnection, default_days: int | None, shortest: int, limit: int) -> list[str]:
    """Up to ``limit`` undeleted terminal jobs past their owner's retention (or
    ``default_days``), oldest first, skipping rows someone holds."""
    ids: list[str] = (await conn.execute(queries.RETENTION_BATCH, {
        "days": default_days, "shortest": shortest, "terminal": TERMINAL_VALUES, "limit": limit})).scalar_one()
    return ids


# --- The erasure of a batch (service/work/eraser.py)

@dataclass(frozen=True)
class ErasureObjects:
    """A batch's S3 keys (outputs and thumbnails), and the bytes of outputs per job;
    ``stored_ids``, the jobs whose key prefix is to be listed as well."""

    keys: list[str]
    job_ids: list[str]
    job_bytes: list[int]
    stored_ids: list[str]


async def erasure_objects(engine: AsyncEngine, token: str, lease: float) -> ErasureObjects:
    """Extend the batch's lease (it may have waited for its turn) and read its objects."""
    async with one_statement(engine) as conn:
        await conn.execute(queries.EXTEND_ERASURE_LEASE, {"token": token, "lease": lease})
        row = (await conn.execute(queries.ERASURE_OBJECTS, {"token": token})).one()._mapping
    return ErasureObjects(list(row["keys"]), list(row["job_ids"]), list(row["job_bytes"]), list(row["stored_ids"]))


async def retry_erasures(engine: AsyncEngine, token: str, error: str, delay: float) -> None:
    """Hand a failed batch back, due again in ``delay`` seconds."""
    async with engine.begin() as conn:
        await conn.execute(queries.RETRY_ERASURES, {"token": token, "error": error, "delay": delay})


async def erase_batch(engine: AsyncEngine, token: str) -> dict[str, str | None]:
    """Erase the batch's rows and remove its duty rows, in one transaction (jobs locked
    first, in id order); returns the job ids erased, each with its traceparent."""
    async with engine.begin() as conn:
        locked = (await conn.execute(queries.ERASE_LOCK_JOBS, {"token": token})).one()
        traces = dict(zip(locked.ids, locked.traces, strict=True))
        ids = id_list(locked.ids)
        for statement in queries.ERASE_STATEMENTS:
            await conn.execute(statement, {"ids": ids})
        done: list[str] = (await conn.execute(queries.FINISH_ERASURES, {"token": token, "ids": ids})).scalar_one()
        return {job_id: traces.get(job_id) for job_id in done}
