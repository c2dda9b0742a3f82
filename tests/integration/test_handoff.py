"""A job's hand-over between the stages of one process, against the real Postgres.

The receiver's batch (service/db/news_writer.py) wakes this process's own duties at its
commit, without the NOTIFY's round trip; and, when the process's runner has a free slot,
the same statement leases the job it moves to storing (the storer's completion: the
delivery it queues) to the local duty, which works it without a claim statement. Here
the duties are a recording stand-in for the storer and the real completing statement;
the listener is never connected and the poll interval is a minute, so anything that
happens within a few seconds happened without a NOTIFY or a poll.
"""

from __future__ import annotations

import asyncio
import json
import types
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg.types.json import Jsonb
from sqlalchemy import text

from service.db import completion, jobs, leases, news
from service.db.engine import asyncpg_dsn, create_engine
from service.db.listen import Notifications
from service.db.news_writer import NewsWriter
from service.db.queries import CHANNEL_WORK
from service.domain.pacing import Pacer
from service.settings import Settings
from service.work.reconciler import Reconciler
from service.work.runner import Runner, claim_jobs, holder_for, new_worker_id
from tests.conftest import fresh_database

DEV = "wavespeed-ai/flux-dev-lora"
POLL = 60.0  # nothing in these tests may rely on polling


@pytest.fixture
def quiet_database(postgres_server: str) -> Iterator[str]:
    with fresh_database(postgres_server) as url:
        yield url


def seed(url: str, count: int, *, prefix: str = "job") -> list[str]:
    """``count`` submitted jobs with their task ids, a callback URL each."""
    run = uuid.uuid4().hex[:6]
    ids = [f"{prefix}_{run}_{n}" for n in range(count)]
    with psycopg.connect(url, autocommit=True) as sql:
        for job_id in ids:
            sql.execute(
                "INSERT INTO jobs (id, owner, model, status, input, callback_url, provider_task_id, "
                "provider_status, run_after, submit_sent_at, submitted_at) VALUES "
                "(%s, 'handoff', %s, 'submitted', %s, 'https://backend.example/hook', %s, 'created', "
                "now() + interval '1 hour', now(), now())",
                (job_id, DEV, Jsonb({"prompt": "a fox"}), f"task_{job_id}"))
    return ids


def finished(job_id: str) -> news.News:
    prediction = {"id": f"task_{job_id}", "model": DEV, "status": "completed",
                  "outputs": [f"https://cdn.example/{job_id}/0.png"], "error": ""}
    return news.plan(job_id, prediction, source="webhook", reconcile_after=120,
                     webhook_id=f"wh_{job_id}", body=json.dumps(prediction))


class StoreDuty:
    """The storer's claim and fencing with a run that only records: what the row looked
    like when its run began, then a fenced move to completed."""

    name = "store"
    table = "jobs"

    def __init__(self, res: Any, concurrency: int = 4, hold: asyncio.Event | None = None) -> None:
        self.res = res
        self.holder = holder_for(res, self.name)
        self.concurrency = concurrency
        self.hold = hold
        self.claimed: list[str] = []
        self.runs: dict[str, tuple[Any, ...]] = {}
        self.done: list[str] = []

    async def claim(self, limit: int) -> list[str]:
        ids = await claim_jobs(self.res, ["storing"], limit, holder=self.holder)
        self.claimed.extend(ids)
        return ids

    async def run(self, job_id: str) -> None:
        async with self.res.engine.connect() as conn:
            row = (await conn.execute(text(
                "SELECT locked_by, attempts, locked_until > now() FROM jobs WHERE id = :id"), {"id": job_id})).one()
        self.runs[job_id] = tuple(row)
        if self.hold is not None:
            await self.hold.wait()
        async with self.res.engine.begin() as conn:
            moved = await conn.execute(text(
                "UPDATE jobs SET status = 'completed', locked_by = NULL, locked_until = NULL "
                "WHERE id = :id AND locked_by = :holder AND status = 'storing'"), {"id": job_id, "holder": self.holder})
        if moved.rowcount:
            self.done.append(job_id)


class Process:
    """What one serving process holds for these tests: its engine, a listener that is never
    connected, a runner with the duties given, and the receiver's writer."""

    def __init__(self, url: str, *, lease: float = 30.0) -> None:
        self.url = url
        self.settings = Settings(database_url=url, lease_seconds=lease, poll_interval_seconds=POLL)
        self.engine = create_engine(url, 4)
        self.res = types.SimpleNamespace(
            settings=self.settings, engine=self.engine, notifications=Notifications(asyncpg_dsn(url)),
            worker_id=new_worker_id(), pacer=Pacer(self.settings.lifecycle_pause_factor), handoff=None)
        self.runner: Runner | None = None
        self.pool: asyncpg.Pool | None = None
        self.writer: NewsWriter | None = None

    async def start(self, duties: list[Any], *, handoff: bool = True, wake: bool = True) -> None:
        self.pool = await asyncpg.create_pool(asyncpg_dsn(self.url), min_size=0, max_size=4)
        self.writer = NewsWriter(self.pool, max_flushes=1)
        if duties:
            self.runner = Runner(self.res, duties)  # type: ignore[arg-type]
            await self.runner.start()
            await asyncio.sleep(0.05)  # the loops' first claims (nothing due yet) are behind them
            if wake:
                self.writer.wake_local = self.res.notifications.kick_for
            if handoff:
                self.writer.handoff = self.runner

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.stop(grace=2)
        if self.pool is not None:
            await self.pool.close()
        await self.engine.dispose()


def rows(url: str, ids: list[str]) -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(url) as sql:
        return {r[0]: tuple(r[1:]) for r in sql.execute(
            "SELECT id, status, locked_by, attempts FROM jobs WHERE id = ANY(%s)", (ids,))}


async def until(check: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def test_a_batch_that_moves_a_job_to_storing_wakes_the_local_storer_without_a_notify(
        quiet_database: str) -> None:
    """No handoff, no listener, a minute's poll: only the writer's own wake-up can make the
    storer claim the job within seconds."""
    (job_id,) = seed(quiet_database, 1)
    proc = Process(quiet_database)
    duty = StoreDuty(proc.res)
    try:
        await proc.start([duty], handoff=False)
        assert proc.writer is not None
        result = await proc.writer.write(finished(job_id))
        assert result.moved and result.adopted is None
        await until(lambda: duty.done == [job_id])
    finally:
        await proc.stop()
    assert duty.claimed == [job_id]  # the claim path, woken at the commit


async def test_a_result_the_reconciler_fetched_wakes_the_local_storer_at_its_commit(quiet_database: str) -> None:
    """A dropped webhook's result, found by the reconciler: no listener, a minute's poll,
    so only the reconciler's own wake-up after its commit makes the storer claim the job
    within seconds. The provider's answer is a stand-in (the reconciler's call to it is
    tests/integration/test_lost_submit.py's)."""
    (job_id,) = seed(quiet_database, 1)
    proc = Process(quiet_database)
    duty = StoreDuty(proc.res)
    prediction = {"id": f"task_{job_id}", "model": DEV, "status": "completed",
                  "outputs": [f"https://cdn.example/{job_id}/0.png"], "error": ""}

    class Provider:
        async def result(self, task_id: str) -> dict[str, Any]:
            assert task_id == f"task_{job_id}"
            return prediction

    proc.res.wavespeed = Provider()
    reconciler = Reconciler(proc.res)  # type: ignore[arg-type]
    try:
        await proc.start([duty], handoff=False, wake=False)
        with psycopg.connect(quiet_database, autocommit=True) as sql:
            sql.execute("UPDATE jobs SET locked_by = %s, locked_until = now() + interval '1 minute' WHERE id = %s",
                        (reconciler.holder, job_id))
        async with proc.engine.connect() as conn:
            job = await jobs.get_job(conn, job_id)
        await reconciler._reconcile(job)
        await until(lambda: duty.done == [job_id])
    finally:
        await proc.stop()
    assert duty.claimed == [job_id]


async def test_a_job_moved_to_storing_is_leased_to_the_local_storer_and_worked_without_a_claim(
        quiet_database: str) -> None:
    ids = seed(quiet_database, 3)
    proc = Process(quiet_database)
    duty = StoreDuty(proc.res)
    try:
        await proc.start([duty])
        assert proc.writer is not None
        results = await asyncio.gather(*(proc.writer.write(finished(j)) for j in ids))
        await until(lambda: sorted(duty.done) == sorted(ids))
    finally:
        await proc.stop()
    assert [r.adopted for r in results] == ids
    # No work wake-up goes out for them: every process's claim would find them leased.
    assert all(c != CHANNEL_WORK for r in results for c, _ in r.wake)
    assert duty.claimed == []
    # Each ran leased to this process's storer, as its claim would have leased it.
    assert all(duty.runs[j] == (duty.holder, 1, True) for j in ids)


async def test_a_process_without_duties_leases_nothing(quiet_database: str) -> None:
    (job_id,) = seed(quiet_database, 1)
    proc = Process(quiet_database)
    try:
        await proc.start([])  # serve --no-workers
        assert proc.writer is not None
        result = await proc.writer.write(finished(job_id))
    finally:
        await proc.stop()
    assert result.moved and result.adopted is None
    assert (CHANNEL_WORK, "storing") in result.wake
    assert rows(quiet_database, [job_id]) == {job_id: ("storing", None, 0)}


async def test_a_full_storer_adopts_nothing_and_claims_the_job_once_a_slot_frees(quiet_database: str) -> None:
    first, second = seed(quiet_database, 2)
    proc = Process(quiet_database)
    hold = asyncio.Event()
    duty = StoreDuty(proc.res, concurrency=1, hold=hold)
    try:
        await proc.start([duty])
        assert proc.writer is not None and proc.runner is not None
        assert (await proc.writer.write(finished(first))).adopted == first
        await until(lambda: first in duty.runs)
        result = await proc.writer.write(finished(second))
        assert result.adopted is None and (CHANNEL_WORK, "storing") in result.wake
        assert rows(quiet_database, [second]) == {second: ("storing", None, 0)}
        assert proc.runner._reserved == {"store": 0}  # the slot asked for went back
        hold.set()
        await until(lambda: sorted(duty.done) == sorted([first, second]))
    finally:
        await proc.stop()
    assert duty.claimed == [second]


async def test_a_job_adopted_by_a_process_that_died_is_claimed_by_another_worker_once_its_lease_lapses(
        quiet_database: str) -> None:
    (job_id,) = seed(quiet_database, 1)

    class Dead:
        """A runner that took the job and died before its run began."""
        lease = 1.0

        def reserve(self, duty: str) -> str | None:
            return "gone:1:dead/store"

        def adopt(self, duty: str, row_id: str) -> None:
            pass

        def give_back(self, duty: str) -> None:
            raise AssertionError("the job was adopted")

    dead = Process(quiet_database)
    other = Process(quiet_database)
    other.settings.poll_interval_seconds = 0.2  # the survivor finds the lapsed lease by polling
    duty = StoreDuty(other.res)
    try:
        await dead.start([])
        assert dead.writer is not None
        dead.writer.handoff = Dead()
        assert (await dead.writer.write(finished(job_id))).adopted == job_id
        await other.start([duty])
        await asyncio.sleep(0.5)
        assert duty.claimed == []  # leased: nobody may take it yet
        await until(lambda: duty.done == [job_id])
    finally:
        await dead.stop()
        await other.stop()
    assert duty.claimed == [job_id]
    assert duty.runs[job_id][:2] == (duty.holder, 2)  # the second try


async def test_two_processes_taking_and_claiming_the_same_stream_of_jobs_work_each_job_once(
        quiet_database: str) -> None:
    ids = seed(quiet_database, 40)
    procs = [Process(quiet_database), Process(quiet_database)]
    for p in procs:
        p.settings.poll_interval_seconds = 0.05  # each also claims what the other leaves, all the time
    duties = [StoreDuty(p.res, concurrency=3) for p in procs]
    try:
        for p, d in zip(procs, duties, strict=True):
            await p.start([d])
        writes = [procs[n % 2].writer.write(finished(j)) for n, j in enumerate(ids)]  # type: ignore[union-attr]
        results = await asyncio.gather(*writes)
        await until(lambda: sum(len(d.done) for d in duties) == len(ids), timeout=15)
        await asyncio.sleep(0.3)
    finally:
        for p in procs:
            await p.stop()
    runs = [j for d in duties for j in d.runs]
    assert sorted(runs) == sorted(ids)  # each job run once, by one of them
    assert any(r.adopted for r in results) and all(d.runs for d in duties)
    assert all(row[0] == "completed" for row in rows(quiet_database, ids).values())


async def test_the_completion_leases_its_callback_to_the_local_deliverer_and_wakes_no_deliverer(
        quiet_database: str) -> None:
    taken, left = seed(quiet_database, 2)
    worker = "proc:1:x/store"
    with psycopg.connect(quiet_database, autocommit=True) as sql:
        sql.execute("UPDATE jobs SET status = 'storing', locked_by = %s, locked_until = now() + interval '1 minute'",
                    (worker,))
    heard: list[str] = []
    listener = await asyncpg.connect(asyncpg_dsn(quiet_database))
    await listener.add_listener(CHANNEL_WORK, lambda *args: heard.append(args[3]))
    conn = await asyncpg.connect(asyncpg_dsn(quiet_database))
    try:
        done = {}
        for job_id, deliverer in ((taken, "proc:1:x/deliver"), (left, None)):
            job, _ = await jobs.held_job_with_outputs(conn, job_id)
            done[job_id] = await completion.complete_stored(conn, job, worker, output=None, cost=Decimal(0),
                                                            ignored=None, deliverer=deliverer, lease=30.0)
            await asyncio.sleep(0.3)
            heard.append("|")
    finally:
        await conn.close()
        await listener.close()
    assert done[taken].adopted is not None and done[left].adopted is None
    assert done[taken].queued_delivery and done[left].queued_delivery
    assert heard == ["|", "deliver", "|"]  # only the delivery nobody holds wakes the deliverers
    with psycopg.connect(quiet_database) as sql:
        leases = {r[0]: r[1:] for r in sql.execute("SELECT job_id, locked_by, locked_until > now() FROM deliveries")}
    assert leases == {taken: ("proc:1:x/deliver", True), left: (None, None)}
    assert rows(quiet_database, [taken])[taken][0] == "completed"


class DeliverDuty:
    """The deliverer's claim with a run that records the row's lease."""

    name = "deliver"
    table = "deliveries"
    concurrency = 4

    def __init__(self, res: Any) -> None:
        self.res = res
        self.holder = holder_for(res, self.name)
        self.claimed: list[str] = []
        self.runs: dict[str, tuple[Any, ...]] = {}

    async def claim(self, limit: int) -> list[str]:
        ids = await leases.claim_deliveries(self.res.engine, limit, holder=self.holder, lease=30)
        self.claimed.extend(ids)
        return ids

    async def run(self, delivery_id: str) -> None:
        async with self.res.engine.connect() as conn:
            row = (await conn.execute(text(
                "SELECT job_id, locked_by, locked_until > now() FROM deliveries WHERE id = :id"),
                {"id": delivery_id})).one()
        self.runs[delivery_id] = tuple(row)


async def test_a_webhook_that_ends_a_job_leases_its_callback_to_the_local_deliverer(quiet_database: str) -> None:
    """The provider's failure ends the job: its delivery is made leased to this process's
    deliverer, which runs it without a claim; a job without a callback URL gives the
    reserved slot back."""
    ended, quiet = seed(quiet_database, 2)
    with psycopg.connect(quiet_database, autocommit=True) as sql:
        sql.execute("UPDATE jobs SET callback_url = NULL WHERE id = %s", (quiet,))
    proc = Process(quiet_database)
    duty = DeliverDuty(proc.res)

    def failure(job_id: str) -> news.News:
        prediction = {"id": f"task_{job_id}", "model": DEV, "status": "failed", "outputs": [], "error": "boom"}
        return news.plan(job_id, prediction, source="webhook", reconcile_after=120,
                         webhook_id=f"wh_{job_id}", body=json.dumps(prediction))

    try:
        await proc.start([duty])
        assert proc.writer is not None and proc.runner is not None
        results = await asyncio.gather(*(proc.writer.write(failure(j)) for j in (ended, quiet)))
        await until(lambda: len(duty.runs) == 1)
        reserved = dict(proc.runner._reserved)
    finally:
        await proc.stop()
    adopted = results[0].adopted
    assert adopted is not None and results[1].adopted is None
    assert all(c != CHANNEL_WORK for r in results for c, _ in r.wake)
    assert duty.runs == {adopted: (ended, duty.holder, True)}
    assert duty.claimed == [] and reserved == {"deliver": 0}
