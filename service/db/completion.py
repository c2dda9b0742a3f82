"""The storer's completion in one statement (queries.STORE_COMPLETE): its last output
recorded, the job completed, and what ``jobs.transition`` does after a terminal move (the
status.changed event, the callback's delivery, the wake-ups), in one round trip on the raw
asyncpg connection instead of a transaction of seven statements."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

from service.db import queries
from service.db.jobs import new_delivery_id
from service.domain.records import JobRecord
from service.domain.states import CALLBACK_EVENT, JobStatus, allowed_from


@dataclass(frozen=True)
class StoredOutput:
    """An output copied into S3, as the job_outputs row records it."""

    index: int
    key: str
    content_type: str
    size_bytes: int
    sha256: str
    thumbnail_key: str | None
    content_credentials: bool
    event: dict[str, Any]  # the output.stored event's detail


@dataclass(frozen=True)
class Completed:
    deleted: bool  # the job is deleted: nothing was written (the caller deletes what it uploaded)
    moved: bool  # False: the job was no longer ours to complete (lease lost, or not storing)
    queued_delivery: bool = False  # moved, and its callback's delivery is queued
    adopted: str | None = None  # the queued delivery, leased to the ``deliverer`` given (None: not)


async def complete_stored(conn: asyncpg.Connection, job: JobRecord, worker: str, *, output: StoredOutput | None,
                          cost: Decimal, ignored: dict[str, Any] | None, deliverer: str | None = None,
                          lease: float = 0.0) -> Completed:
    """Record ``output`` (None: nothing left to record) and move ``job`` to completed,
    fenced on ``worker``'s lease; ``ignored``: the output.ignored event's detail;
    ``deliverer``: the holder the callback's delivery is leased to for ``lease`` seconds
    (None: it is left to be claimed, and the deliverers are woken)."""
    delivery_id = new_delivery_id()
    target = JobStatus.COMPLETED
    change = {"from": job.status, "to": target.value, "reason": "outputs.stored"}
    o = output
    row = await conn.fetchrow(
        queries.STORE_COMPLETE, job.id, worker,
        o.index if o else None, o.key if o else None, o.content_type if o else None, o.size_bytes if o else None,
        o.sha256 if o else None, o.thumbnail_key if o else None, o.content_credentials if o else None,
        json.dumps(o.event) if o else None, cost, allowed_from(target), json.dumps(change), delivery_id,
        CALLBACK_EVENT[target], json.dumps(ignored) if ignored is not None else None,
        queries.CHANNEL_WORK, queries.CHANNEL_DONE, deliverer, lease)
    assert row is not None
    queued = bool(row["queued_delivery"])
    return Completed(deleted=bool(row["deleted"]), moved=bool(row["moved"]), queued_delivery=queued,
                     adopted=delivery_id if queued and deliverer is not None else None)
