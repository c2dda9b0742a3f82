"""Job and delivery ids: prefix, 26 Crockford base32 characters, time first, random after;
and what cannot be a job id is refused before any query."""

from __future__ import annotations

import time

import pytest

from service.db.jobs import _CROCKFORD, new_delivery_id, new_job_id, sortable_ids
from service.domain.errors import NotFound
from service.domain.ids import checked_job_id, is_job_id


def _decode(chars: str) -> int:
    value = 0
    for c in chars:
        value = value * 32 + _CROCKFORD.index(c)
    return value


def test_an_id_is_its_prefix_and_26_crockford_characters() -> None:
    for made in (new_job_id(), new_delivery_id(), *sortable_ids("msg", 50)):
        prefix, _, body = made.partition("_")
        assert prefix in ("job", "msg")
        assert len(body) == 26
        assert set(body) <= set(_CROCKFORD)


def test_the_first_ten_characters_are_the_milliseconds_of_creation() -> None:
    before = int(time.time() * 1000)
    made = new_job_id()
    after = int(time.time() * 1000)
    assert before <= _decode(made[4:14]) <= after


def test_ids_made_later_sort_after_earlier_ones() -> None:
    first = sortable_ids("job", 100)
    time.sleep(0.003)
    second = sortable_ids("job", 100)
    assert max(first) < min(second)


def test_the_random_part_is_unique_and_uses_every_character() -> None:
    ids = sortable_ids("msg", 20_000)
    assert len(set(ids)) == len(ids)
    tails = "".join(i[14:] for i in ids)
    assert set(tails) == set(_CROCKFORD)
    # 320,000 characters, uniform over 32: each near 10,000 (a fixed or biased character
    # would be far off; the bound is ~10 standard deviations).
    counts = [tails.count(c) for c in _CROCKFORD]
    assert max(counts) - min(counts) < 2_000


def test_every_made_job_id_has_the_shape_of_one() -> None:
    assert all(is_job_id(made) for made in (new_job_id(), *sortable_ids("job", 1000)))


@pytest.mark.parametrize("value", [
    "", "job_", "job_\x00" + "0" * 25, "job_" + "0" * 25, "job_" + "0" * 27, "JOB_" + "0" * 26,
    "job_" + "0" * 25 + "i", "job_" + "0" * 25 + "U", "msg_" + "0" * 26, "job_w" + "0123456789abcdef" * 2,
    "job_" + "0" * 26 + "\x00", "%00", "job_" + "k" * 30_000, "job_0000000000000000000000000\u0661",
])
def test_values_that_cannot_be_a_job_id_are_refused_as_not_found(value: str) -> None:
    assert not is_job_id(value)
    with pytest.raises(NotFound):
        checked_job_id(value)
    assert checked_job_id("job_" + "0" * 26) == "job_" + "0" * 26
