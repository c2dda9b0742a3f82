"""The history page's pure pieces: the filter form → API parameters, where sign-in may send
a person afterwards, form tokens, and how times are shown."""

from __future__ import annotations

import pytest

from service.db.page_sessions import form_token, tokens_match
from service.domain.errors import FieldError
from service.web.history_page import history_params
from service.web.rendering import _datetime_input, _duration, _size
from service.web.sign_in import safe_next


@pytest.mark.parametrize(
    ("query", "params", "errors"),
    [
        ([], [], []),
        ([("model", ""), ("meta", " "), ("created_after", "")], [], []),  # empty fields mean "any"
        ([("status", "completed"), ("status", "failed")], [("status", "completed"), ("status", "failed")], []),
        ([("meta", "user_id=u_1")], [("metadata.user_id", "u_1")], []),
        ([("meta", "a=1, b = two ")], [("metadata.a", "1"), ("metadata.b", "two")], []),
        ([("meta", "note=x=y")], [("metadata.note", "x=y")], []),  # only the first = splits
        ([("meta", "empty=")], [("metadata.empty", "")], []),
        ([("metadata.plan", "pro")], [("metadata.plan", "pro")], []),  # API style passes through
        ([("colour", "red")], [("colour", "red")], []),  # left for parse_filter to name
        ([("meta", "novalue")], [],
         [FieldError("meta", "must be key=value pairs separated by commas, e.g. user_id=u_1")]),
        ([("meta", "=v")], [], [FieldError("meta", "must be key=value pairs separated by commas, e.g. user_id=u_1")]),
    ],
)
def test_filter_form_becomes_the_apis_query_parameters(
    query: list[tuple[str, str]], params: list[tuple[str, str]], errors: list[FieldError]
) -> None:
    assert history_params(query) == (params, errors)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "/"), ("", "/"), ("/", "/"), ("/jobs/job_1", "/jobs/job_1"), ("/?status=failed", "/?status=failed"),
        ("//evil.example", "/"), ("https://evil.example/", "/"), ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"), ("jobs/job_1", "/"),
    ],
)
def test_after_sign_in_only_paths_on_this_site(value: str | None, expected: str) -> None:
    assert safe_next(value) == expected


def test_form_token_is_bound_to_its_session_and_compared_strictly() -> None:
    token = form_token("session-a")
    assert token == form_token("session-a")
    assert token != form_token("session-b")
    assert tokens_match(token, token)
    assert not tokens_match(token, token[:-1])
    assert not tokens_match("", "")  # a missing token never matches a missing cookie
    assert not tokens_match(token, "")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("2026-01-31T12:00", "2026-01-31T12:00:00"),
        ("2026-01-31T12:00:05Z", "2026-01-31T12:00:05"),
        ("2026-01-31T14:00:05+02:00", "2026-01-31T12:00:05"),  # shown in UTC, as labelled
        ("yesterday", ""),
        ("", ""),
    ],
)
def test_filter_times_round_trip_through_the_datetime_input(value: str, shown: str) -> None:
    assert _datetime_input(value) == shown


@pytest.mark.parametrize(
    ("size", "shown"), [(None, "—"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KB"), (3 * 1024 * 1024, "3.0 MB")]
)
def test_sizes_read_like_a_person_would_write_them(size: int | None, shown: str) -> None:
    assert _size(size) == shown


def test_durations() -> None:
    assert _duration("2026-01-01T00:00:00Z", "2026-01-01T00:00:01.25Z") == "1.2 s"
    assert _duration("2026-01-01T00:00:00Z", "2026-01-01T00:03:00Z") == "3.0 min"
    assert _duration("2026-01-01T00:00:00Z", None) == "—"
