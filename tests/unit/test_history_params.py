"""History query parameters: the keyset cursor round trip, and every parsing error naming
the parameter it is about (a bad query is a 422, never a 500)."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest

from service.db.history import DEFAULT_LIMIT, MAX_LIMIT, decode_cursor, encode_cursor, parse_filter
from service.domain.errors import ValidationFailed

UTC = dt.UTC


def problems(params: list[tuple[str, str]]) -> list[dict[str, str]]:
    with pytest.raises(ValidationFailed) as caught:
        parse_filter(params)
    assert caught.value.status_code == 422
    return [dict(f) for f in caught.value.fields]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# --------------------------------------------------------------------------- cursor


@pytest.mark.parametrize(
    "created_at",
    [
        dt.datetime(2026, 1, 31, 12, 0, 0, 123456, tzinfo=UTC),
        dt.datetime(2026, 1, 31, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
    ],
)
def test_cursor_round_trips_time_to_the_microsecond_and_the_id(created_at: dt.datetime) -> None:
    cursor = encode_cursor(created_at, "job_01abc")
    assert decode_cursor(cursor) == (created_at, "job_01abc")


def test_cursor_is_url_safe_and_unpadded() -> None:
    # An id with characters that would need escaping in base64's standard alphabet.
    cursor = encode_cursor(dt.datetime(2026, 1, 1, tzinfo=UTC), "job_??>>~~")
    assert "=" not in cursor and "+" not in cursor and "/" not in cursor
    assert parse_filter([("cursor", cursor)]).cursor == (dt.datetime(2026, 1, 1, tzinfo=UTC), "job_??>>~~")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not a cursor!",
        "%%%%",
        b64(b"not json"),
        b64(b"\xff\xfe\x00garbage"),
        b64(b"42"),
        b64(b'"just a string"'),
        b64(b"[]"),
        b64(b'["2026-01-01T00:00:00+00:00"]'),
        b64(b'["2026-01-01T00:00:00+00:00", "job_1", "extra"]'),
        b64(b'["yesterday", "job_1"]'),
        b64(b'[{"a": 1}, "job_1"]'),
        b64(b'[20260101, "job_1"]'),
        b64(json.dumps({"created_at": "2026-01-01", "id": "j"}).encode()),
    ],
    ids=["empty", "punctuation", "percent", "not-json", "not-utf8", "number", "string", "empty-list", "one-item",
         "three-items", "bad-date", "object-date", "number-date", "object"],
)
def test_a_cursor_we_did_not_issue_is_a_422_on_cursor(cursor: str) -> None:
    assert problems([("cursor", cursor)]) == [{"loc": "cursor", "msg": "is not a cursor this API returned"}]


# --------------------------------------------------------------------------- filters


def test_no_parameters_give_the_defaults() -> None:
    f = parse_filter([])
    assert (f.statuses, f.model, f.created_after, f.created_before, f.metadata, f.limit, f.cursor) == (
        [], None, None, None, {}, DEFAULT_LIMIT, None,
    )


def test_status_is_repeatable_and_comma_separated() -> None:
    f = parse_filter([("status", "completed"), ("status", "failed,canceled")])
    assert f.statuses == ["completed", "failed", "canceled"]


@pytest.mark.parametrize("value", ["done", "COMPLETED", "", "completed,", "queued,nope"])
def test_unknown_status_names_status(value: str) -> None:
    assert [p["loc"] for p in problems([("status", value)])] == ["status"]


def test_model_filter() -> None:
    assert parse_filter([("model", "wavespeed-ai/flux-krea-dev-lora")]).model == "wavespeed-ai/flux-krea-dev-lora"
    assert [p["loc"] for p in problems([("model", "flux-dev-lora")])] == ["model"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-31T12:00:00Z", dt.datetime(2026, 1, 31, 12, tzinfo=UTC)),
        ("2026-01-31T12:00:00+00:00", dt.datetime(2026, 1, 31, 12, tzinfo=UTC)),
        ("2026-01-31T14:00:00+02:00", dt.datetime(2026, 1, 31, 12, tzinfo=UTC)),
        ("2026-01-31T12:00:00", dt.datetime(2026, 1, 31, 12, tzinfo=UTC)),  # no offset: UTC
        ("2026-01-31", dt.datetime(2026, 1, 31, tzinfo=UTC)),
    ],
)
@pytest.mark.parametrize("name", ["created_after", "created_before"])
def test_times_are_iso_8601_and_default_to_utc(name: str, value: str, expected: dt.datetime) -> None:
    parsed = getattr(parse_filter([(name, value)]), name)
    assert parsed == expected and parsed.tzinfo is not None


@pytest.mark.parametrize("value", ["yesterday", "31/01/2026", "2026-13-01", "", "1706700000"])
@pytest.mark.parametrize("name", ["created_after", "created_before"])
def test_bad_times_name_their_parameter(name: str, value: str) -> None:
    [problem] = problems([(name, value)])
    assert problem["loc"] == name and "ISO 8601" in problem["msg"]


def test_metadata_filters_collect_every_key() -> None:
    f = parse_filter([("metadata.user_id", "u_1"), ("metadata.plan", "pro"), ("metadata.empty", "")])
    assert f.metadata == {"user_id": "u_1", "plan": "pro", "empty": ""}


def test_metadata_filter_must_name_a_key() -> None:
    assert [p["loc"] for p in problems([("metadata.", "x")])] == ["metadata."]


@pytest.mark.parametrize("value", ["1", "50", str(MAX_LIMIT)])
def test_limit_from_1_to_200(value: str) -> None:
    assert parse_filter([("limit", value)]).limit == int(value)


@pytest.mark.parametrize(
    "value", ["0", str(MAX_LIMIT + 1), "-1", "", "ten", "1.5", "1e2", " 5", "²", "99999999999999999999"]
)
def test_limit_out_of_range_or_not_an_integer_names_limit(value: str) -> None:
    [problem] = problems([("limit", value)])
    assert problem["loc"] == "limit" and "1 to 200" in problem["msg"]


@pytest.mark.parametrize("name", ["page", "offset", "metadata", "Status", "sort", "wait"])
def test_unknown_parameters_are_named(name: str) -> None:
    assert problems([(name, "1")]) == [{"loc": name, "msg": "unknown query parameter"}]


def test_every_bad_parameter_is_reported_at_once() -> None:
    found = problems([("limit", "0"), ("status", "nope"), ("created_after", "x"), ("cursor", "x"), ("colour", "red")])
    assert sorted(p["loc"] for p in found) == ["colour", "created_after", "cursor", "limit", "status"]


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00"])
def test_times_that_leave_the_calendar_in_utc_are_a_422_not_an_overflow(value: str) -> None:
    assert [p["loc"] for p in problems([("created_before", value)])] == ["created_before"]


def test_parsed_times_are_in_utc() -> None:
    parsed = parse_filter([("created_after", "2026-01-31T14:00:00+02:00")]).created_after
    assert parsed is not None and parsed.utcoffset() == dt.timedelta(0) and parsed.hour == 12


def test_a_cursor_without_an_offset_is_read_as_utc() -> None:
    cursor = b64(b'["2026-01-01T00:00:00", "job_1"]')
    assert decode_cursor(cursor) == (dt.datetime(2026, 1, 1, tzinfo=UTC), "job_1")


def test_a_cursor_id_with_nul_is_refused() -> None:
    cursor = encode_cursor(dt.datetime(2026, 1, 1, tzinfo=UTC), "j\u0000")
    assert [p["loc"] for p in problems([("cursor", cursor)])] == ["cursor"]


@pytest.mark.parametrize(("key", "value"), [("metadata.user", "u\u00001"), ("metadata.us\u0000er", "u1")])
def test_metadata_filters_with_nul_are_refused(key: str, value: str) -> None:
    assert [p["loc"] for p in problems([(key, value)])] == [key]
