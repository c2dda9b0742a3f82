"""Store concurrency follows the backlog: doubles while claims fill every free slot,
falls back to what runs plus one free slot once a claim comes back short."""

from __future__ import annotations

from service.work.backlog_limit import BacklogLimit


def test_full_claims_double_the_limit_up_to_high() -> None:
    limit = BacklogLimit(4, 16)
    seen = []
    for _ in range(4):
        limit.claimed(limit.value, limit.value)
        seen.append(limit.value)
    assert seen == [8, 16, 16, 16]


def test_a_short_claim_falls_back_to_what_runs_plus_one_but_never_below_low() -> None:
    limit = BacklogLimit(4, 32)
    limit.value = 32
    with limit.running(), limit.running(), limit.running(), limit.running(), limit.running():
        limit.claimed(27, 3)  # 5 running + 3 just claimed + 1 free slot
        assert limit.value == 9
    limit.claimed(5, 0)
    assert limit.value == 4


def test_running_counts_even_when_the_work_fails() -> None:
    limit = BacklogLimit(1, 2)
    try:
        with limit.running():
            raise RuntimeError
    except RuntimeError:
        pass
    assert limit.active == 0


def test_high_below_low_is_low() -> None:
    limit = BacklogLimit(8, 2)
    limit.claimed(8, 8)
    assert limit.value == 8
