"""Owners: budget and limits, created by ``keys create`` or ``owners set``.

The owner's row is also the lock that makes admission one step per owner: a submit
locks it (``lock``) while it checks the budget, takes its place in turn and reserves.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db import callback_secrets, ledger
from service.db.models import Owner, table
from service.domain.errors import FieldError, NotFound, ValidationFailed
from service.domain.serialize import iso

owners_t = table(Owner)

MAX_OWNER_NAME = 200
MAX_BUDGET_USD = Decimal(1_000_000_000)
MAX_IN_FLIGHT = 100_000
MAX_WEIGHT = 1000
MAX_RETENTION_DAYS = 36_500
UNSET: Any = object()  # "leave as it is", distinct from None ("no limit")


def check_name(name: str) -> str:
    if not 1 <= len(name) <= MAX_OWNER_NAME or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ValidationFailed([FieldError("owner", f"must be 1 to {MAX_OWNER_NAME} printable characters")])
    return name


@dataclass
class OwnerChanges:
    """What ``owners set`` changes; UNSET fields stay as they are."""

    monthly_budget_usd: Any = UNSET
    max_in_flight: Any = UNSET
    weight: Any = UNSET
    paused: Any = UNSET
    retention_days: Any = UNSET

    def values(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not UNSET}


def _bounded_int(loc: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed([FieldError(loc, f"must be an integer from {low} to {high}")]) from None
    if not low <= value <= high:
        raise ValidationFailed([FieldError(loc, f"must be an integer from {low} to {high}")])
    return value


def parse_budget(raw: str) -> Decimal | None:
    """``none`` or a non-negative amount of USD with at most 4 decimals."""
    if raw.strip().lower() == "none":
        return None
    rule = f"must be 'none' or an amount of USD from 0 to {MAX_BUDGET_USD} with at most 4 decimals"
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        raise ValidationFailed([FieldError("monthly_budget_usd", rule)]) from None
    if not value.is_finite() or not 0 <= value <= MAX_BUDGET_USD or value != value.quantize(ledger.CENT):
        raise ValidationFailed([FieldError("monthly_budget_usd", rule)])
    return value


def parse_optional_int(loc: str, raw: str, low: int, high: int) -> int | None:
    if raw.strip().lower() == "none":
        return None
    return _bounded_int(loc, raw.strip(), low, high)


def parse_weight(raw: str) -> int:
    return _bounded_int("weight", raw.strip(), 1, MAX_WEIGHT)


async def ensure(conn: AsyncConnection, name: str) -> None:
    await conn.execute(pg_insert(owners_t).values(name=check_name(name)).on_conflict_do_nothing())


async def lock(conn: AsyncConnection, name: str) -> Row[Any]:
    """The owner's row, locked until the caller's transaction ends (created if a key
    made before owners existed names it)."""
    stmt = select(owners_t).where(owners_t.c.name == name).with_for_update()
    row = (await conn.execute(stmt)).first()
    if row is None:
        await ensure(conn, name)
        row = (await conn.execute(stmt)).one()
    return row


async def set_owner(conn: AsyncConnection, name: str, changes: OwnerChanges) -> None:
    await ensure(conn, name)
    values = changes.values()
    if values:
        await conn.execute(update(owners_t).where(owners_t.c.name == name).values(**values, updated_at=func.now()))


async def view(conn: AsyncConnection, name: str, now: dt.datetime | None = None) -> dict[str, Any]:
    """The owner as GET /v1/owner shows it; its money is summed from the ledger."""
    row = (await conn.execute(select(owners_t).where(owners_t.c.name == name))).first()
    if row is None:
        raise NotFound(f"no owner named {name!r}")
    money = await ledger.figures(conn, name, row.monthly_budget_usd, now or dt.datetime.now(dt.UTC))
    return {
        "owner": row.name,
        "paused": row.paused,
        "budget": {
            "monthly_usd": ledger.usd(row.monthly_budget_usd),
            "period_start": iso(money.period_start),
            "period_end": iso(money.period_end),
            "spent_usd": ledger.usd(money.spent),
            "reserved_usd": ledger.usd(money.reserved),
            "remaining_usd": ledger.usd(money.remaining),
        },
        "limits": {"max_in_flight": row.max_in_flight, "weight": row.weight},
        "retention_days": row.retention_days,
        "callback_secret": {"service_wide": await callback_secrets.shares_service_wide(conn, name)},
    }


async def names(conn: AsyncConnection) -> list[str]:
    return [r.name for r in await conn.execute(select(owners_t.c.name).order_by(owners_t.c.name))]


async def budgets(conn: AsyncConnection) -> dict[str, Decimal | None]:
    """Every owner's monthly budget (None: no budget), by name."""
    rows = await conn.execute(select(owners_t.c.name, owners_t.c.monthly_budget_usd).order_by(owners_t.c.name))
    return {r.name: r.monthly_budget_usd for r in rows}
