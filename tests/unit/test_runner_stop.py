"""The runner's stop() decisions (service/work/runner.py), with duties whose claims and
runs the test controls: a claim still in flight when stop begins starts nothing, running
work gets its grace period, and a row is never handed back while its task still runs.
What stop() would hand back is read from ``release_plan`` at the moment it releases;
tests/integration/test_runner_shutdown.py runs the same race on the real database."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from service.db import leases
from service.work import runner as runner_module
from service.work.runner import Runner, holder_for
from tests.unit.runner_fakes import resources


class Duty:
    """Claims what the test hands it, when the test says; each run takes ``run_seconds``."""

    name = "submit"
    table = "jobs"
    concurrency = 4

    def __init__(self, res: Any, run_seconds: float, *, shrug_off_cancel: bool = False) -> None:
        self.holder = holder_for(res, self.name)
        self.run_seconds = run_seconds
        self.shrug_off_cancel = shrug_off_cancel
        self.batches: asyncio.Queue[list[str]] = asyncio.Queue()
        self.claiming = asyncio.Event()
        self.started: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []

    async def claim(self, limit: int) -> list[str]:
        self.claiming.set()
        return await self.batches.get()

    async def run(self, row_id: str) -> None:
        self.started.append(row_id)
        try:
            await asyncio.sleep(self.run_seconds)
        except asyncio.CancelledError:
            self.cancelled.append(row_id)
            if not self.shrug_off_cancel:
                raise
            await asyncio.sleep(self.run_seconds)  # cleanup that outlives the cancellation
        self.finished.append(row_id)


class RecordingRunner(Runner):
    """Records what stop() would hand back instead of writing it (no database here)."""

    released: dict[str, list[str]] | None = None

    async def _release_all(self) -> None:
        plan = self.release_plan()
        assert [table for table, _, _ in plan] == list(leases.LEASED_TABLES)
        assert all(holders == [d.holder for d in self.duties] for _, holders, _ in plan)
        self.released = {table: keep for table, _, keep in plan}


async def started(duty: Duty, runner: Runner, batch: list[str]) -> None:
    await asyncio.wait_for(duty.claiming.wait(), 5)
    duty.claiming.clear()
    duty.batches.put_nowait(batch)
    while len(duty.started) < len(batch):
        await asyncio.sleep(0.01)


async def test_rows_claimed_while_stop_begins_are_never_started() -> None:
    res = resources()
    duty = Duty(res, run_seconds=0.5)
    runner = RecordingRunner(res, [duty])
    await runner.start()
    await started(duty, runner, ["job_1"])  # stop() will wait for this one...
    await asyncio.wait_for(duty.claiming.wait(), 5)  # ...while the next claim is in flight
    stopping = asyncio.create_task(runner.stop(grace=5.0))
    await asyncio.sleep(0.05)
    duty.batches.put_nowait(["job_late_1", "job_late_2"])  # it returns after stop began
    await asyncio.wait_for(stopping, 10)
    assert duty.started == ["job_1"] and duty.finished == ["job_1"]
    assert runner.released == {"jobs": [], "deliveries": []}  # nothing runs: the late rows go back


async def test_running_work_is_waited_for_within_the_grace_period() -> None:
    res = resources()
    duty = Duty(res, run_seconds=0.3)
    runner = RecordingRunner(res, [duty])
    await runner.start()
    await started(duty, runner, ["job_1", "job_2"])
    began = time.monotonic()
    await asyncio.wait_for(runner.stop(grace=5.0), 10)
    assert duty.finished == ["job_1", "job_2"] and duty.cancelled == []
    assert time.monotonic() - began < 2.0  # it waited for the work, not the whole grace
    assert runner.released == {"jobs": [], "deliveries": []}


async def test_work_past_the_grace_period_is_cancelled_before_its_rows_go_back() -> None:
    res = resources()
    duty = Duty(res, run_seconds=60.0)
    runner = RecordingRunner(res, [duty])
    await runner.start()
    await started(duty, runner, ["job_1"])
    await asyncio.wait_for(runner.stop(grace=0.1), 10)
    assert duty.cancelled == ["job_1"] and duty.finished == []
    assert runner.released == {"jobs": [], "deliveries": []}


async def test_a_row_whose_task_outlives_its_cancellation_keeps_its_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "CANCEL_WAIT_SECONDS", 0.1)
    res = resources()
    duty = Duty(res, run_seconds=0.5, shrug_off_cancel=True)
    runner = RecordingRunner(res, [duty])
    await runner.start()
    await started(duty, runner, ["job_1"])
    await asyncio.wait_for(runner.stop(grace=0.1), 10)
    assert duty.cancelled == ["job_1"] and duty.finished == []  # still running when rows went back
    assert runner.released == {"jobs": ["job_1"], "deliveries": []}
    while not duty.finished:  # let it end before the loop closes
        await asyncio.sleep(0.05)
