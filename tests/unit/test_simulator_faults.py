"""The fault dice: rates of 0 and 1 are certain, seeded runs replay the same faults."""

from __future__ import annotations

import pytest

from devtools.simulator.state import Dice


def test_rate_zero_never_fires_and_one_always_fires() -> None:
    dice = Dice(seed=1)
    assert not any(dice.hit(0.0) for _ in range(1000))
    assert all(dice.hit(1.0) for _ in range(1000))


def test_certain_rates_do_not_consume_randomness() -> None:
    # Turning one knob fully on or off must not change which faults the others draw.
    plain, mixed = Dice(seed=5), Dice(seed=5)
    expected = [plain.hit(0.5) for _ in range(50)]
    got = []
    for _ in range(50):
        mixed.hit(0.0)
        mixed.hit(1.0)
        got.append(mixed.hit(0.5))
    assert got == expected


def test_same_seed_same_faults() -> None:
    first, second = Dice(seed=9), Dice(seed=9)
    assert [first.hit(0.3) for _ in range(100)] == [second.hit(0.3) for _ in range(100)]


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_rate_is_roughly_honoured(rate: float) -> None:
    dice = Dice(seed=3)
    hits = sum(dice.hit(rate) for _ in range(10_000))
    assert abs(hits / 10_000 - rate) < 0.03


def test_uniform_and_seed_ranges() -> None:
    dice = Dice(seed=4)
    assert dice.uniform(0.0) == 0.0
    assert all(0.0 <= dice.uniform(2.0) <= 2.0 for _ in range(100))
    assert all(0 <= dice.seed() <= 2_147_483_647 for _ in range(100))
