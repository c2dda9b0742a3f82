"""The pacer of background batches (service/domain/pacing.py): batches take turns, and the
next one waits factor × the last one's duration (the smaller of the two batches'
factors). Only lower bounds on time are checked (a sleep never ends early), and the
upper ones leave a margin of ten times the expected rest."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from service.domain.pacing import Pacer, spread_factor


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


async def _two_batches(pacer: Pacer, first: float | None, second: float | None,
                       rest_after: bool = True) -> tuple[float, float]:
    """A batch of 50 ms with ``first``'s factor, then one with ``second``'s asking while
    the first runs: (the first's duration, the gap between them)."""
    marks: dict[str, float] = {}

    async def one() -> None:
        async with pacer.batch(first, rest_after=rest_after):
            marks["start"] = time.monotonic()
            await asyncio.sleep(0.05)
            marks["end"] = time.monotonic()

    async def two() -> None:
        await asyncio.sleep(0.01)
        async with pacer.batch(second):
            marks["next"] = time.monotonic()

    async with asyncio.timeout(30):
        await asyncio.gather(one(), two())
    return marks["end"] - marks["start"], marks["next"] - marks["end"]


async def test_a_batch_may_rest_by_its_own_factor_and_still_takes_turns() -> None:
    """Bulk actions pass BULK_PAUSE_FACTOR; the duties' batches keep the pacer's own."""
    took, gap = await _two_batches(Pacer(30.0), 3.0, 3.0)
    assert 3.0 * took * 0.99 <= gap < 30.0 * took


async def test_a_bulk_does_not_wait_out_the_duties_long_rest() -> None:
    """After a duty's batch (factor 30) a bulk's batch (3) waits 3 x its duration, not 30 x:
    the rest is the previous batch's duration times the smaller of the two factors."""
    took, gap = await _two_batches(Pacer(30.0), None, 3.0)
    assert 3.0 * took * 0.99 <= gap < 30.0 * took


async def test_duties_in_a_row_rest_by_the_duties_factor() -> None:
    took, gap = await _two_batches(Pacer(30.0), None, None)
    assert gap >= 30.0 * took * 0.99


async def test_no_rest_follows_a_batch_that_asks_for_none() -> None:
    """A bulk's last batch: the duties' next batch starts without a rest."""
    pacer = Pacer(30.0)
    async with pacer.batch(3.0, rest_after=False):
        await asyncio.sleep(0.05)
    assert pacer.paused_seconds == 0.0  # its caller did not rest
    assert pacer._ready_at(30.0) <= time.monotonic()  # and nothing waits behind it


async def test_a_batch_may_waive_its_rest() -> None:
    """The eraser's batch whose S3 call failed (its time, up to S3's timeout, says nothing
    of the work) leaves no rest: the next batch does not wait 30 x a timeout."""
    pacer = Pacer(30.0)
    async with pacer.batch() as turn:
        await asyncio.sleep(0.05)
        turn.rest = False
    assert pacer.paused_seconds == 0.0
    assert pacer._ready_at(30.0) <= time.monotonic()


async def test_stop_ends_a_rest_at_once() -> None:
    pacer = Pacer(1000.0)

    async def batch() -> None:
        async with pacer.batch():
            await asyncio.sleep(0.01)  # then a rest of ~10 s

    task = asyncio.create_task(batch())
    await asyncio.sleep(0.1)
    assert not task.done()  # resting
    pacer.stop()
    async with asyncio.timeout(5):
        await task


async def test_a_batch_cancelled_while_waiting_or_running_leaves_the_turn_free() -> None:
    pacer = Pacer(0.0)
    started = asyncio.Event()

    async def long_batch() -> None:
        async with pacer.batch():
            started.set()
            await asyncio.sleep(30)

    async def waiting_batch() -> None:
        async with pacer.batch():
            pass

    running = asyncio.create_task(long_batch())
    await started.wait()
    waiting = asyncio.create_task(waiting_batch())
    await asyncio.sleep(0.05)
    waiting.cancel()  # cancelled while it waits for the turn
    running.cancel()  # and the batch holding it, mid-batch
    for task in (waiting, running):
        with pytest.raises(asyncio.CancelledError):
            await task
    async with asyncio.timeout(5):  # the turn is free and nothing is owed
        async with pacer.batch():
            pass


async def test_a_negative_factor_is_refused() -> None:
    with pytest.raises(ValueError, match="factor"):
        Pacer(-1.0)
    with pytest.raises(ValueError, match="factor"):
        async with Pacer(1.0).batch(-0.5):
            pass


def test_a_bulk_rests_its_full_factor_when_that_fits_its_target() -> None:
    # 20 batches of 30 ms at factor 9 end in ~5.7 s: inside a 10 s target.
    assert spread_factor(9.0, 10.0, elapsed=0.03, worked=0.03, done=1, left=19) == 9.0


def test_a_bulk_rests_less_to_end_by_its_target() -> None:
    # After the first of 20 batches of 50 ms, 8 s from the start: 0.95 s of work to come,
    # 7.0 s left for 19 rests (this one and 18 more), each this factor times 50 ms.
    factor = spread_factor(20.0, 8.0, elapsed=0.05, worked=0.05, done=1, left=19)
    assert factor == pytest.approx(7.0 / (0.05 * 19))
    assert 0.05 + 0.05 * 19 + 0.05 * 19 * factor == pytest.approx(8.0)


def test_a_bulk_behind_its_target_still_rests_as_long_as_each_batch() -> None:
    """The API keeps at least half the time, even when the target cannot be met."""
    assert spread_factor(20.0, 8.0, elapsed=7.9, worked=1.0, done=10, left=10) == 1.0
    assert spread_factor(0.5, 8.0, elapsed=7.9, worked=1.0, done=10, left=10) == 0.5  # a smaller factor stands


def test_without_a_target_a_bulk_rests_its_factor() -> None:
    assert spread_factor(3.0, 0.0, elapsed=5.0, worked=1.0, done=10, left=10) == 3.0


async def test_a_batch_may_change_its_rest_before_it_ends() -> None:
    pacer = Pacer(1000.0)
    async with asyncio.timeout(5):  # a rest of 1000 x 20 ms would not fit
        async with pacer.batch() as turn:
            await asyncio.sleep(0.02)
            turn.factor = 2.0
    assert 2.0 * 0.02 * 0.99 <= pacer.paused_seconds < 1000 * 0.02


async def test_turns_go_round_the_owners_not_the_batches() -> None:
    """Owner a runs three bulks at once, owner b one: while b waits, a never takes two
    turns in a row (one turn-taking queue of batches gave a three turns for each of b's)."""
    pacer = Pacer(0.0)
    order: list[str] = []

    async def bulk(who: str, batches: int, delay: float = 0.0) -> None:
        await asyncio.sleep(delay)
        for _ in range(batches):
            async with pacer.batch(who=who):
                order.append(who)
                await asyncio.sleep(0.002)

    await asyncio.gather(*(bulk("a", 6) for _ in range(3)), bulk("b", 6, delay=0.001))
    first_b, last_b = order.index("b"), len(order) - 1 - order[::-1].index("b")
    assert "aa" not in "".join(order[first_b : last_b + 1]), order
    assert order.count("b") == 6 and order.count("a") == 18


async def test_the_duties_are_one_participant_beside_the_owners() -> None:
    pacer = Pacer(0.0)
    order: list[str] = []

    async def batches(who: str, count: int) -> None:
        for _ in range(count):
            async with pacer.batch(who=who):
                order.append(who or "duty")
                await asyncio.sleep(0.002)

    await asyncio.gather(batches("", 4), batches("", 4), batches("owner", 4))
    first, last = order.index("owner"), len(order) - 1 - order[::-1].index("owner")
    window = order[first : last + 1]
    assert all(not (x == y == "duty") for x, y in itertools.pairwise(window)), order
