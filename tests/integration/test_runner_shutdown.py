"""The runner's stop() against a claim that is still in flight (the shutdown race).

stop() used to gather the running tasks first; a claim that returned just afterwards
started tasks nobody waited for or cancelled, and ``_release_all`` then freed their
leases while they ran, so another process could take the same job. Here a duty's claim
is held open (after its rows are really claimed in Postgres) until stop() has begun.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from service.db.engine import create_engine
from service.domain.pacing import Pacer
from service.settings import Settings
from service.work.runner import Runner, claim_jobs, holder_for, new_worker_id
from tests.conftest import fresh_database


@pytest.fixture
def quiet_database(postgres_server: str) -> Iterator[str]:
    with fresh_database(postgres_server) as url:
        yield url


class NoNews:
    """The runner's wake-up source, reduced to a poll timer (no LISTEN needed here)."""

    def kick(self) -> None:
        pass

    async def wait_for_work(self, _duty: str, timeout: float) -> None:
        await asyncio.sleep(timeout)


class SlowClaimDuty:
    """The first claim takes one row at once (its run takes a while); the second claims
    the rest for real, then holds its answer until told; later claims find nothing."""

    name = "submit"
    table = "jobs"
    concurrency = 4

    def __init__(self, res: Any) -> None:
        self.res = res
        self.holder = holder_for(res, self.name)
        self.claims = 0
        self.claiming = asyncio.Event()
        self.answer = asyncio.Event()
        self.started: list[str] = []
        self.finished: list[str] = []

    async def claim(self, limit: int) -> list[str]:
        self.claims += 1
        if self.claims == 1:
            return await claim_jobs(self.res, ["queued"], 1, holder=self.holder)
        if self.claims > 2:
            return []
        ids = await claim_jobs(self.res, ["queued"], limit, holder=self.holder)
        self.claiming.set()
        await self.answer.wait()
        return ids

    async def run(self, row_id: str) -> None:
        self.started.append(row_id)
        await asyncio.sleep(1.0)
        self.finished.append(row_id)


def test_work_claimed_while_stopping_is_never_run_unwatched_nor_released_while_running(quiet_database: str) -> None:
    with psycopg.connect(quiet_database, autocommit=True) as sql:
        for n in range(3):
            sql.execute("INSERT INTO jobs (id, owner, model, status, input, run_after) "
                        "VALUES (%s, 'o', 'wavespeed-ai/flux-dev-lora', 'queued', %s, now())",
                        (f"job_stop_{n}", Jsonb({"prompt": "p"})))

    async def go() -> tuple[SlowClaimDuty, list[tuple[str, Any]]]:
        engine = create_engine(quiet_database, 2)
        settings = Settings(database_url=quiet_database, lease_seconds=30, poll_interval_seconds=0.1)
        res = types.SimpleNamespace(settings=settings, engine=engine, notifications=NoNews(),
                                    worker_id=new_worker_id(), pacer=Pacer(settings.lifecycle_pause_factor))
        duty = SlowClaimDuty(res)
        runner = Runner(res, [duty])  # type: ignore[arg-type]
        try:
            await runner.start()
            await asyncio.wait_for(duty.claiming.wait(), 10)
            stopping = asyncio.create_task(runner.stop(grace=5))
            await asyncio.sleep(0.1)  # stop() has begun: it waits for the first row's run
            assert duty.started and not duty.finished
            duty.answer.set()  # now the claim in flight returns the other two rows
            await asyncio.wait_for(stopping, 15)
            at_stop = (list(duty.started), list(duty.finished))
            with psycopg.connect(quiet_database) as sql:
                leases = sql.execute("SELECT id, locked_by FROM jobs ORDER BY id").fetchall()
            await asyncio.sleep(1.2)  # anything still running unwatched would start or finish now
        finally:
            await engine.dispose()
        return duty, at_stop, leases

    duty, (started, finished), leases = asyncio.run(go())
    # Whatever had started when stop() returned had finished too, and nothing started later.
    assert started and sorted(started) == sorted(finished)
    assert duty.started == started
    # Every lease was handed back (none left to lapse), and none while its work still ran.
    assert leases == [(f"job_stop_{n}", None) for n in range(3)]


def test_a_graceful_stop_unmarks_jobs_claimed_for_sending_but_never_sent(quiet_database: str) -> None:
    """The submit claim marks its jobs as being sent (submit_sent_at). A stop that begins
    as the claim returns starts none of them; they used to go back *marked*, so the next
    worker took each for a lost send (recovered through the reconciler: minutes late, or
    failed when the provider's list could not prove the task absent). Found by
    bench_pipeline: ``submit.answer_lost`` for jobs claimed just before a stop."""
    from service.work.submitter import Submitter

    with psycopg.connect(quiet_database, autocommit=True) as sql:
        sql.execute("INSERT INTO owners (name) VALUES ('o')")
        for n in range(3):
            sql.execute("INSERT INTO jobs (id, owner, model, status, input, run_after) "
                        "VALUES (%s, 'o', 'wavespeed-ai/flux-dev-lora', 'queued', %s, now())",
                        (f"job_unsent_{n}", Jsonb({"prompt": "p"})))

    async def go() -> list[tuple[Any, ...]]:
        engine = create_engine(quiet_database, 2)
        settings = Settings(database_url=quiet_database, lease_seconds=30, poll_interval_seconds=0.1)
        res = types.SimpleNamespace(settings=settings, engine=engine, notifications=NoNews(),
                                    worker_id=new_worker_id(), pacer=Pacer(settings.lifecycle_pause_factor))
        submitter = Submitter(res)  # type: ignore[arg-type]
        try:
            claimed = await submitter.claim(2)  # marked as being sent; their runs never start
            assert len(claimed) == 2
            await Runner(res, [submitter]).stop(grace=1)  # type: ignore[arg-type]
            with psycopg.connect(quiet_database) as sql:
                return sql.execute("SELECT id, submit_sent_at IS NULL, locked_by, attempts FROM jobs "
                                   "ORDER BY id").fetchall()
        finally:
            await engine.dispose()

    rows = asyncio.run(go())
    # Queued, unmarked, unleased, no attempt counted: fresh jobs for the next claim.
    assert rows == [(f"job_unsent_{n}", True, None, 0) for n in range(3)]
