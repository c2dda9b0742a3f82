"""The history page's spend overview, drawn from /v1/usage's and /v1/owner's figures
(service/web/spend_overview.py): the window, the bars and their scale, the budget bar."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest

from service.web.spend_overview import COST_HEIGHT, DAYS, JOBS_HEIGHT, budget_bar, chart, day_bars, window

NOW = dt.datetime(2026, 12, 7, 15, 30, tzinfo=dt.UTC)


def usage(*rows: tuple[str, int, str]) -> dict[str, Any]:
    return {"data": [{"key": day, "jobs": jobs, "images": jobs, "cost_usd": cost} for day, jobs, cost in rows],
            "total": {"jobs": sum(r[1] for r in rows), "images": sum(r[1] for r in rows), "cost_usd": "?"}}


def test_the_window_is_the_last_30_utc_days_today_included() -> None:
    start, end = window(NOW.astimezone(dt.timezone(dt.timedelta(hours=-8))))
    assert (start, end) == (dt.datetime(2026, 11, 8, tzinfo=dt.UTC), dt.datetime(2026, 12, 8, tzinfo=dt.UTC))
    assert (end - start).days == DAYS


def test_every_day_has_a_bar_and_the_busiest_fills_its_panel() -> None:
    start, _ = window(NOW)
    bars = day_bars(usage(("2026-11-08", 1, "0.015"), ("2026-12-01", 4, "0.06"), ("2026-12-07", 2, "0.03")), start)
    assert [b.day for b in bars][:2] == ["2026-11-08", "2026-11-09"] and bars[-1].day == "2026-12-07"
    assert len(bars) == DAYS and [b.jobs for b in bars].count(0) == DAYS - 3
    busiest = next(b for b in bars if b.day == "2026-12-01")
    assert (busiest.cost_height, busiest.jobs_height, busiest.cost_y) == (COST_HEIGHT, JOBS_HEIGHT, 0.0)
    assert bars[-1].cost_height == COST_HEIGHT / 2 and bars[-1].cost_usd == "0.03"
    assert all(b.cost_height == b.jobs_height == 0 for b in bars if b.jobs == 0)
    assert all(b.x < later.x for b, later in itertools.pairwise(bars))


def test_a_small_day_beside_a_big_one_stays_visible() -> None:
    start, _ = window(NOW)
    bars = day_bars(usage(("2026-12-01", 1000, "15.00"), ("2026-12-02", 1, "0.015")), start)
    small = next(b for b in bars if b.day == "2026-12-02")
    assert small.cost_height >= 1.0 and small.jobs_height >= 1.0


def test_no_jobs_at_all_draws_an_empty_chart() -> None:
    start, _ = window(NOW)
    drawn = chart(usage(), start)
    assert drawn["most_jobs"] == 0 and all(b.cost_height == 0 for b in drawn["bars"])


@pytest.mark.parametrize(("budget", "spent", "reserved", "pct", "over"), [
    ("10.00", "2.50", "1.00", (25.0, 10.0), False),
    ("10.00", "9.50", "1.00", (95.0, 5.0), True),  # reservations are drawn up to the end, never past it
    ("1.00", "1.50", "0.00", (100.0, 0.0), True),
    (None, "2.00", "0.50", (None, None), False),  # no budget: the figures, no bar
    ("0.00", "0.00", "0.00", (None, None), False),
])
def test_the_budget_bar_shows_spent_and_reserved_as_shares_of_the_budget(
    budget: str | None, spent: str, reserved: str, pct: tuple[float | None, float | None], over: bool
) -> None:
    shown = budget_bar({"monthly_usd": budget, "spent_usd": spent, "reserved_usd": reserved, "remaining_usd": None})
    assert (shown["spent_pct"], shown["reserved_pct"], shown["over"]) == (*pct, over)
    assert shown["spent_usd"] == spent  # the API's figures pass through as they are
