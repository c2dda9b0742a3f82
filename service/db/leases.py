"""The duties' claims on their rows, and the renewal and release of what they hold.

Every claim is one statement made by ``queries.claim`` (``FOR UPDATE SKIP LOCKED`` and a
lease written with the claimer's ``locked_by``), run on an autocommit connection: a
claim is one statement, so it needs no BEGIN/COMMIT round trips. Renewal and release
run one table per transaction, in the lock order (service/db/queries.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import TextClause
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import queries
from service.db.engine import one_statement

# The tables whose leases the runner renews and releases, in the lock order.
LEASED_TABLES = queries.LEASED_TABLES


class Handoff(Protocol):
    """The duties of this process, for a statement that makes work for one of them and
    leases the new row to it in the same statement (APPLY_NEWS, STORE_COMPLETE): the
    row is worked at once, with no claim statement (service/work/runner.py ``Runner``).
    A caller reserves a slot before its statement and then either hands the row over
    or gives the slot back, whatever the statement's fate."""

    lease: float  # seconds, as a claim's

    def reserve(self, duty: str) -> str | None:
        """A free slot of ``duty``, held for the caller: the holder to lease the row to,
        or None (no such duty here, no free slot, or stopping: the row is claimed as usual)."""
        ...

    def adopt(self, duty: str, row_id: str) -> None:
        """Work on ``row_id``, leased to ``duty``'s holder, in the slot reserved for it."""
        ...

    def give_back(self, duty: str) -> None:
        """Free a slot reserved for a row that was not leased to the duty."""
        ...


@dataclass
class Slots:
    """The slots ``handing_over`` reserved: per row of the statement, the holder to lease
    it to (None: no duty of this process takes it, or none had a free slot); ``holders``
    is None without a handoff. The caller sets ``adopted``, per row, what the statement
    leased to that holder (None: nothing) once the statement has answered."""

    holders: list[str | None] | None
    adopted: Sequence[str | None] | None = None


@contextlib.contextmanager
def handing_over(handoff: Handoff | None, duties: Sequence[str | None]) -> Iterator[Slots]:
    """The bracket around a statement that may lease new rows to this process's duties:
    a slot of each row's duty (``duties``, per row; None: no duty) is reserved before the
    statement, and after it each row leased to its slot is adopted and every other slot
    given back. All of them go back when the statement failed (it committed nothing;
    should a commit whose answer was lost have leased a row after all, that lease lapses
    and the row is claimed)."""
    if handoff is None:
        yield Slots(None)
        return
    slots = Slots([handoff.reserve(d) if d is not None else None for d in duties])
    try:
        yield slots
    finally:
        assert slots.holders is not None
        for n, (duty, holder) in enumerate(zip(duties, slots.holders, strict=True)):
            if duty is None or holder is None:
                continue
            adopted = slots.adopted[n] if slots.adopted is not None else None
            if adopted is not None:
                handoff.adopt(duty, adopted)
            else:
                handoff.give_back(duty)


async def _claim(engine: AsyncEngine, statement: TextClause, limit: int, holder: str, lease: float,
                 **params: object) -> list[str]:
    values = {"holder": holder, "lease": lease, "limit": limit}
    async with one_statement(engine) as conn:
        return [r.id for r in await conn.execute(statement, values | params)]


async def claim_jobs(engine: AsyncEngine, statuses: Sequence[str], limit: int, *, holder: str,
                     lease: float) -> list[str]:
    """Up to ``limit`` due jobs in ``statuses`` (the storer's, the reconciler's)."""
    return await _claim(engine, queries.CLAIM_JOBS, limit, holder, lease, statuses=list(statuses))


async def claim_lost_sends(engine: AsyncEngine, limit: int, *, holder: str, lease: float) -> list[str]:
    """Queued jobs whose send began under a worker that died: to be recovered, never sent blindly."""
    return await _claim(engine, queries.CLAIM_LOST_SENDS, limit, holder, lease)


async def claim_expired_starts(engine: AsyncEngine, limit: int, *, holder: str, lease: float) -> list[str]:
    """Queued jobs past their start deadline and not being sent."""
    return await _claim(engine, queries.CLAIM_EXPIRED_STARTS, limit, holder, lease)


async def claim_deliveries(engine: AsyncEngine, limit: int, *, holder: str, lease: float) -> list[str]:
    """Pending deliveries whose next attempt is due."""
    return await _claim(engine, queries.CLAIM_DELIVERIES, limit, holder, lease)


async def claim_erasures(engine: AsyncEngine, limit: int, *, token: str, lease: float) -> list[str]:
    """Up to ``limit`` due erasure rows under one batch's ``token``; returns their job ids."""
    return await _claim(engine, queries.CLAIM_ERASURES, limit, token, lease)


async def renew(engine: AsyncEngine, table: str, held: Sequence[tuple[str, str]], lease: float) -> None:
    """Extend the lease of every (row id, holder) in ``held`` whose row that holder still holds."""
    ids, holders = zip(*sorted(held), strict=True)
    async with one_statement(engine) as conn:
        await conn.execute(queries.RENEW_LEASES[table], {"ids": list(ids), "holders": list(holders), "lease": lease})


async def release(engine: AsyncEngine, table: str, holders: Sequence[str], keep: Sequence[str]) -> None:
    """Hand back every row of ``table`` that ``holders`` hold, except the rows in ``keep``."""
    async with one_statement(engine) as conn:
        await conn.execute(queries.RELEASE_LEASES[table], {"holders": list(holders), "keep": list(keep)})
