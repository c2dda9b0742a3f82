"""What a ``/metrics`` scrape reads from the database, in one call: jobs by status and
model, the work due per duty, and per owner the month's money, the budget and the
jobs waiting.

service/observability/metrics.py shows these figures and never reads the database
itself; the route passes ``snapshot`` to service/observability/figures_cache.py, which
calls it at most once every METRICS_CACHE_SECONDS.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db import ledger, owners, queries
from service.observability.metrics import DatabaseSnapshot
from service.observability.owner_metrics import OwnerSnapshot


async def snapshot(engine: AsyncEngine, per_owner: bool = False) -> DatabaseSnapshot:
    """Every figure of one scrape: the work's (one transaction: the fold of the job
    counts writes), then with ``per_owner`` (METRICS_PER_OWNER) the owners' (another
    connection, reading only; a statement per owner)."""
    snap = DatabaseSnapshot()
    async with engine.begin() as conn:
        await _work(conn, snap)
    if per_owner:
        async with engine.connect() as conn:
            snap.owners = await _owners(conn, dt.datetime.now(dt.UTC))
    return snap


async def _work(conn: AsyncConnection, snap: DatabaseSnapshot) -> None:
    await conn.execute(queries.FOLD_COUNTS)
    for row in await conn.execute(queries.JOB_COUNTS):
        snap.jobs[(row.status, row.model)] = int(row.n)
    for statement in (queries.JOB_WORK, queries.DELIVERY_WORK):
        for row in await conn.execute(statement):
            snap.due[row.duty] = int(row.due)
            snap.leased[row.duty] = int(row.leased)
            snap.oldest[row.duty] = float(row.oldest or 0.0)


async def _owners(conn: AsyncConnection, now: dt.datetime) -> OwnerSnapshot:
    snap = OwnerSnapshot()
    for name, budget in (await owners.budgets(conn)).items():
        money = await ledger.figures(conn, name, None, now)
        snap.spent[name] = float(money.spent)
        snap.reserved[name] = float(money.reserved)
        if budget is not None:
            snap.budget[name] = float(budget)
    for row in await conn.execute(queries.WAITING):
        snap.waiting[(row.owner, int(row.priority))] = int(row.n)
    return snap
