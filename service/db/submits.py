"""The submit claim: the provider's account limits (tasks in flight, submits per
minute) and the owners' own limits, enforced across every process on the database,
without a lock that every submit waits on.

Capacity is rows: ``provider_slots`` holds one row per task allowed in flight and
``provider_rate_tokens`` one per submit allowed in any 60 s. A submit takes a free row
of each with ``FOR UPDATE SKIP LOCKED``: claimers in other processes pass over rows
being taken instead of queueing behind them. A slot is free once the job it last held
is no longer in flight (sent and not yet heard to be finished), a token once it was
last used 60 s ago, so nothing on a job's later path has to give them back.

The claim itself (``claim_submits``, revision 0006) is where everything that decides
which job goes next meets: a free slot and token, then the most urgent priority
waiting, then the owners' weighted turn (service/db/fairness.py), skipping paused
owners and owners at their ``max_in_flight``; it sets the job's submit marker in the
same transaction. One statement, one round trip, one index probe per owner per slot.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Literal

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db import queries
from service.db.engine import one_statement
from service.domain.records import JobRecord
from service.domain.states import JobStatus, allowed_from


async def ensure_capacity(conn: AsyncConnection, *, max_in_flight: int, max_per_minute: int) -> int:
    """The slot and token rows the limits need, and a slot for every job already in
    flight without one (queries.ORPHANS_IN_FLIGHT), each bound to a free slot taken as the
    claim takes one; returns how many were adopted. The submitter runs this in its first
    claim, before it sends anything. (Orphans exist only after an upgrade: a statement or
    two each, once per process, is no cost worth a function of its own.)"""
    await conn.execute(queries.ENSURE_SLOTS, {"n": max_in_flight})
    await conn.execute(queries.ENSURE_TOKENS, {"n": max_per_minute})
    await conn.execute(queries.ADOPT_LOCK)
    adopted = 0
    for orphan in (await conn.execute(queries.ORPHANS_IN_FLIGHT, {"n": max_in_flight})).all():
        slot = (await conn.execute(queries.ADOPT_FREE_SLOT, {"n": max_in_flight})).scalar_one()
        if slot is None:
            break
        await conn.execute(queries.BIND_SLOT, {"id": orphan.id, "owner": orphan.owner, "slot": slot})
        adopted += 1
    return adopted


async def claim_submits(
    engine: AsyncEngine, worker: str, *, lease: float, limit: int, max_in_flight: int, max_per_minute: int
) -> list[str]:
    """Up to ``limit`` queued jobs, fairly chosen, each holding a provider slot and a
    rate token, leased to ``worker`` and marked as being sent (one statement: autocommit)."""
    async with one_statement(engine) as conn:
        rows = await conn.execute(queries.CLAIM_SUBMITS, {"worker": worker, "lease": lease, "limit": limit,
                                                          "max_in_flight": max_in_flight,
                                                          "max_per_minute": max_per_minute})
        return [r.id for r in rows]


async def unmark_unsent(engine: AsyncEngine, ids: Collection[str], holder: str) -> None:
    """Hand back queued jobs ``holder``'s claim marked as being sent but never POSTed
    (queries.UNMARK_UNSENT): they return to the queue as fresh jobs."""
    async with one_statement(engine) as conn:
        await conn.execute(queries.UNMARK_UNSENT, {"ids": sorted(ids), "holder": holder})


async def mark_submit_sent(
    conn: AsyncConnection, job_id: str, worker: str, *, max_in_flight: int, max_per_minute: int
) -> Literal["marked", "throttled", "gone"]:
    """For a job already chosen and leased (the reconciler's verified re-send): take a
    slot and a token and mark it as about to be sent; "throttled" when the account's
    limits are reached, "gone" when the job is no longer ours to send."""
    row = (await conn.execute(queries.TAKE_PROVIDER_SLOT, {"id": job_id, "worker": worker,
                                                           "max_in_flight": max_in_flight,
                                                           "max_per_minute": max_per_minute})).one()
    verdict: Literal["marked", "throttled", "gone"] = row.verdict
    return verdict


async def accepted(conn: asyncpg.Connection, job: JobRecord, worker: str, task_id: str,
                   provider_status: str | None, *, reconcile_after: float, deadline: float) -> bool:
    """Move ``job`` to submitted with the task the provider accepted (queries.SUBMIT_ACCEPTED),
    fenced on ``worker``'s lease; False (nothing written) when it could not move."""
    target = JobStatus.SUBMITTED
    change = {"from": job.status, "to": target.value, "reason": "submit.accepted"}
    row = await conn.fetchrow(queries.SUBMIT_ACCEPTED, job.id, worker, task_id, provider_status, reconcile_after,
                              deadline, allowed_from(target), json.dumps(change), queries.CHANNEL_WORK,
                              queries.CHANNEL_JOB)
    return row is not None and bool(row["moved"])
