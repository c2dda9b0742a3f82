"""The history page's spend overview: this month's spend against the budget (a bar) and
the jobs and cost of each of the last 30 UTC days (a small chart), drawn on the server as
SVG (no script, no chart library) from exactly the figures ``GET /v1/owner`` and
``GET /v1/usage?group_by=day`` answer: the same functions compute them
(service/db/owners.py ``view``, service/api/owner_account.py ``usage_answer``).

Every bar carries its figures as data attributes (``data-day``, ``data-jobs``,
``data-cost-usd``; ``data-spent-usd`` … on the budget bar), which the browser test
compares with the API's answers.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

DAYS = 30
# The chart's drawing box (SVG user units; the page scales it to its width).
WIDTH, COST_HEIGHT, JOBS_HEIGHT, GAP = 600.0, 90.0, 50.0, 14.0
SLOT = WIDTH / DAYS
BAR = SLOT * 0.7


def window(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The last DAYS UTC days, today included: [start of the first, start of tomorrow)."""
    today = now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - dt.timedelta(days=DAYS - 1), today + dt.timedelta(days=1)


@dataclass(frozen=True)
class DayBar:
    day: str  # YYYY-MM-DD, as /v1/usage keys it
    jobs: int
    cost_usd: str  # as /v1/usage shows it
    x: float
    cost_height: float
    jobs_height: float

    @property
    def cost_y(self) -> float:
        return COST_HEIGHT - self.cost_height

    @property
    def jobs_y(self) -> float:
        return COST_HEIGHT + GAP + JOBS_HEIGHT - self.jobs_height


def _height(value: Decimal, most: Decimal, room: float) -> float:
    if most <= 0 or value <= 0:
        return 0.0
    return round(max(1.0, float(value / most) * room), 2)  # a day with any jobs stays visible


def day_bars(usage: dict[str, Any], start: dt.datetime) -> list[DayBar]:
    """One bar per day of the window (days without completed jobs at zero), scaled to
    the busiest day of each series."""
    by_day = {row["key"]: row for row in usage["data"]}
    days = [(start + dt.timedelta(days=i)).strftime("%Y-%m-%d") for i in range(DAYS)]
    rows = [by_day.get(day, {"jobs": 0, "cost_usd": "0.00"}) for day in days]
    most_cost = max((Decimal(r["cost_usd"]) for r in rows), default=Decimal(0))
    most_jobs = Decimal(max((int(r["jobs"]) for r in rows), default=0))
    return [
        DayBar(day=day, jobs=int(row["jobs"]), cost_usd=str(row["cost_usd"]),
               x=round(i * SLOT + (SLOT - BAR) / 2, 2),
               cost_height=_height(Decimal(row["cost_usd"]), most_cost, COST_HEIGHT),
               jobs_height=_height(Decimal(int(row["jobs"])), most_jobs, JOBS_HEIGHT))
        for i, (day, row) in enumerate(zip(days, rows, strict=True))
    ]


def chart(usage: dict[str, Any], start: dt.datetime) -> dict[str, Any]:
    """What the template draws: the bars, the scale's top figures, the axis' dates."""
    bars = day_bars(usage, start)
    return {
        "bars": bars, "bar_width": round(BAR, 2), "width": WIDTH, "cost_height": COST_HEIGHT,
        "jobs_top": COST_HEIGHT + GAP, "height": COST_HEIGHT + GAP + JOBS_HEIGHT,
        "most_cost": max((Decimal(b.cost_usd) for b in bars), default=Decimal(0)),
        "most_jobs": max((b.jobs for b in bars), default=0),
        "first": bars[0].day, "last": bars[-1].day, "total": usage["total"],
    }


def budget_bar(budget: dict[str, Any]) -> dict[str, Any]:
    """The month's spend and reservations as shares of the budget (percent of the bar);
    without a budget there is nothing to fill, only the figures."""
    limit = Decimal(budget["monthly_usd"]) if budget["monthly_usd"] is not None else None
    spent, reserved = Decimal(budget["spent_usd"]), Decimal(budget["reserved_usd"])
    if not limit:
        return {**budget, "spent_pct": None, "reserved_pct": None, "over": False}
    spent_pct = min(100.0, float(spent / limit * 100))
    reserved_pct = min(100.0 - spent_pct, float(reserved / limit * 100))
    return {**budget, "spent_pct": round(spent_pct, 2), "reserved_pct": round(reserved_pct, 2),
            "over": spent + reserved >= limit}
