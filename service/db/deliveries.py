"""Callback deliveries: one row per terminal event a backend is sent (the webhook-id),
its frozen body, its attempts and its state, mirrored on the job
(``jobs.callback_status``, ``jobs.callback_attempts``).

A delivery is created by ``jobs.transition`` in the transaction that ends the job; the
deliverer (service/work/deliverer.py) claims due ones (service/db/leases.py) and records
each attempt here. Every write a worker makes is fenced on its lease (``locked_by``).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, fields
from typing import Any

import asyncpg
from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db import jobs, queries
from service.db.models import Delivery, Job
from service.domain.records import JobRecord, OutputRecord
from service.domain.states import DeliveryStatus, JobStatus

deliveries_t = jobs.deliveries_t


async def redeliver(conn: AsyncConnection, job_id: str, url: str, status: JobStatus) -> str:
    """Send a terminal job's event again (``POST /v1/jobs/{id}/callback/redeliver``);
    returns the delivery id (the webhook-id). Creates the delivery if the job has none."""
    row = (await conn.execute(queries.REDELIVER, {"job_id": job_id})).first()
    if row is None:
        return await jobs.queue_callback(conn, job_id, status, url)
    await mirror_on_job(conn, job_id, DeliveryStatus.PENDING, row.attempts)
    await jobs.notify(conn, queries.CHANNEL_WORK, "deliver")
    return str(row.id)


@dataclass(frozen=True)
class AttemptRow:
    """A delivery as an attempt needs it (queries.DELIVERY_FOR_ATTEMPT): the row, its job's
    task id, owner and trace, and the owner's sealed callback secrets."""

    id: str
    job_id: str
    event_type: str
    url: str
    body: str
    status: str
    attempts: int
    locked_by: str | None
    created_at: dt.datetime
    task_id: str | None
    owner: str
    traceparent: str | None
    has_secrets: bool
    secret: str | None
    previous_secret: str | None
    previous_live: bool
    previous_expires_at: dt.datetime | None


_ATTEMPT_FIELDS = tuple(f.name for f in fields(AttemptRow))


@dataclass(frozen=True)
class AttemptRead:
    """What DELIVERY_FOR_ATTEMPT reads: the delivery, its job, and the job's stored outputs
    (read only while no body is frozen; an empty list once one is)."""

    row: AttemptRow
    job: JobRecord
    outputs: list[OutputRecord]


async def for_attempt(conn: asyncpg.Connection, delivery_id: str) -> AttemptRead | None:
    """The delivery, its job's bits, its owner's secrets and, before a body is frozen, the
    job and its outputs the body is built from: one round trip."""
    rows = await conn.fetch(queries.DELIVERY_FOR_ATTEMPT, delivery_id)
    if not rows:
        return None
    row = AttemptRow(*[rows[0]["d_" + name] for name in _ATTEMPT_FIELDS])
    job, outputs = jobs.job_and_outputs(rows, row.job_id)
    return AttemptRead(row, job, outputs)


async def defer_first_attempt(conn: AsyncConnection, delivery_id: str, worker: str, delay: float) -> bool:
    """Put a first attempt off until ``delay`` seconds after the delivery was created
    (queries.DEFER_FIRST_ATTEMPT); False when that moment has passed."""
    deferred = (await conn.execute(
        queries.DEFER_FIRST_ATTEMPT, {"id": delivery_id, "worker": worker, "delay": delay})).first()
    return deferred is not None


async def freeze_body(conn: asyncpg.Connection, delivery_id: str, worker: str, body: str) -> bool:
    """Store the body every attempt of this series sends; False when the lease is no
    longer ``worker``'s or a body is already there."""
    return await conn.fetchval(queries.FREEZE_BODY, delivery_id, body, worker) is not None


@dataclass(frozen=True)
class Recorded:
    deleted: bool  # the job is deleted: nothing was written (record_attempt's path does it)
    moved: bool  # False: our lease lapsed and another took the row (the attempt is logged)


async def record_live(conn: asyncpg.Connection, delivery_id: str, job_id: str, worker: str, *, number: int,
                      status: DeliveryStatus, status_code: int | None, error: str | None, delay: float | None,
                      detail: dict[str, Any], closing: tuple[str, dict[str, Any]] | None) -> Recorded:
    """Record attempt ``number`` of a delivery whose job is not deleted, in one statement
    (queries.RECORD_ATTEMPT): the delivery, its mirror on the job, the attempt's event
    and ``closing`` (the series' last event, if any)."""
    row = await conn.fetchrow(
        queries.RECORD_ATTEMPT, delivery_id, job_id, worker, number, status.value, status_code, error, delay,
        json.dumps(detail), closing[0] if closing else None, json.dumps(closing[1]) if closing else None)
    assert row is not None
    return Recorded(deleted=bool(row["deleted"]), moved=bool(row["moved"]))


async def record_attempt(conn: AsyncConnection, delivery_id: str, worker: str, *, number: int,
                         status: DeliveryStatus, status_code: int | None, error: str | None,
                         delay: float | None) -> bool:
    """Record attempt ``number`` and hand the row back, due again in ``delay`` seconds
    (None: no more attempts); False when ``worker``'s lease lapsed and another took the
    row. The caller holds the job's row lock (the lock order: the job, then its delivery)."""
    moved = (await conn.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.locked_by == worker,
               Delivery.status == DeliveryStatus.PENDING.value)
        .values(
            attempts=number,
            status=status.value,
            last_status_code=status_code,
            last_error=error,
            next_attempt_at=(func.now() + dt.timedelta(seconds=delay)) if delay is not None else None,
            delivered_at=func.now() if status == DeliveryStatus.DELIVERED else None,
            locked_until=None,
            locked_by=None,
        )
        .returning(Delivery.id)
    )).first()
    return moved is not None


async def mirror_on_job(conn: AsyncConnection, job_id: str, status: DeliveryStatus, attempts: int) -> None:
    """The job row shows its latest delivery's state and attempt count."""
    await conn.execute(
        update(Job).where(Job.id == job_id).values(callback_status=status.value, callback_attempts=attempts)
    )


async def forget_urls_if_deleted(conn: AsyncConnection, job_id: str) -> None:
    """A deleted job's callback URLs, once no callback of it is pending any more (the
    erasure kept them for that one); the caller holds the job's lock."""
    await conn.execute(queries.FORGET_CALLBACK_URLS, {"ids": job_id})
