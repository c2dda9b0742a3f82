"""/metrics' database figures: read at most once per METRICS_CACHE_SECONDS however many
scrapes arrive, concurrent scrapes sharing one read, a failed read reported (and kept)
as ``database_up 0``. The clock is the test's. (tests/integration/test_metrics.py floods
a real service.)"""

from __future__ import annotations

import asyncio

import pytest

from service.observability import figures_cache
from service.observability.figures_cache import FiguresCache
from service.observability.metrics import DatabaseSnapshot


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Reads:
    """A stand-in for service/db/gauges.py ``snapshot``: counts its calls, each returning
    a snapshot numbered by the call, after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls, self.delay, self.fail = 0, delay, fail

    async def __call__(self) -> DatabaseSnapshot:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise OSError("connection refused")
        return DatabaseSnapshot(jobs={("queued", "m"): self.calls})


def test_scrapes_within_the_interval_get_the_first_read() -> None:
    clock, reads = Clock(), Reads()
    cache = FiguresCache(15, clock)

    async def go() -> list[DatabaseSnapshot]:
        out = []
        for step in (0, 5, 14.9):
            clock.now = 1000 + step
            out.append(await cache.get(reads))
        return out

    snaps = asyncio.run(go())
    assert reads.calls == 1
    assert all(s is snaps[0] for s in snaps)


def test_the_first_scrape_after_the_interval_reads_again() -> None:
    clock, reads = Clock(), Reads()
    cache = FiguresCache(15, clock)

    async def go() -> tuple[DatabaseSnapshot, DatabaseSnapshot]:
        first = await cache.get(reads)
        clock.now += 15
        return first, await cache.get(reads)

    first, second = asyncio.run(go())
    assert reads.calls == 2
    assert first.jobs == {("queued", "m"): 1} and second.jobs == {("queued", "m"): 2}


def test_a_flood_of_concurrent_scrapes_makes_one_read_and_all_get_it() -> None:
    reads = Reads(delay=0.05)
    cache = FiguresCache(15, Clock())

    async def go() -> list[DatabaseSnapshot]:
        return await asyncio.gather(*(cache.get(reads) for _ in range(500)))

    snaps = asyncio.run(go())
    assert reads.calls == 1
    assert all(s is snaps[0] for s in snaps) and snaps[0].ok


def test_an_interval_of_zero_reads_at_every_scrape_but_once_for_concurrent_ones() -> None:
    reads = Reads(delay=0.02)
    cache = FiguresCache(0, Clock())

    async def go() -> None:
        await cache.get(reads)
        await cache.get(reads)
        await asyncio.gather(*(cache.get(reads) for _ in range(20)))

    asyncio.run(go())
    assert reads.calls == 3


def test_a_scraper_hanging_up_does_not_cancel_the_read_the_others_wait_on() -> None:
    reads = Reads(delay=0.05)
    cache = FiguresCache(15, Clock())

    async def go() -> DatabaseSnapshot:
        impatient = asyncio.ensure_future(cache.get(reads))
        patient = asyncio.ensure_future(cache.get(reads))
        await asyncio.sleep(0.01)
        impatient.cancel()
        return await patient

    assert asyncio.run(go()).ok
    assert reads.calls == 1


def test_a_failed_read_is_database_up_0_and_is_not_retried_within_the_interval() -> None:
    clock, reads = Clock(), Reads(fail=True)
    cache = FiguresCache(15, clock)

    async def go() -> list[DatabaseSnapshot]:
        down = [await cache.get(reads), await cache.get(reads)]
        clock.now += 15
        reads.fail = False
        return [*down, await cache.get(reads)]

    first, second, later = asyncio.run(go())
    assert not first.ok and second is first and not first.jobs
    assert later.ok and reads.calls == 2


def test_a_read_slower_than_the_scrape_timeout_is_database_up_0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(figures_cache, "SCRAPE_TIMEOUT_SECONDS", 0.01)
    reads = Reads(delay=1.0)
    assert not asyncio.run(FiguresCache(15, Clock()).get(reads)).ok
