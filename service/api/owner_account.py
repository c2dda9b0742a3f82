"""The owner's own view of itself: ``GET /v1/owner`` (budget, limits) and ``GET /v1/usage``
(spend by day or model). Both are sums of the ledger (service/db/ledger.py), scoped to
the caller's owner in the query."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated, Any

from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from typing_extensions import TypedDict

from service.api.plumbing.auth import authenticate, resources
from service.api.plumbing.openapi_doc import BEARER, answer, documented, errors
from service.db import ledger, owners
from service.domain.errors import FieldError, ValidationFailed

Money = Annotated[str, Field(description='Decimal string of USD, e.g. "12.345".')]


class OwnerBudget(TypedDict):
    monthly_usd: Money | None
    period_start: str
    period_end: str
    spent_usd: Money
    reserved_usd: Money
    remaining_usd: Money | None


class OwnerLimits(TypedDict):
    max_in_flight: int | None
    weight: int


class OwnerCallbackSecret(TypedDict):
    service_wide: Annotated[bool, Field(description=(
        "True while this owner's callbacks are signed with the service-wide secret of the owners from before "
        "per-owner secrets (each of them can read it, so each could sign for the others): rotate the callback "
        "secret to end it."))]


class OwnerView(TypedDict):
    """The caller's owner: its budget this UTC calendar month (sums of the ledger) and limits."""

    owner: str
    paused: bool
    budget: OwnerBudget
    limits: OwnerLimits
    retention_days: int | None
    callback_secret: OwnerCallbackSecret


class UsageRow(TypedDict):
    key: Annotated[str, Field(description="A UTC day (YYYY-MM-DD) or a model.")]
    jobs: int
    images: int
    cost_usd: Money


class UsageTotal(TypedDict):
    jobs: int
    images: int
    cost_usd: Money


class Usage(TypedDict):
    """Completed jobs by completed_at in [from, to); total equals the sum of their cost_usd."""

    data: list[UsageRow]
    total: UsageTotal


USAGE_PARAMS = ("from", "to", "group_by")
MAX_USAGE_DAYS = 366
MAX_PARAM_LENGTH = 64


def _time(name: str, value: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(value) if len(value) <= MAX_PARAM_LENGTH else None
        if moment is not None:
            # Converting here, where OverflowError is caught (0001-01-01T00:00:00+01:00).
            return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        pass
    raise ValidationFailed([FieldError(name, "must be an ISO 8601 date-time, e.g. 2026-12-01T00:00:00Z")])


def parse_usage(params: Sequence[tuple[str, str]], now: dt.datetime) -> tuple[dt.datetime, dt.datetime, str]:
    """``from``/``to`` (default: the current UTC month) and ``group_by`` (day|model);
    anything else, repeated, reversed or longer than MAX_USAGE_DAYS is a 422."""
    seen: dict[str, str] = {}
    fields: list[FieldError] = []
    for name, value in params:
        if name not in USAGE_PARAMS:
            fields.append(FieldError(name[:MAX_PARAM_LENGTH], f"unknown parameter; use {', '.join(USAGE_PARAMS)}"))
        elif name in seen:
            fields.append(FieldError(name, "must be given at most once"))
        else:
            seen[name] = value
    if fields:
        raise ValidationFailed(fields)
    start, end = ledger.month_period(now)
    if "from" in seen:
        start = _time("from", seen["from"])
    if "to" in seen:
        end = _time("to", seen["to"])
    group_by = seen.get("group_by", "day")
    if group_by not in ledger.USAGE_BY:
        raise ValidationFailed([FieldError("group_by", "must be day or model")])
    if end <= start:
        raise ValidationFailed([FieldError("to", "must be later than from")])
    if end - start > dt.timedelta(days=MAX_USAGE_DAYS):
        raise ValidationFailed([FieldError("to", f"the range may span at most {MAX_USAGE_DAYS} days")])
    return start, end, group_by


@documented(operationId="getOwner", tags=["jobs"], summary="The caller's owner: budget and limits", security=BEARER,
            responses={"200": answer(OwnerView, "The owner."), **errors(401)})
async def owner_view(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    async with resources(request).engine.connect() as conn:
        return JSONResponse(await owners.view(conn, owner))


@documented(
    operationId="getUsage", tags=["jobs"], summary="Spend of completed jobs, by day or model", security=BEARER,
    parameters=[
        {"name": "from", "in": "query", "required": False, "schema": {"type": "string", "format": "date-time"},
         "description": "Start (inclusive) of completed_at; default: the current UTC month's start."},
        {"name": "to", "in": "query", "required": False, "schema": {"type": "string", "format": "date-time"},
         "description": f"End (exclusive); default: the next month's start. At most {MAX_USAGE_DAYS} days after from."},
        {"name": "group_by", "in": "query", "required": False,
         "schema": {"type": "string", "enum": ["day", "model"], "default": "day"}},
    ],
    responses={"200": answer(Usage, "Usage rows and their total."), **errors(401, 422)},
)
async def usage(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    start, end, group_by = parse_usage(list(request.query_params.multi_items()), dt.datetime.now(dt.UTC))
    async with resources(request).engine.connect() as conn:
        return JSONResponse(await usage_answer(conn, owner, start, end, group_by))


async def usage_answer(conn: AsyncConnection, owner: str, start: dt.datetime, end: dt.datetime,
                       group_by: str) -> dict[str, Any]:
    """/v1/usage's answer (the history page's chart draws the same figures)."""
    rows = await ledger.usage(conn, owner, start, end, group_by)
    data: list[dict[str, Any]] = [
        {"key": r.key, "jobs": int(r.jobs), "images": int(r.images), "cost_usd": ledger.usd(Decimal(r.cost))}
        for r in rows
    ]
    total = {
        "jobs": sum(int(r.jobs) for r in rows),
        "images": sum(int(r.images) for r in rows),
        "cost_usd": ledger.usd(sum((Decimal(r.cost) for r in rows), Decimal(0))),
    }
    return {"object": "usage", "from": start.isoformat().replace("+00:00", "Z"),
            "to": end.isoformat().replace("+00:00", "Z"), "group_by": group_by, "data": data, "total": total}


routes = [
    Route("/v1/owner", owner_view, methods=["GET"]),
    Route("/v1/usage", usage, methods=["GET"]),
]
