"""Money: an append-only ledger of reservations, spends and releases, and every figure
of money as a sum of it.

A job's estimate (price × images asked for) is **reserved** in the transaction that
admits it, while the owner's row is locked, so concurrent submits never overshoot a
budget. When the job ends, the trigger ``jobs_ledger`` (revision 0006) writes, in the
very UPDATE that ends it, the **spend** (completed: the job's cost_usd) and the
**release** of the reservation. So every path that ends a job settles its money in the
same transaction, whoever wrote that path. ``release_reservation`` is the one statement
for "release this job's reservation" (idempotent: one release per job, by a unique key).

Figures are never kept beside the ledger: spent = the period's spend rows; reserved =
reserve − release. Reserved is summed only from the owner's oldest active job on
(``reserved_at`` is the job's created_at): every older reservation belongs to a job that
ended, whose release carries the same ``reserved_at``, so the older rows sum to zero and
the read stays as short as the owner's active backlog.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain.errors import BudgetExceeded

CENT = Decimal("0.0001")

# Why: one statement, so one snapshot: a job's spend and release (one transaction) are
# seen together or not at all. The horizon is four index probes of (owner, status,
# created_at), never a read of the owner's history.
FIGURES = text(
    """
    WITH horizon AS (
        SELECT LEAST(
            (SELECT min(created_at) FROM jobs WHERE owner = :owner AND status = 'queued'),
            (SELECT min(created_at) FROM jobs WHERE owner = :owner AND status = 'submitted'),
            (SELECT min(created_at) FROM jobs WHERE owner = :owner AND status = 'processing'),
            (SELECT min(created_at) FROM jobs WHERE owner = :owner AND status = 'storing')) AS h
    )
    SELECT
        coalesce((SELECT sum(amount_usd) FROM ledger
                  WHERE owner = :owner AND kind = 'spend' AND at >= :start AND at < :end), 0) AS spent,
        coalesce((SELECT sum(CASE kind WHEN 'reserve' THEN amount_usd ELSE -amount_usd END)
                  FROM ledger, horizon
                  WHERE owner = :owner AND kind IN ('reserve', 'release') AND reserved_at >= horizon.h), 0)
          AS reserved
    """
)

RESERVE = text(
    """
    INSERT INTO ledger (owner, job_id, kind, amount_usd, images, model, reserved_at)
    VALUES (:owner, :job_id, 'reserve', :amount, :images, :model, :reserved_at)
    ON CONFLICT (job_id, kind) DO NOTHING
    """
)

# Why: the same function the end-of-job trigger calls; a second call changes nothing.
RELEASE = text("SELECT ledger_release(:job_id)")

USAGE_BY = {
    "day": "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "model": "model",
}


def usage_query(group_by: str) -> Any:
    """Completed jobs' spend in [from, to), grouped; read from the spend index alone."""
    key = USAGE_BY[group_by]  # a fixed expression chosen from a closed set, never user text
    return text(
        f"""
        SELECT {key} AS key, count(*) AS jobs, sum(images) AS images, sum(amount_usd) AS cost
        FROM ledger
        WHERE owner = :owner AND kind = 'spend' AND at >= :start AND at < :end
        GROUP BY 1 ORDER BY 1
        """
    )


def month_period(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The UTC calendar month holding ``now``: [first instant, first instant of the next)."""
    now = now.astimezone(dt.UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


def usd(value: Decimal | None) -> str | None:
    """A money amount as the API shows it: a decimal string without trailing zeros
    beyond cents ("12.345", "0.06", "100.00")."""
    if value is None:
        return None
    text_value = format(value.quantize(CENT).normalize(), "f")
    whole, _, frac = text_value.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


@dataclass(frozen=True)
class Figures:
    budget: Decimal | None
    spent: Decimal
    reserved: Decimal
    period_start: dt.datetime
    period_end: dt.datetime

    @property
    def remaining(self) -> Decimal | None:
        if self.budget is None:
            return None
        return self.budget - self.spent - self.reserved


async def figures(conn: AsyncConnection, owner: str, budget: Decimal | None, now: dt.datetime) -> Figures:
    start, end = month_period(now)
    row = (await conn.execute(FIGURES, {"owner": owner, "start": start, "end": end})).one()
    return Figures(budget, Decimal(row.spent), Decimal(row.reserved), start, end)


async def reserve(
    conn: AsyncConnection, job: Any, budget: Decimal | None, estimate: Decimal, images: int, now: dt.datetime
) -> None:
    """Check ``estimate`` against the owner's budget and reserve it for ``job``, in the
    caller's transaction, which holds the owner's row lock (owners.lock): the check and
    the reservation are one step for every submit of that owner. Raises BudgetExceeded
    (the caller's transaction then rolls the job back)."""
    if budget is not None:
        await check(conn, job.owner, budget, estimate, now)
    await conn.execute(RESERVE, {"owner": job.owner, "job_id": job.id, "amount": estimate, "images": images,
                                 "model": job.model, "reserved_at": job.created_at})


async def check(conn: AsyncConnection, owner: str, budget: Decimal, estimate: Decimal, now: dt.datetime) -> None:
    """BudgetExceeded unless ``estimate`` fits in what the budget has left."""
    current = await figures(conn, owner, budget, now)
    remaining = current.remaining
    assert remaining is not None
    if estimate > remaining:
        left = usd(max(remaining, Decimal(0)))
        raise BudgetExceeded(
            f"the monthly budget of ${usd(budget)} has ${left} left (spent ${usd(current.spent)}, "
            f"reserved ${usd(current.reserved)}); this needs ${usd(estimate)}",
            remaining_usd=left,
        )


async def release_reservation(conn: AsyncConnection, job_id: str) -> None:
    """Release ``job_id``'s reservation now (idempotent). Ending a job through any
    UPDATE of its status already does this; call it for a job that leaves by another
    road (e.g. a queued job erased without a status change)."""
    await conn.execute(RELEASE, {"job_id": job_id})
