"""METRICS_TOKEN, METRICS_PER_OWNER and METRICS_CACHE_SECONDS: their defaults, and hostile
values refused at start naming the variable."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_defaults_are_an_open_metrics_without_owners_read_every_15_seconds() -> None:
    s = Settings()
    assert s.metrics_token is None and s.metrics_per_owner is False and s.metrics_cache_seconds == 15.0


def test_a_good_token_is_kept_secret() -> None:
    s = Settings(metrics_token="0123456789abcdef0123")
    assert s.metrics_token is not None and s.metrics_token.get_secret_value() == "0123456789abcdef0123"
    assert "0123456789abcdef0123" not in repr(s)


def test_an_empty_token_is_unset() -> None:
    assert Settings(metrics_token="").metrics_token is None


@pytest.mark.parametrize("token", ["short", "x" * 1025, "sixteen chars ok?", "tøken-0123456789abc",
                                   "tab\tinside-0123456789", "nul\x00inside-0123456789"])
def test_a_hostile_token_is_refused_at_start_naming_it(token: str) -> None:
    with pytest.raises(ValidationError, match="metrics_token"):
        Settings(metrics_token=token)


@pytest.mark.parametrize("seconds", ["-1", "3601", "nan", "soon"])
def test_a_cache_interval_out_of_bounds_is_refused_at_start_naming_it(seconds: str) -> None:
    with pytest.raises(ValidationError, match="metrics_cache_seconds"):
        Settings(metrics_cache_seconds=seconds)  # type: ignore[arg-type]
