"""Admission: a submit becomes a queued job, with its owner's budget checked and its
reservation written, and its place in its owner's turn, in one transaction.

The owner's row is locked first (owners.lock), so every submit of one owner passes
through here one at a time: the budget check cannot be raced past (200 concurrent
submits never overshoot), an Idempotency-Key replay finds its first job before any
money moves (never reserved twice), and the owner's jobs take consecutive turns.
Lock order: the owner's row, then the new job row (which nobody else can hold yet),
then the ledger; jobs that exist already are never locked here.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Row, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db import fairness, ledger, owners, queries
from service.db.jobs import add_event, job_record, jobs_t, new_job_id, notify
from service.domain.errors import Conflict
from service.domain.records import JobRecord
from service.domain.schemas import PRIORITY_DEFAULT
from service.domain.states import JobStatus


@dataclass(frozen=True)
class Admission:
    """What a tenant's submit brings besides the job itself (contract: Money, Scheduling)."""

    estimate_usd: Decimal = Decimal(0)  # price × images asked for: reserved against the budget
    images: int = 1
    priority: int = 5
    start_timeout_seconds: int | None = None
    provider_max_in_flight: int = 100  # fairness ignores owners at their cap (fairness.py)


async def _replayed(conn: AsyncConnection, owner: str, key: str, body_hash: str | None) -> Row[Any] | None:
    """The job first created with this Idempotency-Key, or None; Conflict when the key
    came with another body. The caller holds the owner's row lock, so no submit with the
    same key can be between this lookup and the insert."""
    existing = (
        await conn.execute(select(jobs_t).where(jobs_t.c.owner == owner, jobs_t.c.idempotency_key == key))
    ).first()
    if existing is not None and existing.request_hash != body_hash:
        raise Conflict("Idempotency-Key was already used with a different request body", field="Idempotency-Key")
    return existing


async def create_job(
    engine: AsyncEngine,
    *,
    owner: str,
    model: str,
    input_: dict[str, Any],
    metadata: dict[str, str],
    callback_url: str | None,
    idempotency_key: str | None,
    body_hash: str | None,
    admission: Admission | None = None,
) -> tuple[JobRecord, bool]:
    """Insert a queued job; with an Idempotency-Key, return the first job instead.

    One transaction with the owner's row locked (owners.lock): the idempotency lookup,
    the budget check and the reservation (ledger.reserve, BudgetExceeded rolls it all
    back), the job's place in its owner's turn (fairness.next_tag) and the insert.
    A replay finds the first job before any of that, so it is never reserved twice.
    Returns (job row, created). Raises Conflict when the key was used with another body.
    """
    adm = admission or Admission()
    job_id = new_job_id()
    async with engine.begin() as conn:
        tenant = await owners.lock(conn, owner)
        if idempotency_key is not None and (first := await _replayed(conn, owner, idempotency_key, body_hash)):
            return job_record(first), False
        vtag = await fairness.next_tag(conn, owner, tenant.weight, adm.priority, adm.provider_max_in_flight)
        start_deadline = (
            func.now() + dt.timedelta(seconds=adm.start_timeout_seconds) if adm.start_timeout_seconds else None
        )
        stmt = insert(jobs_t).values(
            id=job_id, owner=owner, model=model, input=input_, metadata=metadata, callback_url=callback_url,
            idempotency_key=idempotency_key, request_hash=body_hash, status=JobStatus.QUEUED.value,
            run_after=func.now(), priority=adm.priority, vtag=vtag, start_timeout_seconds=adm.start_timeout_seconds,
            start_deadline_at=start_deadline,
        )
        row = (await conn.execute(stmt.returning(jobs_t))).one()
        await ledger.reserve(conn, row, tenant.monthly_budget_usd, adm.estimate_usd, adm.images,
                             dt.datetime.now(dt.UTC))
        await add_event(conn, job_id, "job.created", {"model": model})
        await notify(conn, queries.CHANNEL_WORK, "submit")
        return job_record(row), True


ANY_SLOT = 2**31 - 1  # count every slot an owner holds (no provider setting here)


async def admit_retries(conn: AsyncConnection, owner: str, ids: list[str]) -> None:
    """Reserve and place the jobs a bulk retry just inserted (``retry_of`` set), in the
    caller's transaction; BudgetExceeded rolls the whole batch back."""
    if not ids:
        return
    tenant = await owners.lock(conn, owner)
    rows = (await conn.execute(queries.RETRY_ESTIMATES, {"ids": ids, "owner": owner})).all()
    now = dt.datetime.now(dt.UTC)
    total = sum((Decimal(r.amount) for r in rows), Decimal(0))
    if tenant.monthly_budget_usd is not None:
        await ledger.check(conn, owner, tenant.monthly_budget_usd, total, now)
    for row in rows:
        job = SimpleNamespace(id=row.id, owner=owner, model=row.model, created_at=row.created_at)
        await ledger.reserve(conn, job, None, Decimal(row.amount), int(row.images), now)
    first = await fairness.next_tag(conn, owner, tenant.weight, PRIORITY_DEFAULT, ANY_SLOT)
    await conn.execute(queries.RETRY_TAGS, {"base": first - 1.0 / tenant.weight, "weight": float(tenant.weight),
                                    "ids": [r.id for r in rows]})
