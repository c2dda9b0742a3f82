"""Money: an append-only ledger of reservations, spends and releases, and every figure
of money as a sum of it.

A job's estimate (price × images asked for) is **reserved** in the transaction that
admits it, while the owner's row is locked, so concurrent submits never overshoot a
budget. When the job ends, the trigger ``jobs_ledger`` (revision 0006) writes, in the
very UPDATE that ends it, the **spend** (completed: the job's cost_usd) and the
**release** of the reservation. So every path that ends a job settles its money in the
same transaction, whoever wrote that path. ``release_reservation`` is the one statement
for "release this job's reservation" (idempotent: one release per job, by a unique key).

A job canceled or timed out after its task was sent upstream may still be made, and
billed, by the provider: the trigger then keeps the reservation in ``ledger_holds``
instead of releasing it. The task's late completion spends the images made (the job's
cost_usd; its status stays), its failure or silence until the deadline releases it
(``ledger_settle_held``: service/db/news.py for late news, service/work/holds.py for
the deadline).

Figures are never kept beside the ledger: spent = the period's spend rows; reserved =
reserve − release. Reserved is summed only from the owner's oldest active job or held
reservation on (``reserved_at`` is the job's created_at): every older reservation
belongs to a job that ended and was settled, whose release carries the same
``reserved_at``, so the older rows sum to zero and the read stays as short as the
owner's active backlog.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db import queries
from service.db.jobs import id_list
from service.domain.errors import BudgetExceeded

CENT = Decimal("0.0001")


# The groupings of /v1/usage, each its own statement (queries.USAGE).
USAGE_BY = tuple(queries.USAGE)


async def usage(conn: AsyncConnection, owner: str, start: dt.datetime, end: dt.datetime,
                group_by: str) -> Sequence[Row[Any]]:
    """The owner's completed jobs' spend in [start, end), grouped by ``group_by`` (one of
    USAGE_BY): rows of (key, jobs, images, cost)."""
    return (await conn.execute(queries.USAGE[group_by], {"owner": owner, "start": start, "end": end})).all()


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
    row = (await conn.execute(queries.BUDGET_FIGURES, {"owner": owner, "start": start, "end": end})).one()
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
    await conn.execute(queries.RESERVE, {"owner": job.owner, "job_id": job.id, "amount": estimate, "images": images,
                                 "model": job.model, "reserved_at": job.created_at})


async def check(conn: AsyncConnection, owner: str, budget: Decimal, estimate: Decimal, now: dt.datetime) -> None:
    """BudgetExceeded unless ``estimate`` fits in what the budget has left."""
    current = await figures(conn, owner, budget, now)
    if estimate > budget - current.spent - current.reserved:
        raise exceeded(budget, current.spent, current.reserved, estimate)


def exceeded(budget: Decimal, spent: Decimal, reserved: Decimal, estimate: Decimal) -> BudgetExceeded:
    """The 402 for an estimate that does not fit: what the budget has left and why."""
    left = usd(max(budget - spent - reserved, Decimal(0)))
    return BudgetExceeded(
        f"the monthly budget of ${usd(budget)} has ${left} left (spent ${usd(spent)}, "
        f"reserved ${usd(reserved)}); this needs ${usd(estimate)}",
        remaining_usd=left,
    )


async def release_reservation(conn: AsyncConnection, job_id: str) -> None:
    """Release ``job_id``'s reservation now (idempotent). Ending a job through any
    UPDATE of its status already does this; call it for a job that leaves by another
    road (e.g. a queued job erased without a status change)."""
    await conn.execute(queries.RELEASE_RESERVATION, {"job_id": job_id})


async def expired_holds(engine: AsyncEngine, deadline_seconds: float, limit: int) -> list[tuple[str, str | None]]:
    """(job id, task id) of held reservations past their task's deadline."""
    async with engine.connect() as conn:
        rows = await conn.execute(queries.EXPIRED_HOLDS, {"deadline": deadline_seconds, "limit": limit})
        return [(r.job_id, r.task_id) for r in rows]


async def release_held(engine: AsyncEngine, job_ids: list[str]) -> None:
    """End these holds with nothing spent (idempotent: a hold settled meanwhile stays so)."""
    if job_ids:
        async with engine.begin() as conn:
            await conn.execute(queries.RELEASE_HELD, {"ids": id_list(job_ids)})
