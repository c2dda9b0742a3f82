"""Operations on jobs, each one short transaction (or a step inside the caller's).

This is where the state machine meets the database: ``transition`` is the one guarded
UPDATE every status change a worker or the API makes goes through. Provider news (a
webhook, or a result the reconciler fetched) has its own one path, service/db/news.py,
a batch statement with the same guard (``states.allowed_from``).
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import json
import os
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, cast

import asyncpg
from sqlalchemy import Row, Select, func, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Alias

from service.db import queries
from service.db.models import Delivery, Job, JobEvent, JobOutput, table
from service.domain.errors import NotFound
from service.domain.ids import CROCKFORD
from service.domain.records import JobRecord, OutputRecord
from service.domain.states import CALLBACK_EVENT, TERMINAL, JobStatus, allowed_from

jobs_t = table(Job)
# The jobs table under the name the rule's fragments give the row (``j``), made once: an
# alias built per call (an ORM ``aliased``, as it was) made ``transition`` rebuild every
# column's proxy each time, ~2.4 ms of CPU per status change on the development machine
# against ~0.4 ms now (each status change of every job pays it).
_JOB_AS_J = cast(Alias, jobs_t.alias("j"))  # a Table's alias is an Alias; typed as its base
outputs_t = table(JobOutput)
events_t = table(JobEvent)
deliveries_t = table(Delivery)

_CROCKFORD = CROCKFORD  # the alphabet of ids (service/domain/ids.py says what an id looks like)
# Byte -> the Crockford character of its low 5 bits (256 is a multiple of 32, so a random
# byte gives a uniform character): bytes.translate then writes the random part of many ids
# in C. A loop over 26 characters per id in Python held serve's event loop ~2.5 ms per
# bulk batch of 500 (delivery ids), time every API request in flight waited out.
_RANDOM_CHAR = bytes(_CROCKFORD.encode()[b & 31] for b in range(256))


@functools.lru_cache(maxsize=4)
def _time_part(ms: int) -> str:
    return "".join(_CROCKFORD[(ms >> (5 * i)) & 31] for i in range(9, -1, -1))


def sortable_id_parts(prefix: str, count: int) -> tuple[str, str]:
    """The parts of ``count`` ids: their shared head (``prefix_`` and 10 characters of
    milliseconds: 48 bits, the top 2 of 50 zero) and one string of their random tails,
    16 characters (80 bits) each. The i-th id is ``head + tails[16 * i : 16 * i + 16]``."""
    head = prefix + "_" + _time_part(int(time.time() * 1000))
    return head, os.urandom(16 * count).translate(_RANDOM_CHAR).decode()


def sortable_ids(prefix: str, count: int) -> list[str]:
    """``count`` ids ``prefix_`` + 26 base32 characters, time first, so ids sort by
    creation time (handy in logs and as the keyset tie-breaker)."""
    head, tails = sortable_id_parts(prefix, count)
    return [head + tails[i : i + 16] for i in range(0, 16 * count, 16)]


def id_list(ids: Sequence[str]) -> str:
    """Ids as one comma-joined string, for SQL's ``string_to_array(:ids, ',')``: one
    parameter to encode instead of a list (asyncpg checks each element of a list)."""
    joined = ",".join(ids)
    if joined.count(",") != max(len(ids) - 1, 0):
        raise ValueError("an id holds a comma")  # ids are ours (read from the table): a bug
    return joined


def _sortable_id(prefix: str) -> str:
    return sortable_ids(prefix, 1)[0]


def new_job_id() -> str:
    return _sortable_id("job")


def new_delivery_id() -> str:
    return _sortable_id("msg")


def request_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


async def add_event(conn: AsyncConnection, job_id: str, type_: str, detail: dict[str, Any] | None = None) -> None:
    await conn.execute(insert(events_t).values(job_id=job_id, type=type_, detail=detail or {}))


async def notify(conn: AsyncConnection, channel: str, payload: str) -> None:
    await conn.execute(queries.NOTIFY, {"channel": channel, "payload": payload})


# --------------------------------------------------------------------------- create


# Admission (a job's creation, with its owner's budget and turn) is service/db/admission.py.


# --------------------------------------------------------------------------- read


def impossible_id(job_id: str) -> bool:
    """True for a path value no job can have. Postgres text cannot hold NUL, so
    ``/v1/jobs/%00`` must stop here as a 404 rather than fail in the driver (a 500)."""
    return "\x00" in job_id or len(job_id) > 200


def job_record(row: Row[Any]) -> JobRecord:
    return JobRecord.from_row(row._mapping)


async def get_job(conn: AsyncConnection, job_id: str, owner: str | None = None, *, lock: bool = False) -> JobRecord:
    if impossible_id(job_id):
        raise NotFound("no job with that id")
    stmt = select(jobs_t).where(jobs_t.c.id == job_id)
    if owner is not None:
        stmt = stmt.where(jobs_t.c.owner == owner)
    if lock:
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).first()
    if row is None:
        raise NotFound(f"no job with id {job_id!r}")
    return job_record(row)


async def get_job_with_outputs(conn: asyncpg.Connection, job_id: str, owner: str,
                               ) -> tuple[JobRecord, list[OutputRecord]]:
    """``owner``'s job and its stored outputs: one statement, one round trip, one snapshot,
    on the raw connection of ``engine.raw_statement`` (the reads every status poll makes).
    The owner is required: this is the API's read, never an operator's."""
    if impossible_id(job_id):
        raise NotFound("no job with that id")
    return job_and_outputs(await conn.fetch(queries.JOB_WITH_OUTPUTS, job_id, owner), job_id)


async def lock_job(conn: AsyncConnection, job_id: str) -> JobRecord | None:
    if impossible_id(job_id):
        return None
    row = (await conn.execute(select(jobs_t).where(jobs_t.c.id == job_id).with_for_update())).first()
    return None if row is None else job_record(row)


async def held_job_with_outputs(conn: asyncpg.Connection, job_id: str) -> tuple[JobRecord, list[OutputRecord]]:
    """A job the caller's worker holds and all its outputs (queries.HELD_JOB_WITH_OUTPUTS),
    on the raw connection of ``engine.raw_statement``: one round trip."""
    return job_and_outputs(await conn.fetch(queries.HELD_JOB_WITH_OUTPUTS, job_id), job_id)


def job_and_outputs(rows: Sequence[asyncpg.Record], job_id: str) -> tuple[JobRecord, list[OutputRecord]]:
    """The job and its outputs from the rows of a job joined to its outputs (the job's
    columns, then the output's prefixed ``output_``: one row per output in index order,
    or one row with NULL output columns); none: no such job."""
    if not rows:
        raise NotFound(f"no job with id {job_id!r}")
    outputs = [OutputRecord.from_row(r, prefix="output_") for r in rows if r["output_job_id"] is not None]
    return JobRecord.from_row(rows[0]), outputs


async def is_deleted(conn: AsyncConnection, job_id: str) -> bool:
    """Whether ``job_id`` is deleted (or gone), read under a share lock on its row so a
    deletion cannot commit between this check and the caller's commit."""
    row = (await conn.execute(
        select(jobs_t.c.deleted_at).where(jobs_t.c.id == job_id).with_for_update(read=True)
    )).first()
    return row is None or row.deleted_at is not None


async def lock_job_id(conn: AsyncConnection, job_id: str) -> None:
    """Take the job's row lock first, in a transaction that then writes other tables
    (the lock order written down in service/db/queries.py)."""
    await conn.execute(select(jobs_t.c.id).where(jobs_t.c.id == job_id).with_for_update())


async def get_outputs(conn: AsyncConnection, job_ids: Sequence[str], *, owner: str | None,
                      ) -> dict[str, list[OutputRecord]]:
    """The stored outputs of ``job_ids``. ``owner``: the caller's, in the statement itself,
    so another owner's id yields nothing even if a caller forgot to check it first; None
    only for a worker's read of a job it holds (no tenant is asking)."""
    if not job_ids:
        return {}
    stmt = select(outputs_t).where(outputs_t.c.job_id.in_(list(job_ids)))
    if owner is not None:
        stmt = stmt.join(jobs_t, jobs_t.c.id == outputs_t.c.job_id).where(jobs_t.c.owner == owner)
    return await _outputs_by_job(conn, stmt)


async def owned_outputs(conn: AsyncConnection, pairs: Sequence[tuple[str, str]]) -> dict[str, list[OutputRecord]]:
    """The stored outputs of the jobs among ``(owner, id)`` pairs, each only as its own
    owner's (one statement for many readers: the live streams' batched reads)."""
    if not pairs:
        return {}
    stmt = (select(outputs_t).join(jobs_t, jobs_t.c.id == outputs_t.c.job_id)
            .where(tuple_(jobs_t.c.owner, jobs_t.c.id).in_(list(pairs))))
    return await _outputs_by_job(conn, stmt)


async def _outputs_by_job(conn: AsyncConnection, stmt: Select[Any]) -> dict[str, list[OutputRecord]]:
    rows = (await conn.execute(stmt.order_by(outputs_t.c.job_id, outputs_t.c.index))).all()
    out: dict[str, list[OutputRecord]] = {}
    for row in rows:
        out.setdefault(row.job_id, []).append(OutputRecord.from_row(row._mapping))
    return out


# --------------------------------------------------------------------------- transitions


async def transition(
    conn: AsyncConnection,
    job: JobRecord,
    target: JobStatus,
    *,
    reason: str,
    worker: str | None = None,
    run_after_seconds: float | None = None,
    values: dict[str, Any] | None = None,
) -> bool:
    """Move ``job`` to ``target`` if the state machine allows it; False if not.

    The guard is in the WHERE clause (``status = ANY(allowed_from)``), so a concurrent
    writer can never move a job backwards. With ``worker``, the write is also fenced on
    the worker's lease. Terminal moves clear scheduling, stamp completed_at, queue the
    backend callback in the same transaction (so a crash cannot lose it: the rule "a
    terminal move queues a pending delivery" of queries.sql, its job side in this UPDATE
    and its delivery in ``AFTER_MOVE``) and NOTIFY waiters. The money needs nothing here:
    the trigger ``jobs_ledger`` (service/db/schema.sql) writes the spend and the release
    in whatever UPDATE ends a job, this one or any other path's
    (tests/integration/test_budget.py proves a plain-SQL completion spends).
    """
    now = func.now()
    sets: dict[str, Any] = {"status": target.value, "updated_at": now, "locked_until": None, "locked_by": None}
    terminal = target in TERMINAL
    if terminal:
        sets.update(run_after=None, completed_at=now, callback_status=queries.CALLBACK_STATUS_ENDED,
                    callback_attempts=queries.CALLBACK_ATTEMPTS_ENDED)
    else:
        sets.update(attempts=0, run_after=func.now() + dt.timedelta(seconds=run_after_seconds or 0))
    if values:
        sets.update(values)
    j = _JOB_AS_J.c
    stmt = update(_JOB_AS_J).where(j.id == job.id, j.status.in_(allowed_from(target)))
    if worker is not None:
        stmt = stmt.where(j.locked_by == worker)
    result = (await conn.execute(stmt.values(**sets).returning(j.callback_url))).first()
    if result is None:
        return False
    detail: dict[str, Any] = {"from": job.status, "to": target.value, "reason": reason}
    if values and values.get("error"):
        detail["error"] = values["error"]
    url = result.callback_url if terminal else None
    if terminal:
        wakes = ([(queries.CHANNEL_WORK, "deliver")] if url else []) + [(queries.CHANNEL_DONE, job.id)]
    else:  # the duty that takes it from here, and live streams (GET /v1/jobs/{id}/stream)
        wakes = [(queries.CHANNEL_WORK, target.value), (queries.CHANNEL_JOB, job.id)]
    await conn.execute(queries.AFTER_MOVE, {
        "job_id": job.id, "detail": json.dumps(detail), "url": url,
        "delivery_id": new_delivery_id() if url else None, "event_type": CALLBACK_EVENT.get(target),
        "channels": [c for c, _ in wakes], "payloads": [p for _, p in wakes],
    })
    return True


async def finish_many(
    conn: AsyncConnection, owner: str, ids: Sequence[str], target: JobStatus, *, reason: str
) -> int:
    """Move ``owner``'s jobs among ``ids`` to the terminal ``target`` where the state
    machine allows it, with what ``transition`` does for each (event, callback, NOTIFY),
    in one statement; returns how many moved."""
    assert target in TERMINAL
    head, tails = sortable_id_parts("msg", len(ids))
    row = (await conn.execute(queries.FINISH_MANY, {
        "ids": id_list(ids), "owner": owner, "allowed": allowed_from(target), "target": target.value,
        "reason": reason, "event": CALLBACK_EVENT[target], "delivery_head": head, "delivery_tails": tails,
        "done_channel": queries.CHANNEL_DONE, "work_channel": queries.CHANNEL_WORK,
    })).one()
    return int(row.moved)


async def queue_callback(conn: AsyncConnection, job_id: str, status: JobStatus, url: str) -> str:
    """A pending delivery of the terminal event of a job that has none (queries.sql's
    rule, ``QUEUE_CALLBACK``); returns its id, the stable webhook-id. The caller holds the
    job's row lock."""
    delivery_id = new_delivery_id()
    await conn.execute(queries.QUEUE_CALLBACK, {
        "job_id": job_id, "delivery_id": delivery_id, "event_type": CALLBACK_EVENT[status], "url": url,
        "channel": queries.CHANNEL_WORK,
    })
    return delivery_id


async def fail(conn: AsyncConnection, job: JobRecord, error: str, *, reason: str, worker: str | None = None) -> bool:
    return await transition(conn, job, JobStatus.FAILED, reason=reason, worker=worker, values={"error": error})


async def reschedule(
    conn: AsyncConnection, job_id: str, worker: str, delay: float, *, was_attempt: bool = True
) -> None:
    """Hand a claimed job back, due again in ``delay`` seconds (fenced on our lease).

    ``was_attempt=False`` takes back the attempt the claim counted: waiting our turn
    (the provider throttle) is not a failed try, and must not inflate the backoff of the
    tries that follow.
    """
    values: dict[str, Any] = {
        "run_after": func.now() + dt.timedelta(seconds=delay),
        "locked_until": None,
        "locked_by": None,
        "updated_at": func.now(),
    }
    if not was_attempt:
        values["attempts"] = func.greatest(jobs_t.c.attempts - 1, 0)
    await conn.execute(update(jobs_t).where(jobs_t.c.id == job_id, jobs_t.c.locked_by == worker).values(**values))


def sent_now(deadline_seconds: float) -> dict[str, Any]:
    """The values a job takes when it counts as submitted now: its submit time, and its
    deadline ``deadline_seconds`` from now (database time), for ``transition``."""
    return {"submitted_at": func.now(), "deadline_at": func.now() + dt.timedelta(seconds=deadline_seconds)}


async def clear_submit_marker(conn: AsyncConnection, job_id: str, worker: str, *, without_task: bool = False) -> bool:
    """Clear the job's submit marker, fenced on ``worker``'s lease: the request created no
    task, so sending again is safe. ``without_task``: only while the job has no task id.
    False when nothing was cleared."""
    stmt = update(jobs_t).where(jobs_t.c.id == job_id, jobs_t.c.locked_by == worker)
    if without_task:
        stmt = stmt.where(jobs_t.c.provider_task_id.is_(None))
    return (await conn.execute(stmt.values(submit_sent_at=None).returning(jobs_t.c.id))).first() is not None


async def keep_task_id(conn: AsyncConnection, job_id: str, task_id: str, provider_status: str | None) -> None:
    """Record the provider's task id on a job that has none yet (a submit's answer that
    arrived after its webhook had moved the job on)."""
    await conn.execute(
        update(jobs_t).where(jobs_t.c.id == job_id, jobs_t.c.provider_task_id.is_(None))
        .values(provider_task_id=task_id, provider_status=provider_status)
    )


async def owned_task_ids(conn: AsyncConnection, task_ids: Sequence[str]) -> set[str]:
    """The ones among ``task_ids`` that some job already holds."""
    rows = await conn.execute(select(jobs_t.c.provider_task_id).where(jobs_t.c.provider_task_id.in_(list(task_ids))))
    return {r.provider_task_id for r in rows}


async def record_output(conn: AsyncConnection, job_id: str, index: int, *, key: str, content_type: str,
                        size_bytes: int, sha256: str, thumbnail_key: str | None,
                        content_credentials: bool = False) -> None:
    """An output copied into S3: where it is, its type, size and sha256, and whether it
    carries an embedded, signed C2PA manifest."""
    await conn.execute(
        update(outputs_t).where(outputs_t.c.job_id == job_id, outputs_t.c.index == index)
        .values(key=key, content_type=content_type, size_bytes=size_bytes, sha256=sha256,
                thumbnail_key=thumbnail_key, stored_at=func.now(), content_credentials=content_credentials)
    )


def decode_data_url(url: str) -> tuple[str, bytes]:
    """``data:image/png;base64,...`` → (content type, bytes)."""
    header, _, payload = url.partition(",")
    content_type = header[5:].split(";")[0] or "application/octet-stream"
    return content_type, base64.b64decode(payload)


def cost_for(price_usd: str, outputs: int) -> Decimal:
    return Decimal(price_usd) * outputs
