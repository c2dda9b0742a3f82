"""POST /v1/jobs/bulk and `wavespeed-jobs bulk` on the real database: the filter means
what GET /v1/jobs means, bounds answer 422 and change nothing, dry runs change nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from devtools.serverthread import ServerThread
from service.db import bulk
from service.db.engine import create_engine
from service.db.jobs import sortable_ids
from service.domain.pacing import Pacer, Turn
from service.work.bulk import run_bulk
from tests.conftest import Service, fresh_database, run_service
from tests.integration.helpers import eventually, submit
from tests.processes import ROOT


@pytest.fixture(scope="module")
def bulk_db(postgres_server: str) -> Iterator[str]:
    """A database of its own: no worker of the session's service moves these jobs."""
    with fresh_database(postgres_server) as url:
        yield url


@pytest.fixture(scope="module")
def api_only(bulk_db: str, s3_endpoint: str, simulator: ServerThread) -> Iterator[Service]:
    """No workers: queued jobs stay queued until a bulk action moves them."""
    with run_service(bulk_db, s3_endpoint, simulator.url, run_workers=False) as svc:
        yield svc


@pytest.fixture
def sql(bulk_db: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(bulk_db, autocommit=True) as conn:
        yield conn


def statuses(sql: psycopg.Connection[Any], ids: list[str]) -> dict[str, str]:
    return dict(sql.execute("SELECT id, status FROM jobs WHERE id = ANY(%s)", (ids,)).fetchall())


def queued_jobs(sql: psycopg.Connection[Any], prefix: str, count: int) -> str:
    """``count`` queued jobs of a new owner, ids ``job_<prefix>_<owner>_<n>`` (n zero-padded):
    its name, for the bulk's pacing tests."""
    owner = f"{prefix}_{uuid.uuid4().hex[:8]}"
    sql.execute(
        "INSERT INTO jobs (id, owner, model, input, metadata, status, run_after)"
        " SELECT 'job_' || %s || '_' || %s || '_' || lpad(g::text, length(%s::text), '0'), %s,"
        " 'wavespeed-ai/flux-dev-lora', '{}', '{}', 'queued', NULL FROM generate_series(1, %s) g",
        (prefix, owner, count, owner, count))
    return owner


def test_bulk_cancel_acts_on_the_filter_only_and_dry_run_changes_nothing(
    api_only: Service, sql: psycopg.Connection[Any]
) -> None:
    with api_only.client() as client:
        tagged = [submit(client, metadata={"batch": "b1"})["id"] for _ in range(5)]
        other = [submit(client, metadata={"batch": "b2"})["id"] for _ in range(2)]
        body = {"action": "cancel", "filter": {"status": ["queued"], "metadata": {"batch": "b1"}}}
        dry = client.post("/v1/jobs/bulk", json={**body, "dry_run": True})
        assert dry.status_code == 200, dry.text
        assert dry.json() | {"started_at": None} == {"object": "bulk_result", "action": "cancel", "matched": 5,
                                                    "affected": 0, "dry_run": True, "started_at": None}
        assert set(statuses(sql, tagged).values()) == {"queued"}
        done = client.post("/v1/jobs/bulk", json=body).json()
        assert (done["matched"], done["affected"]) == (5, 5)
    assert set(statuses(sql, tagged).values()) == {"canceled"}
    assert set(statuses(sql, other).values()) == {"queued"}
    events = sql.execute("SELECT detail->>'reason' FROM job_events WHERE job_id = %s AND type = 'status.changed'",
                         (tagged[0],)).fetchall()
    assert events == [("bulk.cancel",)]


def test_bulk_never_touches_another_owners_jobs(api_only: Service, sql: psycopg.Connection[Any]) -> None:
    with api_only.client() as mine, api_only.client() as theirs:
        their_job = submit(theirs, metadata={"batch": "shared"})["id"]
        result = mine.post("/v1/jobs/bulk", json={"action": "delete", "filter": {"metadata": {"batch": "shared"}}})
        assert result.json()["matched"] == 0
    assert sql.execute("SELECT deleted_at, status FROM jobs WHERE id = %s", (their_job,)).fetchone() == (None, "queued")


def test_bulk_retry_makes_one_new_job_per_failed_job_and_never_two(
    api_only: Service, sql: psycopg.Connection[Any]
) -> None:
    with api_only.client() as client:
        failed = [submit(client, prompt=f"a storm {i}", metadata={"run": "r"},
                         callback_url="http://127.0.0.1:9/hook")["id"] for i in range(3)]
        sql.execute("UPDATE jobs SET status = 'failed', run_after = NULL, completed_at = now() WHERE id = ANY(%s)",
                    (failed,))
        body = {"action": "retry", "filter": {"status": ["failed", "timed_out"], "metadata": {"run": "r"}}}
        first = client.post("/v1/jobs/bulk", json=body).json()
        second = client.post("/v1/jobs/bulk", json=body).json()
    assert (first["affected"], second["affected"]) == (3, 0)
    rows = sql.execute("SELECT retry_of, status, input->>'prompt', metadata, callback_url FROM jobs"
                       " WHERE retry_of = ANY(%s)", (failed,)).fetchall()
    assert sorted(r[0] for r in rows) == sorted(failed)
    assert all(r[1] == "queued" and r[3] == {"run": "r"} and r[4] == "http://127.0.0.1:9/hook" for r in rows)
    assert sorted(r[2] for r in rows) == ["a storm 0", "a storm 1", "a storm 2"]
    # Each new job has a trace context of its own (its job.admit span: ids only, nothing
    # exported here), never the failed job's.
    traces = [r[0] for r in sql.execute("SELECT traceparent FROM jobs WHERE retry_of = ANY(%s) OR id = ANY(%s)",
                                         (failed, failed))]
    assert len(set(traces)) == 6 and all(t is not None and t.startswith("00-") and t.endswith("-00") for t in traces)


def test_two_bulk_retries_at_once_make_one_new_job_per_failed_job(bulk_db: str, sql: psycopg.Connection[Any]) -> None:
    """A client that timed out and posted the same bulk retry again: the second batch runs
    while the first is still uncommitted, waits for it (the owner's lock), then finds the
    jobs retried and makes none, so nothing is reserved or sent twice."""
    owner = f"retrytwice_{uuid.uuid4().hex[:8]}"
    sql.execute(
        "INSERT INTO jobs (id, owner, model, input, metadata, status, run_after, completed_at)"
        " SELECT 'job_retrytwice_' || %s || '_' || g, %s, 'wavespeed-ai/flux-dev-lora', '{}', '{}',"
        " 'failed', NULL, now() FROM generate_series(1, 3) g", (owner, owner))
    ids = [f"job_retrytwice_{owner}_{g}" for g in range(1, 4)]

    async def run() -> tuple[int, int]:
        engine = create_engine(bulk_db, pool_size=2)

        async def second() -> int:
            async with engine.begin() as conn:
                return await bulk.act(conn, "retry", owner, ids)

        try:
            async with engine.begin() as conn:
                first = await bulk.act(conn, "retry", owner, ids)
                racing = asyncio.create_task(second())
                await asyncio.sleep(0.5)  # the second runs its statements now, before the first commits
            return first, await racing
        finally:
            await engine.dispose()

    assert asyncio.run(run()) == (3, 0)
    made = sql.execute("SELECT retry_of, count(*) FROM jobs WHERE retry_of = ANY(%s) GROUP BY retry_of",
                       (ids,)).fetchall()
    assert sorted(made) == sorted((i, 1) for i in ids)
    reserved = sql.execute("SELECT count(*) FROM ledger l JOIN jobs j ON j.id = l.job_id"
                           " WHERE j.retry_of = ANY(%s) AND l.kind = 'reserve'", (ids,)).fetchone()
    assert reserved == (3,)


def test_bulk_redeliver_queues_the_terminal_event_again(api_only: Service, sql: psycopg.Connection[Any]) -> None:
    with api_only.client() as client:
        ids = [submit(client, metadata={"rd": "1"}, callback_url="http://127.0.0.1:9/hook")["id"] for _ in range(2)]
        no_callback = submit(client, metadata={"rd": "1"})["id"]
        client.post("/v1/jobs/bulk", json={"action": "cancel", "filter": {"metadata": {"rd": "1"}}})
        sql.execute("UPDATE deliveries SET status = 'failed' WHERE job_id = ANY(%s)", (ids,))
        result = client.post("/v1/jobs/bulk", json={"action": "redeliver", "filter": {"metadata": {"rd": "1"}}}).json()
    assert (result["matched"], result["affected"]) == (3, 2)
    rows = sql.execute("SELECT status, event_type FROM deliveries WHERE job_id = ANY(%s)", (ids,)).fetchall()
    assert rows == [("pending", "job.canceled")] * 2
    assert sql.execute("SELECT count(*) FROM deliveries WHERE job_id = %s", (no_callback,)).fetchone() == (0,)


def test_bulk_delete_tombstones_and_queues_the_erasure(api_only: Service, sql: psycopg.Connection[Any]) -> None:
    with api_only.client() as client:
        ids = [submit(client, metadata={"gone": "yes"})["id"] for _ in range(3)]
        result = client.post("/v1/jobs/bulk", json={"action": "delete", "filter": {"metadata": {"gone": "yes"}}})
        assert result.json()["affected"] == 3
        assert client.get("/v1/jobs", params={"metadata.gone": "yes"}).json()["data"] == []
    rows = sql.execute("SELECT status, deleted_reason FROM jobs WHERE id = ANY(%s)", (ids,)).fetchall()
    assert rows == [("canceled", "request")] * 3


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"action": "cancel", "filter": {}}, "filter"),
        ({"action": "cancel"}, "filter"),
        ({"action": "explode", "filter": {"status": ["queued"]}}, "action"),
        ({"action": "cancel", "filter": {"status": ["queued"]}, "dry_run": "yes"}, "dry_run"),
        ({"action": "cancel", "filter": {"status": ["nope"]}}, "filter.status"),
        ({"action": "cancel", "filter": {"status": "queued" * 100}}, "filter.status"),
        ({"action": "cancel", "filter": {"model": "evil/model"}}, "filter.model"),
        ({"action": "cancel", "filter": {"created_after": "yesterday"}}, "filter.created_after"),
        ({"action": "cancel", "filter": {"created_after": "9999-12-31T23:59:59-05:00"}}, "filter.created_after"),
        ({"action": "cancel", "filter": {"metadata": {"k": 5}}}, "filter.metadata"),
        ({"action": "cancel", "filter": {"metadata": {"k": "\u0000"}}}, "filter.metadata.k"),
        ({"action": "cancel", "filter": {"metadata": {f"k{i}": "v" for i in range(17)}}}, "filter.metadata"),
        ({"action": "cancel", "filter": {"owner": "someone-else"}}, "filter.owner"),
        ({"action": "cancel", "filter": {"status": ["queued"]}, "extra": 1}, "extra"),
        ([1, 2], "body"),
    ],
)
def test_hostile_bulk_bodies_get_a_422_naming_the_field(api_only: Service, body: Any, loc: str) -> None:
    with api_only.client() as client:
        job = submit(client)
        answer = client.post("/v1/jobs/bulk", json=body)
        assert answer.status_code == 422, answer.text
        assert loc in [f["loc"] for f in answer.json()["error"]["fields"]]
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"


def test_bulk_body_that_is_not_json_or_too_large_is_refused(api_only: Service) -> None:
    with api_only.client() as client:
        assert client.post("/v1/jobs/bulk", content=b"{nope").status_code == 400
        assert client.post("/v1/jobs/bulk", content=b"[" + b"1," * 20000 + b"1]").status_code == 413


def test_more_than_ten_thousand_matches_is_a_422_naming_the_count(
    api_only: Service, sql: psycopg.Connection[Any]
) -> None:
    owner = f"many_{uuid.uuid4().hex[:8]}"
    key = api_only.new_key(owner)
    sql.execute(
        "INSERT INTO jobs (id, owner, model, input, metadata, status, run_after)"
        " SELECT 'job_many_' || %s || '_' || g, %s, 'wavespeed-ai/flux-dev-lora', '{}', '{}', 'queued', NULL"
        " FROM generate_series(1, 10050) g", (owner, owner))
    try:
        with api_only.client(key) as client:
            answer = client.post("/v1/jobs/bulk", json={"action": "cancel", "filter": {"status": ["queued"]}})
        assert answer.status_code == 422
        assert "10,050" in answer.json()["error"]["message"]
        assert sql.execute("SELECT count(*) FROM jobs WHERE owner = %s AND status = 'queued'",
                           (owner,)).fetchone() == (10050,)
    finally:
        sql.execute("DELETE FROM jobs WHERE owner = %s", (owner,))  # other tests count jobs by status


@pytest.mark.slow
def test_cli_bulk_matches_the_api(api_only: Service, bulk_db: str, sql: psycopg.Connection[Any]) -> None:
    owner = f"cli_{uuid.uuid4().hex[:8]}"
    with api_only.client(api_only.new_key(owner)) as client:
        ids = [submit(client, metadata={"cli": "x"})["id"] for _ in range(3)]
    env = {**os.environ, "DATABASE_URL": bulk_db}

    def bulk(*args: str) -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-m", "service", "bulk", *args], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    dry = bulk("cancel", "--owner", owner, "--metadata", "cli=x", "--status", "queued", "--dry-run")
    assert (dry["matched"], dry["affected"], dry["dry_run"]) == (3, 0, True)
    done = bulk("cancel", "--owner", owner, "--metadata", "cli=x")
    assert (done["matched"], done["affected"]) == (3, 3)
    eventually(lambda: set(statuses(sql, ids).values()) == {"canceled"}, timeout=5)
    bad = subprocess.run([sys.executable, "-m", "service", "bulk", "cancel", "--owner", owner], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "filter" in bad.stderr


def test_bulk_batches_commit_one_by_one_with_a_pause_between_them(
    bulk_db: str, s3_endpoint: str, simulator: ServerThread, sql: psycopg.Connection[Any]
) -> None:
    """Each batch is its own transaction (its locks end with it) and the pacer rests
    between batches: from outside, whole batches are seen canceled while the rest are
    still queued, for a while (BULK_PAUSE_FACTOR)."""
    owner = queued_jobs(sql, "paced", 30)
    seen: set[int] = set()
    with (run_service(bulk_db, s3_endpoint, simulator.url, run_workers=False, bulk_batch_size=10,
                      bulk_pause_factor=20.0) as svc, svc.client(svc.new_key(owner)) as client,
          ThreadPoolExecutor(1) as pool):
        answer = pool.submit(client.post, "/v1/jobs/bulk", json={"action": "cancel", "filter": {"status": ["queued"]}})
        while not answer.done():
            row = sql.execute("SELECT count(*) FROM jobs WHERE owner = %s AND status = 'canceled'",
                              (owner,)).fetchone()
            assert row is not None
            seen.add(int(row[0]))
            time.sleep(0.005)
        result = answer.result().json()
    assert (result["matched"], result["affected"]) == (30, 30)
    assert seen & {10, 20}, f"no moment between batches was seen: {sorted(seen)}"
    assert seen <= {0, 10, 20, 30}  # never part of a batch: each commits whole


class RecordingPacer(Pacer):
    """A pacer that notes, for each batch that ended, whether a rest followed it."""

    def __init__(self, factor: float) -> None:
        super().__init__(factor)
        self.rests: list[bool] = []

    @contextlib.asynccontextmanager
    async def batch(self, factor: float | None = None, *, rest_after: bool = True, who: str = ""
                    ) -> AsyncIterator[Turn]:
        async with super().batch(factor, rest_after=rest_after, who=who) as turn:
            yield turn
            self.rests.append(turn.rest and turn.factor > 0)


@pytest.mark.slow
def test_a_bulk_rests_between_its_batches_but_not_after_the_last(bulk_db: str, sql: psycopg.Connection[Any]) -> None:
    """The pause follows the matching (the bulk's first batch) and each batch but the
    last: after it nothing of the bulk is left, and a rest would only hold back the answer.
    A dry run, only the matching, takes no turn at all."""
    owner = queued_jobs(sql, "lastrest", 20)

    async def run(batch_size: int, dry_run: bool = False) -> tuple[bulk.BulkResult, RecordingPacer]:
        request = bulk.parse_bulk({"action": "cancel", "filter": {"status": ["queued"]}, "dry_run": dry_run})
        engine, pacer = create_engine(bulk_db, pool_size=1), RecordingPacer(0.0)
        try:
            return await run_bulk(engine, owner, request, batch_size, pacer, 50.0), pacer
        finally:
            await engine.dispose()

    result, pacer = asyncio.run(run(10, dry_run=True))
    assert (result["matched"], result["affected"]) == (20, 0)
    assert (pacer.rests, pacer.paused_seconds) == ([], 0.0)
    result, pacer = asyncio.run(run(10))  # the matching and two batches
    assert (result["matched"], result["affected"]) == (20, 20)
    assert pacer.rests == [True, True, False]
    assert pacer.paused_seconds > 0
    sql.execute("UPDATE jobs SET status = 'queued', completed_at = NULL WHERE owner = %s", (owner,))
    result, pacer = asyncio.run(run(100))  # the matching and one batch
    assert result["affected"] == 20
    assert pacer.rests == [True, False]
    sql.execute("UPDATE jobs SET status = 'canceled' WHERE owner = %s", (owner,))
    result, pacer = asyncio.run(run(10))  # nothing matches: the matching alone, no rest
    assert (result["matched"], pacer.rests) == (0, [False])


def test_a_bulk_with_a_target_rests_only_what_its_target_leaves(bulk_db: str, sql: psycopg.Connection[Any]) -> None:
    """BULK_TARGET_SECONDS: at factor 1,000 ten batches would rest ~1,000 x their work;
    with a target of 1 s their rests together stay within it, yet each is at least as long
    as its batch (the API keeps half the time). Counted by the pacer, not timed."""
    owner = queued_jobs(sql, "target", 100)
    request = bulk.parse_bulk({"action": "cancel", "filter": {"status": ["queued"]}})

    async def run() -> tuple[bulk.BulkResult, Pacer]:
        engine, pacer = create_engine(bulk_db, pool_size=1), Pacer(0.0)
        try:
            return await run_bulk(engine, owner, request, 10, pacer, 1000.0, target_seconds=1.0), pacer
        finally:
            await engine.dispose()

    result, pacer = asyncio.run(run())
    assert (result["matched"], result["affected"]) == (100, 100)
    # Ten rests (after the matching and nine of the ten batches) sized from the batches'
    # mean: a slow batch near the end may overshoot a little.
    assert pacer.paused_seconds <= 1.0 + 0.25
    # each at least its batch's duration: all but the last batch's time
    assert pacer.paused_seconds >= pacer.busy_seconds * 0.5


def test_a_bulk_after_a_duty_batch_waits_that_batch_once_not_its_own_factor_times(
        bulk_db: str, sql: psycopg.Connection[Any]) -> None:
    """In a process that runs the duties too, a bulk posted right after a duty's batch of
    300 ms waits ~300 ms for its turn (factor 1), not 20 x 300 ms (BULK_PAUSE_FACTOR):
    its own rests, sized to its target, do the spreading."""
    owner = queued_jobs(sql, "afterduty", 20)
    request = bulk.parse_bulk({"action": "cancel", "filter": {"status": ["queued"]}})

    async def run() -> tuple[bulk.BulkResult, float]:
        engine, pacer = create_engine(bulk_db, pool_size=1), Pacer(30.0)
        inside = asyncio.Event()

        async def duty() -> None:
            async with pacer.batch():
                inside.set()
                await asyncio.sleep(0.3)

        duty_task = asyncio.create_task(duty())
        try:
            await inside.wait()
            started = time.monotonic()
            result = await run_bulk(engine, owner, request, 10, pacer, 20.0, target_seconds=1.0)
            return result, time.monotonic() - started
        finally:
            pacer.stop()  # ends the duty's rest of 30 x 300 ms
            await duty_task
            await engine.dispose()

    result, took = asyncio.run(run())
    assert (result["matched"], result["affected"]) == (20, 20)
    assert took < 20 * 0.3 * 0.5  # waiting 20 x the duty's batch alone would be 6 s


def test_a_bulk_cancel_reaches_every_open_stream_at_once(api_only: Service, sql: psycopg.Connection[Any]) -> None:
    """A batch tells waiters with one NOTIFY per ~7,000 bytes of ids (joined by commas):
    streams on the first, a middle and the last job of a 450-job batch of 30-character
    ids (two payloads) all get their ``canceled`` event. Streams never poll, so only the notification can bring it
    before the keep-alive (15 s)."""
    owner = f"streams_{uuid.uuid4().hex[:8]}"
    key = api_only.new_key(owner)
    ids = sorted(sortable_ids("job", 450))  # ids of the real shape: a stream refuses any other
    sql.execute(
        "INSERT INTO jobs (id, owner, model, input, metadata, status, run_after, callback_url)"
        " SELECT t.id, %s, 'wavespeed-ai/flux-dev-lora', '{}', '{}', 'queued', NULL,"
        " CASE WHEN t.g %% 2 = 0 THEN 'http://127.0.0.1:9/hook' END"
        " FROM unnest(%s::text[]) WITH ORDINALITY AS t(id, g)",
        (owner, ids))
    watched = [ids[n - 1] for n in (1, 250, 450)]

    opened = [threading.Event() for _ in watched]

    def stream(job_id: str, first: threading.Event) -> tuple[list[str], float]:
        with api_only.client(key) as client, client.stream("GET", f"/v1/jobs/{job_id}/stream", timeout=20) as answer:
            seen, ended, deadline = [], 0.0, time.monotonic() + 30
            for line in answer.iter_lines():  # a line at least every keep-alive (15 s)
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:])["status"])
                    first.set()
                    if seen[-1] == "canceled":
                        ended = time.monotonic()
                if time.monotonic() > deadline:  # bounded if the event never comes
                    break
            return seen, ended

    with ThreadPoolExecutor(len(watched)) as pool, api_only.client(key) as client:
        futures = [pool.submit(stream, job_id, first) for job_id, first in zip(watched, opened, strict=True)]
        assert all(first.wait(20) for first in opened)
        result = client.post("/v1/jobs/bulk", json={"action": "cancel", "filter": {"status": ["queued"]}}).json()
        answered = time.monotonic()
        outcomes = [f.result(timeout=60) for f in futures]
    assert (result["matched"], result["affected"]) == (450, 450)
    assert [seen for seen, _ in outcomes] == [["queued", "canceled"]] * 3
    assert all(ended - answered < 5 for _, ended in outcomes)
    counts = sql.execute("SELECT count(*) FILTER (WHERE e.type = 'status.changed'), count(DISTINCT d.id)"
                         " FROM jobs j LEFT JOIN job_events e ON e.job_id = j.id LEFT JOIN deliveries d"
                         " ON d.job_id = j.id WHERE j.owner = %s", (owner,)).fetchone()
    assert counts == (450, 225)  # one event per job; one callback per job that has a URL
