"""Pure rules of owners: the money period, how amounts are shown, what operators and
owners may type."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from service.api.owner_account import parse_usage
from service.db import owners
from service.db.ledger import month_period, usd
from service.domain.errors import ValidationFailed

UTC = dt.UTC


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        (dt.datetime(2026, 12, 2, 4, 0, tzinfo=UTC), dt.datetime(2026, 12, 1, tzinfo=UTC),
         dt.datetime(2027, 1, 1, tzinfo=UTC)),
        (dt.datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC), dt.datetime(2026, 1, 1, tzinfo=UTC),
         dt.datetime(2026, 2, 1, tzinfo=UTC)),
        # 00:30 on 1 March in UTC+2 is still February in UTC.
        (dt.datetime(2026, 3, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))),
         dt.datetime(2026, 2, 1, tzinfo=UTC), dt.datetime(2026, 3, 1, tzinfo=UTC)),
    ],
)
def test_the_period_is_the_utc_calendar_month(now: dt.datetime, start: dt.datetime, end: dt.datetime) -> None:
    assert month_period(now) == (start, end)


@pytest.mark.parametrize(
    ("amount", "shown"),
    [("12.345", "12.345"), ("0.06", "0.06"), ("100", "100.00"), ("0", "0.00"), ("0.0150", "0.015"),
     ("87.5950", "87.595"), ("1000000", "1000000.00"), ("-0.015", "-0.015")],
)
def test_amounts_are_decimal_strings_with_at_least_cents(amount: str, shown: str) -> None:
    assert usd(Decimal(amount)) == shown


def test_no_amount_is_null() -> None:
    assert usd(None) is None


@pytest.mark.parametrize("raw", ["-1", "abc", "1e400", "NaN", "Infinity", "0.00001", "", "1,5"])
def test_bad_budgets_are_refused_by_name(raw: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        owners.parse_budget(raw)
    assert caught.value.fields[0]["loc"] == "monthly_budget_usd"


@pytest.mark.parametrize(("raw", "value"), [("none", None), ("NONE", None), ("0", Decimal(0)),
                                            ("100", Decimal(100)), ("0.0001", Decimal("0.0001"))])
def test_budgets_are_none_or_an_amount(raw: str, value: Decimal | None) -> None:
    assert owners.parse_budget(raw) == value


@pytest.mark.parametrize("raw", ["0", "-3", "100001", "1.5", "x", ""])
def test_max_in_flight_is_none_or_a_positive_bounded_integer(raw: str) -> None:
    with pytest.raises(ValidationFailed):
        owners.parse_optional_int("max_in_flight", raw, 1, owners.MAX_IN_FLIGHT)


@pytest.mark.parametrize("name", ["", "x" * 201, "tab\there", "nul\x00"])
def test_owner_names_are_bounded_and_printable(name: str) -> None:
    with pytest.raises(ValidationFailed):
        owners.check_name(name)


NOW = dt.datetime(2026, 12, 2, 4, 0, tzinfo=UTC)


def test_usage_defaults_to_the_month_by_day() -> None:
    assert parse_usage([], NOW) == (dt.datetime(2026, 12, 1, tzinfo=UTC), dt.datetime(2027, 1, 1, tzinfo=UTC), "day")


def test_usage_reads_offsets_and_naive_times_as_utc() -> None:
    start, end, group = parse_usage([("from", "2026-11-01T02:00:00+02:00"), ("to", "2026-11-02T00:00:00"),
                                     ("group_by", "model")], NOW)
    assert (start, end, group) == (dt.datetime(2026, 11, 1, tzinfo=UTC), dt.datetime(2026, 11, 2, tzinfo=UTC), "model")


@pytest.mark.parametrize(
    ("params", "loc"),
    [([("from", "2026-11-01"), ("from", "2026-11-02")], "from"),
     ([("to", "not a time")], "to"),
     ([("from", "9999-12-31T23:59:59-05:00")], "from"),
     ([("group_by", "week")], "group_by"),
     ([("owner", "someone-else")], "owner")],
)
def test_usage_refuses_what_it_cannot_answer(params: list[tuple[str, str]], loc: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_usage(params, NOW)
    assert caught.value.fields[0]["loc"] == loc
