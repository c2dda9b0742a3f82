"""The one path for provider news (service/db/news.py) and the receiver's group commit
(service/db/news_writer.py), against the real Postgres.

Each scenario seeds a job, sends its webhooks one after another through the writer, and
checks the outcomes and every row the path writes: the job's status and provider
fields, its outputs, its events in order, the webhook log and the queued callback.
Then: a batch of many jobs is one statement and one transaction, each webhook answered
only after its commit; items of one batch are judged each on its own; a batch that
fails (two jobs claiming one task) is retried item by item; the wake-ups go out once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from service.db import news
from service.db.engine import asyncpg_dsn
from service.db.listen import Notifications
from service.db.news_writer import NewsWriter
from tests.conftest import fresh_database

SEEDED_AT = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
DEV = "wavespeed-ai/flux-dev-lora"


@dataclass
class Scenario:
    name: str
    job: dict[str, Any]  # column overrides of the seeded job
    hooks: list[tuple[str, dict[str, Any]]]  # (webhook-id, prediction); "{task}" is the job's task id
    outcomes: list[str]
    status: str  # the job's status afterwards
    events: list[str]  # the job's event types afterwards, in order
    deliveries: int = 0
    outputs: int = 0
    expect: dict[str, Any] = field(default_factory=dict)  # more job columns


def completed(outputs: int = 2, **extra: Any) -> dict[str, Any]:
    urls = [f"https://cdn.example/{{task}}/{i}.png" for i in range(outputs)]
    return {"id": "{task}", "model": DEV, "status": "completed", "outputs": urls,
            "has_nsfw_contents": [False] * outputs, "error": "", "timings": {"inference": 1234}, **extra}


def failed(**extra: Any) -> dict[str, Any]:
    return {"id": "{task}", "model": DEV, "status": "failed", "outputs": [], "error": "the GPU caught fire",
            "timings": {"inference": 7}, **extra}


R, S = "webhook.received", "status.changed"
SCENARIOS = [
    Scenario("completed", {}, [("e1", completed())], ["advanced"], "storing", [R, S], outputs=2,
             expect={"provider_status": "completed", "inference_ms": 1234, "has_nsfw_contents": [False, False],
                     "locked_by": None, "attempts": 0}),
    Scenario("completed-then-duplicate", {}, [("e1", completed()), ("e1", completed())],
             ["advanced", "duplicate"], "storing", [R, S, R], outputs=2),
    Scenario("completed-then-resent-under-a-new-id", {}, [("e1", completed()), ("e2", completed())],
             ["advanced", "unchanged"], "storing", [R, S, R], outputs=2),
    Scenario("failed-with-callback", {}, [("e1", failed())], ["advanced"], "failed", [R, S], deliveries=1,
             expect={"error": "the GPU caught fire", "callback_status": "pending", "run_after": None}),
    Scenario("failed-without-callback", {"callback_url": None}, [("e1", failed())], ["advanced"], "failed", [R, S],
             expect={"callback_status": None}),
    Scenario("failed-without-error-text", {}, [("e1", failed(error=""))], ["advanced"], "failed", [R, S],
             deliveries=1, expect={"error": news.FAILED_ERROR}),
    Scenario("completed-without-outputs", {}, [("e1", completed(outputs=0))], ["advanced"], "failed", [R, S],
             deliveries=1, expect={"error": news.NO_OUTPUTS_ERROR}),
    Scenario("no-timings-or-nsfw-keeps-what-was-known", {"inference_ms": 99, "has_nsfw_contents": Jsonb([True])},
             [("e1", {k: v for k, v in completed(1).items() if k not in ("timings", "has_nsfw_contents")})],
             ["advanced"], "storing", [R, S], outputs=1, expect={"inference_ms": 99, "has_nsfw_contents": [True]}),
    Scenario("from-processing-with-a-lease-takes-it-over",
             {"status": "processing", "provider_status": "processing", "locked_by": "worker-x", "attempts": 3,
              "locked_until": SEEDED_AT}, [("e1", completed())], ["advanced"], "storing", [R, S], outputs=2,
             expect={"locked_by": None, "attempts": 0}),
    Scenario("from-queued-submit-sent", {"status": "queued", "provider_status": None, "submitted_at": None},
             [("e1", completed(1))], ["advanced"], "storing", [R, S], outputs=1),
    Scenario("already-storing-provider-processing", {"status": "storing", "provider_status": "processing"},
             [("e1", completed())], ["unchanged"], "storing", [R], outputs=2),
    Scenario("failed-then-completed", {}, [("e1", failed()), ("e2", completed())], ["advanced", "late"],
             "failed", [R, S, R], deliveries=1),
    Scenario("terminal-job", {"status": "canceled"}, [("e1", completed())], ["late"], "canceled", [R]),
    Scenario("duplicate-for-a-terminal-job", {"status": "canceled"}, [("e1", completed()), ("e1", failed())],
             ["late", "duplicate"], "canceled", [R, R]),
    Scenario("another-task", {}, [("e1", {**completed(), "id": "task_someone_else"})], ["task_mismatch"],
             "submitted", [R, "provider.task_mismatch"], expect={"provider_status": "created"}),
    Scenario("a-body-without-a-task-id", {}, [("e1", {k: v for k, v in completed().items() if k != "id"})],
             ["task_mismatch"], "submitted", [R, "provider.task_mismatch"]),
    Scenario("task-not-yet-known-is-adopted", {"provider_task_id": None}, [("e1", completed())], ["advanced"],
             "storing", [R, "provider.task_adopted", S], outputs=2),
    Scenario("processing-event", {}, [("e1", {**completed(0), "status": "processing"})], ["advanced"],
             "processing", [R, S], expect={"provider_status": "processing"}),
    Scenario("stale-processing-after-completed", {"status": "storing", "provider_status": "completed"},
             [("e1", {**completed(0), "status": "processing"})], ["unchanged"], "storing", [R],
             expect={"provider_status": "completed"}),
    Scenario("created-event-changes-no-status", {}, [("e1", {**completed(0), "status": "created"})],
             ["unchanged"], "submitted", [R], expect={"provider_status": "created"}),
]


@pytest.fixture(scope="module")
def quiet_database(postgres_server: str) -> Iterator[str]:
    """A database of its own: no worker may store or reconcile a job mid-test."""
    with fresh_database(postgres_server) as url:
        yield url


@pytest.fixture
def quiet_sql(quiet_database: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(quiet_database, autocommit=True) as conn:
        yield conn


def seed(sql: psycopg.Connection[Any], job_id: str, task_id: str | None, overrides: dict[str, Any]) -> None:
    row: dict[str, Any] = {
        "id": job_id, "owner": "news_test", "model": DEV, "status": "submitted",
        "input": Jsonb({"prompt": "a fox", "size": "256*256"}), "metadata": Jsonb({"tenant": "t_1"}),
        "callback_url": "https://backend.example/hook",
        "provider_task_id": task_id, "provider_status": "created", "run_after": SEEDED_AT,
        "submit_sent_at": SEEDED_AT, "submitted_at": SEEDED_AT, "created_at": SEEDED_AT, "updated_at": SEEDED_AT,
    }
    row.update(overrides)
    sql.execute(f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join(['%s'] * len(row))})", list(row.values()))


def fill(prediction: dict[str, Any], task_id: str) -> dict[str, Any]:
    return json.loads(json.dumps(prediction).replace("{task}", task_id))


def item(job_id: str, webhook_id: str, prediction: dict[str, Any]) -> news.News:
    text = json.dumps(prediction, separators=(",", ":"))
    return news.plan(job_id, prediction, source="webhook", reconcile_after=120, webhook_id=webhook_id, body=text)


async def send_all(database_url: str, batches: list[list[news.News]], *, max_flushes: int = 4
                   ) -> list[list[news.Result]]:
    """Each inner list is sent concurrently; the lists one after another."""
    pool = await asyncpg.create_pool(asyncpg_dsn(database_url), min_size=0, max_size=4)
    try:
        writer = NewsWriter(pool, max_flushes=max_flushes)
        results = [list(await asyncio.gather(*(writer.write(i) for i in batch))) for batch in batches]
        # The wake-ups go out after each commit, from a task of their own: sent before the
        # pool closes, as at the service's shutdown (a test reading them lost the last ones).
        await writer.drain()
        return results
    finally:
        await pool.close()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_each_kind_of_news_writes_exactly_its_rows(
    quiet_database: str, quiet_sql: psycopg.Connection[Any], scenario: Scenario
) -> None:
    run = uuid.uuid4().hex[:8]
    job_id, task_id = f"job_n_{run}", f"task_n_{run}"
    seed(quiet_sql, job_id, None if scenario.job.get("provider_task_id", "") is None else task_id,
         {k: v for k, v in scenario.job.items() if k != "provider_task_id"})
    sends = [[item(job_id, f"{hook}_{run}", fill(p, task_id))] for hook, p in scenario.hooks]

    results = asyncio.run(send_all(quiet_database, sends))

    assert [r[0].outcome for r in results] == scenario.outcomes
    with quiet_sql.cursor(row_factory=dict_row) as cur:
        job = cur.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
        events = cur.execute("SELECT type, detail FROM job_events WHERE job_id = %s ORDER BY id", (job_id,)).fetchall()
        outputs = cur.execute("SELECT index, source_url FROM job_outputs WHERE job_id = %s ORDER BY index",
                              (job_id,)).fetchall()
        hooks = cur.execute("SELECT webhook_id, outcome FROM webhook_events WHERE job_id = %s", (job_id,)).fetchall()
        deliveries = cur.execute("SELECT event_type, url, status FROM deliveries WHERE job_id = %s",
                                 (job_id,)).fetchall()
        metadata = cur.execute("SELECT status FROM job_metadata WHERE job_id = %s", (job_id,)).fetchall()
    assert job is not None and job["status"] == scenario.status
    assert [e["type"] for e in events] == scenario.events
    assert len(outputs) == scenario.outputs
    urls = [f"https://cdn.example/{task_id}/{i}.png" for i in range(scenario.outputs)]
    assert [o["source_url"] for o in outputs] == urls
    assert {h["webhook_id"] for h in hooks} == {f"{hook}_{run}" for hook, _ in scenario.hooks}
    assert len(deliveries) == scenario.deliveries
    assert all(d["event_type"] == "job.failed" and d["status"] == "pending" for d in deliveries)
    assert metadata == [{"status": scenario.status}]  # the history trigger fired as for any update
    for column, expected in scenario.expect.items():
        assert job[column] == expected, column
    received = [e["detail"] for e in events if e["type"] == R]
    assert [d["duplicate"] for d in received] == [o == "duplicate" for o in scenario.outcomes]
    changes = [e["detail"] for e in events if e["type"] == S]
    if changes:
        assert changes[0]["to"] == scenario.status and changes[0]["reason"] == "webhook"
    if scenario.status in ("storing", "failed") and changes:
        assert job["run_after"] is not None or scenario.status == "failed"
        assert job["provider_task_id"] == task_id


def test_webhooks_arriving_together_are_one_transaction_each_answered_after_its_commit(
    quiet_database: str, quiet_sql: psycopg.Connection[Any]
) -> None:
    run = uuid.uuid4().hex[:8]
    jobs = [(f"job_g{n}_{run}", f"task_g{n}_{run}") for n in range(40)]
    for job_id, task_id in jobs:
        seed(quiet_sql, job_id, task_id, {})
    seen_committed: list[bool] = []

    async def go() -> list[news.Result]:
        pool = await asyncpg.create_pool(asyncpg_dsn(quiet_database), min_size=0, max_size=2)
        try:
            writer = NewsWriter(pool, max_flushes=1)

            async def one(job_id: str, task_id: str) -> news.Result:
                result = await writer.write(item(job_id, f"w_{job_id}", fill(completed(1), task_id)))
                # Answered: the row must already be visible to any other connection (a
                # blocking check, so nothing else runs between the answer and it).
                row = quiet_sql.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
                seen_committed.append(row == ("storing",))
                return result

            return list(await asyncio.gather(*(one(j, t) for j, t in jobs)))
        finally:
            await pool.close()

    results = asyncio.run(go())
    assert [r.outcome for r in results] == ["advanced"] * 40
    assert seen_committed == [True] * 40
    ids = [j for j, _ in jobs]
    # The first webhook finds the writer idle and goes alone; the other 39 queued behind
    # it and share ONE transaction (one xmin) in every table the path writes.
    for table, column in (("webhook_events", "job_id"), ("job_events", "job_id"), ("job_outputs", "job_id"),
                          ("jobs", "id")):
        xmins = quiet_sql.execute(
            f"SELECT count(DISTINCT xmin::text) FROM {table} WHERE {column} = ANY(%s)", (ids,)).fetchone()
        assert xmins == (2,), table


def test_items_of_one_batch_are_judged_each_on_its_own(quiet_database: str, quiet_sql: psycopg.Connection[Any]) -> None:
    run = uuid.uuid4().hex[:8]
    seed(quiet_sql, f"job_a_{run}", f"task_a_{run}", {})
    seed(quiet_sql, f"job_b_{run}", f"task_b_{run}", {"status": "canceled"})
    seed(quiet_sql, f"job_c_{run}", f"task_c_{run}", {})
    seed(quiet_sql, f"job_d_{run}", f"task_d_{run}", {})
    first = [item(f"job_d_{run}", f"w_d_{run}", fill(failed(), f"task_d_{run}"))]
    batch = [
        item(f"job_a_{run}", f"w_a_{run}", fill(completed(), f"task_a_{run}")),
        item(f"job_b_{run}", f"w_b_{run}", fill(completed(), f"task_b_{run}")),
        item(f"job_c_{run}", f"w_c_{run}", fill(completed(), "task_other")),
        item(f"job_unknown_{run}", f"w_u_{run}", fill(completed(), f"task_u_{run}")),
        item(f"job_d_{run}", f"w_d_{run}", fill(failed(), f"task_d_{run}")),
    ]

    async def go() -> list[news.Result]:
        conn = await asyncpg.connect(asyncpg_dsn(quiet_database))
        try:
            await news.apply(conn, first)
            return await news.apply(conn, batch)  # one statement for all five
        finally:
            await conn.close()

    results = asyncio.run(go())
    assert [r.outcome for r in results] == ["advanced", "late", "task_mismatch", "unknown_job", "duplicate"]
    statuses = dict(quiet_sql.execute("SELECT id, status FROM jobs WHERE id LIKE %s", (f"job_%_{run}",)).fetchall())
    assert statuses == {f"job_a_{run}": "storing", f"job_b_{run}": "canceled", f"job_c_{run}": "submitted",
                        f"job_d_{run}": "failed"}
    unknown = quiet_sql.execute("SELECT job_id, outcome FROM webhook_events WHERE webhook_id = %s",
                                (f"w_u_{run}",)).fetchone()
    assert unknown == (None, "unknown_job")


def test_two_jobs_claiming_one_task_in_one_batch_adopt_it_once(
    quiet_database: str, quiet_sql: psycopg.Connection[Any]
) -> None:
    run = uuid.uuid4().hex[:8]
    task = f"task_shared_{run}"
    for n in (1, 2):
        seed(quiet_sql, f"job_s{n}_{run}", None, {})
    # A writer with one flush at a time: the first webhook goes alone, then both of these
    # share a batch, whose statement fails on provider_task_id's unique key; each is then
    # written alone, and the second finds the task taken.
    batch = [item(f"job_s{n}_{run}", f"w_s{n}_{run}", fill(completed(), task)) for n in (1, 2)]
    seed(quiet_sql, f"job_s0_{run}", f"task_s0_{run}", {})
    opener = item(f"job_s0_{run}", f"w_s0_{run}", fill(completed(), f"task_s0_{run}"))

    async def go() -> list[news.Result]:
        pool = await asyncpg.create_pool(asyncpg_dsn(quiet_database), min_size=0, max_size=2)
        try:
            writer = NewsWriter(pool, max_flushes=1)
            return list(await asyncio.gather(writer.write(opener), *(writer.write(i) for i in batch)))
        finally:
            await pool.close()

    results = asyncio.run(go())
    assert sorted(r.outcome for r in results[1:]) == ["advanced", "task_mismatch"]
    owners = quiet_sql.execute("SELECT id FROM jobs WHERE provider_task_id = %s", (task,)).fetchall()
    assert len(owners) == 1
    # Nothing of the failed batch survived: each webhook is logged exactly once.
    logged = quiet_sql.execute("SELECT count(*) FROM webhook_events WHERE webhook_id = ANY(%s)",
                               ([f"w_s1_{run}", f"w_s2_{run}"],)).fetchone()
    assert logged == (2,)


def test_moves_wake_workers_and_waiters_after_commit_and_duplicates_wake_nobody(
    quiet_database: str, quiet_sql: psycopg.Connection[Any]
) -> None:
    run = uuid.uuid4().hex[:8]
    done_job, failed_job = f"job_wc_{run}", f"job_wf_{run}"
    seed(quiet_sql, done_job, f"task_wc_{run}", {})
    seed(quiet_sql, failed_job, f"task_wf_{run}", {})
    heard: list[tuple[str, str]] = []

    async def go() -> None:
        listener = await asyncpg.connect(asyncpg_dsn(quiet_database))
        try:
            for channel in ("wsj_work", "wsj_done", "wsj_job"):
                await listener.add_listener(channel, lambda _c, _p, ch, payload: heard.append((ch, payload)))
            await send_all(quiet_database, [
                [item(done_job, f"w1_{run}", fill(completed(), f"task_wc_{run}")),
                 item(failed_job, f"w2_{run}", fill(failed(), f"task_wf_{run}"))],
                [item(failed_job, f"w2_{run}", fill(failed(), f"task_wf_{run}"))],  # a duplicate
            ])
            for _ in range(50):  # notifications arrive asynchronously; bounded wait
                if len(heard) >= 4:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # and room for one that should not come
        finally:
            await listener.close()

    asyncio.run(go())
    assert sorted(heard) == sorted([("wsj_work", "storing"), ("wsj_job", done_job), ("wsj_work", "deliver"),
                                    ("wsj_done", failed_job)])


def test_a_late_webhook_for_a_deleted_job_is_logged_without_its_body(
    quiet_database: str, quiet_sql: psycopg.Connection[Any]
) -> None:
    run = uuid.uuid4().hex[:8]
    job_id, task_id = f"job_del_{run}", f"task_del_{run}"
    seed(quiet_sql, job_id, task_id, {"status": "canceled", "deleted_at": SEEDED_AT, "input": Jsonb({})})
    [[result]] = asyncio.run(send_all(quiet_database, [[item(job_id, f"w_del_{run}", fill(completed(), task_id))]]))
    assert result.outcome == "late"
    body = quiet_sql.execute("SELECT body FROM webhook_events WHERE webhook_id = %s", (f"w_del_{run}",)).fetchone()
    assert body == ({},)


def test_the_wake_ups_of_a_batch_are_job_ids_joined_in_few_notifications_each_watcher_woken(
    quiet_database: str, quiet_sql: psycopg.Connection[Any]
) -> None:
    run = uuid.uuid4().hex[:8]
    stored = [f"job_js{n:03d}_{run}" for n in range(500)]
    ended = [f"job_jf{n:03d}_{run}" for n in range(20)]
    for job_id in stored + ended:
        seed(quiet_sql, job_id, f"task_{job_id}", {})
    heard: list[tuple[str, str]] = []

    async def go() -> tuple[bool, bool]:
        notifications = Notifications(asyncpg_dsn(quiet_database))
        listener = await asyncpg.connect(asyncpg_dsn(quiet_database))
        await notifications.start()
        try:
            for channel in ("wsj_work", "wsj_done", "wsj_job"):
                await listener.add_listener(channel, lambda _c, _p, ch, payload: heard.append((ch, payload)))
            watched, waited = notifications.watch(stored[321]), notifications.done_waiter(ended[7])
            await send_all(quiet_database, [
                [item(j, f"w_{j}", fill(completed(1), f"task_{j}")) for j in stored]
                + [item(j, f"w_{j}", fill(failed(), f"task_{j}")) for j in ended]], max_flushes=1)
            for _ in range(100):  # notifications arrive asynchronously; bounded wait, for both channels
                ids = {ch: {j for c, p in heard if c == ch for j in p.split(",")} for ch in ("wsj_job", "wsj_done")}
                if ids["wsj_job"] >= set(stored) and ids["wsj_done"] >= set(ended):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            return watched.is_set(), waited.is_set()
        finally:
            await notifications.stop()
            await listener.close()

    assert asyncio.run(go()) == (True, True)
    job_payloads = [p for ch, p in heard if ch == "wsj_job"]
    done_payloads = [p for ch, p in heard if ch == "wsj_done"]
    # 520 moves in 3 batches (the first alone, then up to 256 each): a few joined
    # notifications, not one per job, each under Postgres's 8,000-byte payload limit.
    assert sorted(j for p in job_payloads for j in p.split(",")) == sorted(stored)
    assert sorted(j for p in done_payloads for j in p.split(",")) == sorted(ended)
    assert len(job_payloads) <= 6 and len(done_payloads) <= 3
    assert max(len(p.encode()) for p in job_payloads + done_payloads) < 8000
    assert sorted({p for ch, p in heard if ch == "wsj_work"}) == ["deliver", "storing"]


def test_joined_wake_ups_keep_duty_names_apart_and_split_long_id_lists() -> None:
    wakes = [("wsj_work", "storing"), ("wsj_job", "job_b"), ("wsj_job", "job_a"), ("wsj_work", "deliver"),
             ("wsj_done", "job_c"), ("wsj_job", "job_a")]
    assert news.joined_wakes(wakes) == [("wsj_work", "deliver"), ("wsj_work", "storing"), ("wsj_done", "job_c"),
                                        ("wsj_job", "job_a,job_b")]
    many = [("wsj_job", f"job_{n:026d}") for n in range(1000)]
    joined = news.joined_wakes(many)
    assert [p for _, p in joined] and all(len(p) <= news.PAYLOAD_BYTES for _, p in joined)
    assert len(joined) == 5 and sorted(j for _, p in joined for j in p.split(",")) == sorted(p for _, p in many)


def test_under_load_a_free_flush_waits_for_company_instead_of_committing_one_webhook(
    quiet_database: str, quiet_sql: psycopg.Connection[Any]
) -> None:
    """16 clients, each sending its next webhook once the last is answered (wrk's closed
    loop): started at once, the first arrival after a commit took the free flush alone,
    and half the batches held one webhook; gathered, few do."""
    run = uuid.uuid4().hex[:8]
    clients = [[f"job_c{c:02d}_{n:02d}_{run}" for n in range(12)] for c in range(16)]
    for job_id in (j for jobs in clients for j in jobs):
        seed(quiet_sql, job_id, f"task_{job_id}", {})

    async def go() -> None:
        pool = await asyncpg.create_pool(asyncpg_dsn(quiet_database), min_size=2, max_size=2)
        try:
            writer = NewsWriter(pool, max_flushes=2)

            async def client(jobs: list[str]) -> None:
                for job_id in jobs:
                    result = await writer.write(item(job_id, f"w_{job_id}", fill(completed(1), f"task_{job_id}")))
                    assert result.outcome == "advanced"

            await asyncio.gather(*(client(jobs) for jobs in clients))
            await writer.drain()  # its wake-ups, before the pool closes
        finally:
            await pool.close()

    asyncio.run(go())
    ids = [j for jobs in clients for j in jobs]
    sizes = [n for (n,) in quiet_sql.execute(
        "SELECT count(*) FROM jobs WHERE id = ANY(%s) AND status = 'storing' GROUP BY xmin::text", (ids,))]
    assert sum(sizes) == len(ids)
    # Started for any arrival, half the batches held one webhook. Gathered, two or three
    # of about 25 do on a quiet machine; the bound leaves room for a loaded one.
    assert sizes.count(1) <= len(sizes) // 3, sorted(sizes, reverse=True)
