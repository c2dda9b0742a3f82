"""The runner's hand-over slots (service/work/runner.py ``reserve``/``adopt``/``give_back``):
a statement that leases a new row to a local duty reserves a slot first, so claims and
hand-overs together never exceed the duty's concurrency; an adopted row runs like a
claimed one; nothing is reserved for a duty the process does not run, or once stopping.
tests/integration/test_handoff.py runs the statements themselves."""

from __future__ import annotations

import asyncio
from typing import Any

from service.work.backlog_limit import BacklogLimit
from service.work.runner import Runner, holder_for
from tests.unit.runner_fakes import resources


class Duty:
    """Claims nothing unless told; a run waits for ``release``."""

    name = "store"
    table = "jobs"

    def __init__(self, res: Any, concurrency: int = 2) -> None:
        self.holder = holder_for(res, self.name)
        self.concurrency = concurrency
        self.asked: list[int] = []
        self.release = asyncio.Event()
        self.started: list[str] = []

    async def claim(self, limit: int) -> list[str]:
        self.asked.append(limit)
        return []

    async def run(self, row_id: str) -> None:
        self.started.append(row_id)
        await self.release.wait()


async def test_slots_are_reserved_up_to_the_concurrency_and_an_adopted_row_runs_leased_and_held() -> None:
    res = resources()
    duty = Duty(res)
    runner = Runner(res, [duty])
    await runner.start()
    assert res.handoff is runner
    assert runner.reserve("store") == duty.holder
    assert runner.reserve("store") == duty.holder
    assert runner.reserve("store") is None  # both slots are taken by the statements in flight
    assert runner.reserve("deliver") is None  # no such duty in this process
    duty.asked.clear()
    await asyncio.sleep(0.15)
    assert duty.asked == []  # reserved slots are not claimed for
    runner.adopt("store", "job_a")
    runner.give_back("store")
    await asyncio.sleep(0.01)
    assert duty.started == ["job_a"]
    assert runner._held["jobs"] == {("job_a", duty.holder)}  # renewed, and kept at a stop while it runs
    await asyncio.sleep(0.15)
    assert 1 in duty.asked  # the slot given back is claimed for again
    duty.release.set()
    await runner.stop(grace=1)
    assert res.handoff is None
    assert runner.reserve("store") is None  # stopping: the rows wait for claims


async def test_a_row_adopted_while_stopping_is_not_started() -> None:
    res = resources()
    duty = Duty(res)
    runner = Runner(res, [duty])
    await runner.start()
    assert runner.reserve("store") is not None
    await runner.stop(grace=1)
    runner.adopt("store", "job_late")  # the statement committed after the stop began
    await asyncio.sleep(0.01)
    assert duty.started == [] and runner._reserved == {"store": 0}


async def test_a_backlog_limited_duty_grows_when_a_row_is_handed_over_with_every_slot_taken() -> None:
    """The storer's limit doubles when a claim fills every free slot; a hand-over that
    finds every slot taken is the same news (a row is waiting), so it grows too."""
    res = resources()

    class Growing(Duty):
        def __init__(self, res: Any) -> None:
            super().__init__(res)
            self.limit = BacklogLimit(1, 2)

        @property
        def concurrency(self) -> int:
            return self.limit.value

        @concurrency.setter
        def concurrency(self, _value: int) -> None:
            pass

        def more_waiting(self) -> None:
            self.limit.waiting()

    duty = Growing(res)
    runner = Runner(res, [duty])
    assert runner.reserve("store") is not None
    assert runner.reserve("store") is not None  # 1 → 2
    assert runner.reserve("store") is None  # at its high mark
    assert duty.limit.value == 2


async def test_once_a_row_is_left_to_the_claims_nothing_is_handed_over_until_a_claim_comes_back_short() -> None:
    """Rows that found every slot taken wait for claims (oldest first); a row that came
    later must not take the next free slot before them."""
    res = resources()
    duty = Duty(res, concurrency=1)
    runner = Runner(res, [duty])
    assert runner.reserve("store") is not None
    assert runner.reserve("store") is None  # full: this row is left to the claims
    runner.give_back("store")
    assert runner.reserve("store") is None  # a slot is free, but a row waits for it
    await runner.start()  # its loop claims with the free slot and finds nothing waiting
    await asyncio.sleep(0.1)
    assert duty.asked and runner.reserve("store") is not None
    await runner.stop(grace=1)


def test_a_hand_over_with_every_slot_taken_doubles_the_backlog_limit_up_to_high() -> None:
    limit = BacklogLimit(4, 16)
    for _ in range(3):
        limit.waiting()
    assert limit.value == 16


def test_the_duties_are_what_the_runner_looks_for() -> None:
    """The runner finds a duty's optional parts by their protocols: a renamed method
    would quietly leave the storer's backlog or the submitter's stop unattended."""
    from service.work.runner import FollowsBacklog, UndoesUnsent
    from service.work.storer import Storer
    from service.work.submitter import Submitter

    assert issubclass(Storer, FollowsBacklog)
    assert issubclass(Submitter, UndoesUnsent)
    assert Submitter.downstream == ("store", "deliver")  # with downstream_limit: Paced
