"""Admission: a submit becomes a queued job, with its owner's budget checked and its
reservation written, and its place in its owner's turn, in one transaction.

The owner's row is locked first, so every submit of one owner passes through here one
at a time: the budget check cannot be raced past (200 concurrent submits never
overshoot), an Idempotency-Key replay finds its first job before any money moves (never
reserved twice), and the owner's jobs take consecutive turns. A submit is one statement
(``admit_job``, revision 0010) committed by the server before it answers, so the row is
held for the server's own work and the commit, not for round trips to this process.
Lock order: the owner's row, then the new job row (which nobody else can hold yet),
then the ledger; jobs that exist already are never locked here.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import dataclass
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db import fairness, ledger, owners, queries
from service.db.engine import raw_statement
from service.db.jobs import new_job_id
from service.domain import schemas
from service.domain.errors import Conflict
from service.domain.records import JobRecord
from service.domain.schemas import PRIORITY_DEFAULT


@dataclass(frozen=True)
class Admission:
    """What an owner's submit brings besides the job itself (contract: Money, Scheduling)."""

    estimate_usd: Decimal = Decimal(0)  # price × images asked for: reserved against the budget
    images: int = 1
    priority: int = 5
    start_timeout_seconds: int | None = None
    provider_max_in_flight: int = 100  # fairness ignores owners at their cap (fairness.py)


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
    traceparent: str | None = None,
) -> tuple[JobRecord, bool]:
    """Insert a queued job; with an Idempotency-Key, return the first job instead.

    ``admit_job`` locks the owner's row, then: an Idempotency-Key replay returns the
    first job before any money moves (never reserved twice); the budget check
    (BudgetExceeded: nothing is written); the job in its owner's turn, its reservation,
    its event and the wake-up of the submitters; the commit. Returns (job row, created).
    Raises Conflict when the key was used with another body. ``traceparent``: the job's
    trace context (its admission span), kept with it.
    """
    adm = admission or Admission()
    month_start, month_end = ledger.month_period(dt.datetime.now(dt.UTC))
    params = (
        # A seed of its own per job: its task is then told apart by input in the provider's
        # list (service/work/reconciler.py), see schemas.with_chosen_seed.
        new_job_id(), owner, model, json.dumps(schemas.with_chosen_seed(input_, secrets.randbelow)),
        json.dumps(metadata), callback_url, idempotency_key, body_hash, adm.priority,
        adm.start_timeout_seconds or None, adm.estimate_usd, adm.images, adm.provider_max_in_flight,
        month_start, month_end, queries.CHANNEL_WORK, traceparent,
    )
    # Autocommit statements on the raw asyncpg connection: no SQLAlchemy execution layer on
    # every submit's path.
    async with raw_statement(engine) as raw:
        verdict = await raw.fetchrow(queries.ADMIT_JOB, *params)
        assert verdict is not None
        if verdict["verdict"] == "budget_exceeded":
            raise ledger.exceeded(verdict["budget"], verdict["spent"], verdict["reserved"], adm.estimate_usd)
        if verdict["verdict"] == "conflict":
            raise Conflict("Idempotency-Key was already used with a different request body", field="Idempotency-Key")
        row = await raw.fetchrow(queries.ADMITTED_JOB, verdict["job_id"])
        assert row is not None
        return JobRecord.from_row(row), verdict["verdict"] == "created"


ANY_SLOT = 2**31 - 1  # count every slot an owner holds (no provider setting here)


async def admit_retries(conn: AsyncConnection, owner: str, ids: list[str]) -> None:
    """Reserve and place the jobs a bulk retry just inserted (``retry_of`` set), in the
    caller's transaction; BudgetExceeded rolls the whole batch back."""
    if not ids:
        return
    limits = await owners.lock(conn, owner)
    rows = (await conn.execute(queries.RETRY_ESTIMATES, {"ids": ids, "owner": owner})).all()
    now = dt.datetime.now(dt.UTC)
    total = sum((Decimal(r.amount) for r in rows), Decimal(0))
    if limits.monthly_budget_usd is not None:
        await ledger.check(conn, owner, limits.monthly_budget_usd, total, now)
    for row in rows:
        job = SimpleNamespace(id=row.id, owner=owner, model=row.model, created_at=row.created_at)
        await ledger.reserve(conn, job, None, Decimal(row.amount), int(row.images), now)
    first = await fairness.next_tag(conn, owner, limits.weight, PRIORITY_DEFAULT, ANY_SLOT)
    await conn.execute(queries.RETRY_TAGS, {"base": first - 1.0 / limits.weight, "weight": float(limits.weight),
                                            "ids": [r.id for r in rows]})
