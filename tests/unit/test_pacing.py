"""The pacer of background batches (service/db/pacing.py): batches take turns, and the
turn stays closed for factor × the batch's own duration after it. Only lower bounds on
time are checked (a sleep never ends early), so a busy machine cannot fail these."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.db.pacing import Pacer


async def test_a_batch_rests_factor_times_its_own_duration_before_the_next_one_starts() -> None:
    pacer = Pacer(2.0)
    marks: dict[str, float] = {}

    async def first() -> None:
        async with pacer.batch():
            marks["first_start"] = time.monotonic()
            await asyncio.sleep(0.05)
            marks["first_end"] = time.monotonic()

    async def second() -> None:
        await asyncio.sleep(0.01)  # asks while the first batch runs
        async with pacer.batch():
            marks["second_start"] = time.monotonic()

    await asyncio.gather(first(), second())
    took = marks["first_end"] - marks["first_start"]
    assert marks["second_start"] - marks["first_end"] >= 2.0 * took * 0.99
    assert pacer.paused_seconds >= 2.0 * 0.05


async def test_batches_never_overlap() -> None:
    pacer = Pacer(0.0)
    inside, most = 0, 0

    async def batch() -> None:
        nonlocal inside, most
        async with pacer.batch():
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.001)
            inside -= 1

    await asyncio.gather(*(batch() for _ in range(20)))
    assert most == 1


async def test_a_failing_batch_gives_the_turn_back_without_a_pause() -> None:
    pacer = Pacer(1000.0)
    with pytest.raises(RuntimeError):
        async with pacer.batch():
            await asyncio.sleep(0.01)
            raise RuntimeError("S3 down")
    async with asyncio.timeout(5):  # a pause of 1000 × 0.01 s would not fit
        async with pacer.batch():
            pass
    assert pacer.paused_seconds < 1.0  # only the empty second batch's own (tiny) pause


async def test_a_batch_may_rest_by_its_own_factor_and_still_takes_turns() -> None:
    """Bulk actions pass BULK_PAUSE_FACTOR; the duties' batches keep the pacer's own."""
    pacer = Pacer(0.0)
    marks: dict[str, float] = {}

    async def bulk_batch() -> None:
        async with pacer.batch(3.0):
            marks["bulk_start"] = time.monotonic()
            await asyncio.sleep(0.05)
            marks["bulk_end"] = time.monotonic()

    async def duty_batch() -> None:
        await asyncio.sleep(0.01)  # asks while the bulk's batch runs
        async with pacer.batch():
            marks["duty_start"] = time.monotonic()

    await asyncio.gather(bulk_batch(), duty_batch())
    took = marks["bulk_end"] - marks["bulk_start"]
    assert marks["duty_start"] - marks["bulk_end"] >= 3.0 * took * 0.99
    async with asyncio.timeout(5):  # the pacer's own factor (0) for a batch that names none
        async with pacer.batch():
            await asyncio.sleep(0.01)
    assert pacer.paused_seconds < 3.0 * took + 0.01


async def test_a_negative_factor_is_refused() -> None:
    with pytest.raises(ValueError, match="factor"):
        Pacer(-1.0)
    with pytest.raises(ValueError, match="factor"):
        async with Pacer(1.0).batch(-0.5):
            pass
