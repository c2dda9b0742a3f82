"""The submitter's backpressure (service/work/backpressure.py and its use in
service/work/runner.py): its free slots shrink by the stores and callbacks this process
runs and knows are waiting and by what it took in the last window, grow by what the storer
finished in it, never to nothing while downstream is idle, and work stalled on the
outside stops counting."""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import AsyncIterator
from typing import Any

from service.domain.pacing import Pacer
from service.work.backpressure import (
    STALLED_SECONDS,
    WINDOW_SECONDS,
    Backlog,
    Backpressure,
    after_claim,
    downstream_work,
    submit_room,
)
from service.work.runner import Runner, holder_for


def test_idle_downstream_leaves_every_free_slot() -> None:
    assert submit_room(8, 0, 16) == 8
    assert submit_room(8, 0, 1) == 1  # the smallest bound still lets a submit out


def test_free_slots_shrink_by_the_work_past_the_bound() -> None:
    assert submit_room(8, 10, 16) == 6
    assert submit_room(8, 16, 16) == 0
    assert submit_room(8, 40, 16) == 0


def test_a_bound_of_zero_never_holds() -> None:
    assert submit_room(8, 1000, 0, taken=1000) == 8


def test_jobs_taken_in_the_window_count_and_each_job_stored_lets_one_more_in() -> None:
    # Just sent, not yet back from an instant provider: downstream looks empty, but the
    # window remembers them.
    assert submit_room(8, 0, 16, taken=16) == 0
    assert submit_room(8, 16, 16, taken=5, finished=7) == 2


def test_backpressure_follows_the_storer_and_forgets_what_left_the_window() -> None:
    pressure = Backpressure(("store", "deliver"), limit=4)
    assert pressure.room(8, now=0.0) == 4
    pressure.took(4, now=0.0)
    assert pressure.room(8, now=0.1) == 0 and pressure.holding
    pressure.began("store", "job_1", now=0.5)
    pressure.ended("store", "job_1", now=0.6)  # stored: one more may go
    assert pressure.room(8, now=0.7) == 1
    pressure.began("deliver", "dl_1", now=0.7)
    pressure.ended("deliver", "dl_1", now=0.8)  # a callback does not pace it: the job was counted once
    assert pressure.room(8, now=0.9) == 1
    assert pressure.room(4, now=WINDOW_SECONDS + 0.7) == 4 and not pressure.holding


def test_a_full_claim_is_a_backlog_a_short_one_clears_it_and_a_full_duty_keeps_what_it_knew() -> None:
    seen = after_claim(4, 4, now=10.0, before=None)
    assert seen == Backlog(10.0, 4)
    assert after_claim(0, 0, now=11.0, before=seen) == seen  # full: asked for nothing
    assert after_claim(8, 3, now=11.0, before=seen) is None


def test_downstream_work_counts_recent_tasks_and_recent_backlogs_only() -> None:
    now = 100.0
    young, old = now - 0.1, now - STALLED_SECONDS - 0.1
    assert downstream_work([young, young, old], [Backlog(now - 0.5, 4), None], now) == 6
    # A store stuck on S3, a backlog seen long ago: nothing this process can speed up.
    assert downstream_work([old, old], [Backlog(old, 16)], now) == 0


# The runner with duties the test controls (no database).


class Wakeups:
    """The runner's wake-up source: a poll timer, and kicks that end the wait."""

    def __init__(self) -> None:
        self.events: dict[str, asyncio.Event] = {}

    def kick(self, *duties: str) -> None:
        for name in duties or list(self.events):
            self.events.setdefault(name, asyncio.Event()).set()

    async def wait_for_work(self, duty: str, timeout: float) -> None:
        event = self.events.setdefault(duty, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        event.clear()


def resources(poll: float) -> Any:
    settings = types.SimpleNamespace(poll_interval_seconds=poll, lease_seconds=3600.0)
    return types.SimpleNamespace(settings=settings, worker_id="host:1:abcd", notifications=Wakeups(),
                                 pacer=Pacer(30.0))


class Source:
    """A duty with an endless queue; each run waits until the test releases it."""

    table = "jobs"

    def __init__(self, res: Any, name: str, concurrency: int) -> None:
        self.name, self.concurrency, self.holder = name, concurrency, holder_for(res, name)
        self.asked: list[int] = []
        self.running: set[str] = set()
        self.release = asyncio.Event()
        self._next = 0

    async def claim(self, limit: int) -> list[str]:
        self.asked.append(limit)
        rows = [f"{self.name}_{self._next + i}" for i in range(limit)]
        self._next += limit
        return rows

    async def run(self, row_id: str) -> None:
        self.running.add(row_id)
        try:
            await self.release.wait()
        finally:
            self.running.discard(row_id)


class Store(Source):
    """Claims only what the test has put in its queue."""

    def __init__(self, res: Any) -> None:
        super().__init__(res, "store", 16)
        self.queue: list[str] = []

    async def claim(self, limit: int) -> list[str]:
        taken, self.queue = self.queue[:limit], self.queue[limit:]
        return taken


class Submit(Source):
    downstream = ("store",)

    def __init__(self, res: Any, limit: int) -> None:
        super().__init__(res, "submit", 8)
        self.downstream_limit = limit
        self.release.set()  # submits end at once; what they start waits downstream


class LocalRunner(Runner):
    """Hands nothing back on stop (no database here)."""

    async def _release_all(self) -> None:
        pass


async def until(check: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def six_stores_running(res: Any) -> AsyncIterator[tuple[Store, Submit]]:
    """A submitter limited to 4 beside a storer running 6 jobs that end when released."""
    store, submit = Store(res), Submit(res, limit=4)
    store.queue = [f"stored_{i}" for i in range(6)]
    runner = LocalRunner(res, [submit, store])
    await runner.start()
    try:
        await until(lambda: len(store.running) == 6)
        yield store, submit
    finally:
        store.release.set()
        await runner.stop(grace=1.0)


async def test_the_submitter_takes_nothing_while_downstream_is_past_the_bound_and_resumes_at_once() -> None:
    res = resources(poll=30.0)  # no poll within the test: what resumes it is room downstream
    async with six_stores_running(res) as (store, submit):
        before = len(submit.asked)
        res.notifications.kick("submit")  # news of new jobs: still nothing to take
        await asyncio.sleep(0.2)
        assert submit.asked[before:] == []
        store.release.set()  # downstream drains: the submitter claims again, without its poll
        await until(lambda: len(submit.asked) > before)
        assert submit.asked[before] > 0


async def test_downstream_work_stalled_on_the_outside_stops_holding_the_submitter(monkeypatch: Any) -> None:
    from service.work import backpressure

    monkeypatch.setattr(backpressure, "STALLED_SECONDS", 0.3)
    res = resources(poll=0.05)
    async with six_stores_running(res) as (store, submit):
        before = len(submit.asked)
        # The stores never end (S3 hangs): after STALLED_SECONDS submits go out again.
        await until(lambda: len(submit.asked) > before, timeout=3.0)
        assert len(store.running) == 6
