"""The receiver's one-statement fast path (service/webhook_store.py) writes exactly what
the general path (``record`` + ``jobs.apply_prediction``) writes.

Each scenario seeds two identical jobs, sends the same webhooks to one through the fast
path (falling back as the receiver does) and to the other through the general path
alone, and compares every row either wrote: the job, its outputs, its events, the raw
webhook log, queued callbacks and the rows triggers keep beside the job. Ids, task ids
and webhook-ids of the twins differ only by the job id in them, and timestamps are
compared as "unset / as seeded / set just now".
Each scenario also says whether the fast path must have handled it, so a fast path that
quietly deferred everything could not pass.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import types
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from service.api.webhooks import record
from service.db.engine import create_engine
from service.db.webhook_store import final_news, open_store
from service.settings import Settings
from tests.conftest import fresh_database

SEEDED_AT = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
DEV = "wavespeed-ai/flux-dev-lora"
TIMESTAMPS = ("run_after", "locked_until", "submit_sent_at", "deadline_at", "last_news_at", "created_at",
              "updated_at", "submitted_at", "completed_at")


@dataclass
class Scenario:
    name: str
    job: dict[str, Any]  # column overrides of the seeded job
    hooks: list[tuple[str, dict[str, Any]]]  # (webhook-id, prediction) in order; "{task}" is replaced
    fast: list[bool]  # per hook: must the fast path have handled it?
    outcomes: list[str] = field(default_factory=list)


def completed(outputs: int = 2, **extra: Any) -> dict[str, Any]:
    urls = [f"https://cdn.example/{{task}}/{i}.png" for i in range(outputs)]
    return {"id": "{task}", "model": DEV, "status": "completed", "outputs": urls,
            "has_nsfw_contents": [False] * outputs, "error": "", "timings": {"inference": 1234}, **extra}


def failed(**extra: Any) -> dict[str, Any]:
    return {"id": "{task}", "model": DEV, "status": "failed", "outputs": [], "error": "the GPU caught fire",
            "timings": {"inference": 7}, **extra}


SCENARIOS = [
    Scenario("completed", {}, [("e1", completed())], [True], ["advanced"]),
    Scenario("completed-then-duplicate", {}, [("e1", completed()), ("e1", completed())], [True, True],
             ["advanced", "duplicate"]),
    Scenario("completed-then-resent-under-a-new-id", {}, [("e1", completed()), ("e2", completed())], [True, False],
             ["advanced", "unchanged"]),
    Scenario("failed-with-callback", {}, [("e1", failed())], [True], ["advanced"]),
    Scenario("failed-without-callback", {"callback_url": None}, [("e1", failed())], [True], ["advanced"]),
    Scenario("failed-without-error-text", {}, [("e1", failed(error=""))], [True], ["advanced"]),
    Scenario("completed-without-outputs", {}, [("e1", completed(outputs=0))], [True], ["advanced"]),
    Scenario("no-timings-or-nsfw", {"inference_ms": 99, "has_nsfw_contents": Jsonb([True])},
             [("e1", {k: v for k, v in completed(1).items() if k not in ("timings", "has_nsfw_contents")})],
             [True], ["advanced"]),
    Scenario("from-processing-with-a-lease", {"status": "processing", "provider_status": "processing",
                                              "locked_by": "worker-x", "attempts": 3,
                                              "locked_until": SEEDED_AT, "submitted_at": None},
             [("e1", completed())], [True], ["advanced"]),
    Scenario("from-queued-submit-sent", {"status": "queued", "provider_status": None, "submitted_at": None},
             [("e1", completed(1))], [True], ["advanced"]),
    Scenario("already-storing-provider-processing", {"status": "storing", "provider_status": "processing"},
             [("e1", completed())], [True], ["unchanged"]),
    Scenario("failed-then-completed", {}, [("e1", failed()), ("e2", completed())], [True, False],
             ["advanced", "late"]),
    Scenario("terminal-job", {"status": "canceled", "completed_at": SEEDED_AT}, [("e1", completed())], [False],
             ["late"]),
    Scenario("duplicate-for-a-terminal-job", {"status": "canceled"}, [("e1", completed()), ("e1", failed())],
             [False, True], ["late", "duplicate"]),
    Scenario("another-task", {}, [("e1", {**completed(), "id": "task_someone_else"})], [False], ["task_mismatch"]),
    Scenario("task-not-yet-known", {"provider_task_id": None}, [("e1", completed())], [False], ["advanced"]),
    Scenario("processing-event", {}, [("e1", {**completed(0), "status": "processing"})], [False], ["advanced"]),
]


@pytest.fixture(scope="module")
def quiet_database(postgres_server: str) -> Iterator[str]:
    """A database of its own: the session's service runs workers on the shared one, and a
    worker storing or reconciling one twin mid-test would make the twins differ."""
    with fresh_database(postgres_server) as url:
        yield url


@pytest.fixture
def quiet_sql(quiet_database: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(quiet_database, autocommit=True) as conn:
        yield conn


def seed(sql: psycopg.Connection[Any], job_id: str, task_id: str, overrides: dict[str, Any]) -> None:
    row: dict[str, Any] = {
        "id": job_id, "owner": "fast_path_test", "model": DEV, "status": "submitted",
        "input": Jsonb({"prompt": "a fox", "size": "256*256"}), "metadata": Jsonb({"tenant": "t_1"}),
        "callback_url": "https://backend.example/hook",
        "provider_task_id": task_id, "provider_status": "created", "run_after": SEEDED_AT,
        "submit_sent_at": SEEDED_AT, "submitted_at": SEEDED_AT, "deadline_at": SEEDED_AT,
        "created_at": SEEDED_AT, "updated_at": SEEDED_AT,
    }
    row.update(overrides)
    if overrides.get("provider_task_id", "") is None:
        row["provider_task_id"] = None
    columns = ", ".join(row)
    sql.execute(f"INSERT INTO jobs ({columns}) VALUES ({', '.join(['%s'] * len(row))})", list(row.values()))


def fill(prediction: dict[str, Any], task_id: str) -> dict[str, Any]:
    return json.loads(json.dumps(prediction).replace("{task}", task_id))


def rows(sql: psycopg.Connection[Any], job_id: str, task_id: str) -> dict[str, Any]:
    """Everything written about one twin, with its own ids and times made comparable."""

    def norm(value: Any) -> Any:
        if isinstance(value, dt.datetime):
            return "seeded" if value == SEEDED_AT else "now"
        if isinstance(value, str):
            return value.replace(job_id, "JOB").replace(task_id, "TASK")
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items()}
        if isinstance(value, list):
            return [norm(v) for v in value]
        return value

    with sql.cursor(row_factory=dict_row) as cur:
        job = cur.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
        outputs = cur.execute("SELECT * FROM job_outputs WHERE job_id = %s ORDER BY index", (job_id,)).fetchall()
        events = cur.execute("SELECT type, detail FROM job_events WHERE job_id = %s ORDER BY id", (job_id,)).fetchall()
        hooks = cur.execute("SELECT webhook_id, task_id, body, outcome FROM webhook_events WHERE job_id = %s "
                            "ORDER BY id", (job_id,)).fetchall()
        # Kept by triggers on jobs (migrations 0003, 0004): they must fire the same way.
        metadata = cur.execute("SELECT key, value, status FROM job_metadata WHERE job_id = %s", (job_id,)).fetchall()
        deliveries = cur.execute("SELECT job_id, event_type, url, body, status, attempts, next_attempt_at IS NOT NULL "
                                 "AS due FROM deliveries WHERE job_id = %s", (job_id,)).fetchall()
    return norm({"job": job, "outputs": outputs, "events": events, "hooks": hooks, "deliveries": deliveries,
                 "metadata": metadata})


async def play(database_url: str, scenario: Scenario, twins: dict[str, tuple[str, str]]) -> dict[str, list[Any]]:
    """Send the scenario's webhooks to twin "fast" as the receiver does and to twin
    "general" through ``record`` only; return each twin's outcomes and which path took them."""
    settings = Settings(database_url=database_url, db_pool_size=2)
    engine = create_engine(database_url, 2)
    res = types.SimpleNamespace(engine=engine, settings=settings)
    seen: dict[str, list[Any]] = {"fast": [], "general": [], "used_fast": []}
    try:
        async with open_store(settings) as store:
            for webhook_id, template in scenario.hooks:
                for twin, (job_id, task_id) in twins.items():
                    prediction = fill(template, task_id)
                    text = json.dumps(prediction, separators=(",", ":"))
                    hook_id = f"{webhook_id}-{job_id}"
                    task = prediction.get("id") if isinstance(prediction.get("id"), str) else None
                    outcome = None
                    if twin == "fast":
                        news = final_news(prediction)
                        if news is not None:
                            outcome = await store.record_final(hook_id, job_id, prediction, text, news)
                        seen["used_fast"].append(outcome is not None)
                    if outcome is None:
                        outcome = await record(res, hook_id, job_id, task, prediction, text.encode())
                    seen[twin].append(outcome)
    finally:
        await engine.dispose()
    return seen


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_the_fast_path_writes_what_the_general_path_writes(
    quiet_database: str, quiet_sql: psycopg.Connection[Any], scenario: Scenario
) -> None:
    database_url, sql = quiet_database, quiet_sql
    run = uuid.uuid4().hex[:8]
    twins = {twin: (f"job_fp_{twin}_{run}", f"task_fp_{twin}_{run}") for twin in ("fast", "general")}
    for job_id, task_id in twins.values():
        seed(sql, job_id, task_id, scenario.job)

    seen = asyncio.run(play(database_url, scenario, twins))

    assert seen["fast"] == seen["general"] == scenario.outcomes
    assert seen["used_fast"] == scenario.fast
    fast, general = rows(sql, *twins["fast"]), rows(sql, *twins["general"])
    assert fast == general
    # Sanity: the comparison saw real writes, not two empty sets.
    assert len(fast["events"]) >= len(scenario.hooks)


async def _listen_while(database_url: str, sends: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[str, str]]:
    """Record what arrives on the service's channels while ``sends`` go through the fast path."""
    import asyncpg

    from service.db.engine import asyncpg_dsn
    from service.db.queries import CHANNEL_DONE, CHANNEL_WORK

    heard: list[tuple[str, str]] = []
    listener = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        for channel in (CHANNEL_WORK, CHANNEL_DONE):
            await listener.add_listener(channel, lambda _c, _p, ch, payload: heard.append((ch, payload)))
        async with open_store(Settings(database_url=database_url, db_pool_size=2)) as store:
            for job_id, hook_id, prediction in sends:
                news = final_news(prediction)
                assert news is not None
                text = json.dumps(prediction)
                assert await store.record_final(hook_id, job_id, prediction, text, news) is not None
        for _ in range(50):  # notifications arrive asynchronously; bounded wait
            if len(heard) >= 3:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # and room for one that should not come
    finally:
        await listener.close()
    return heard


def test_the_fast_path_wakes_workers_and_waiters_after_commit(
    quiet_database: str, quiet_sql: psycopg.Connection[Any]
) -> None:
    run = uuid.uuid4().hex[:8]
    done_job, failed_job = f"job_fp_wake_c_{run}", f"job_fp_wake_f_{run}"
    seed(quiet_sql, done_job, f"task_wc_{run}", {})
    seed(quiet_sql, failed_job, f"task_wf_{run}", {})
    heard = asyncio.run(_listen_while(quiet_database, [
        (done_job, f"w1_{run}", fill(completed(), f"task_wc_{run}")),
        (failed_job, f"w2_{run}", fill(failed(), f"task_wf_{run}")),
        (failed_job, f"w2_{run}", fill(failed(), f"task_wf_{run}")),  # a duplicate wakes nobody
    ]))
    # What jobs.transition would NOTIFY: the storer for the stored job, the notifier and
    # any ?wait= waiter for the failed one; nothing twice.
    assert sorted(heard) == sorted([("wsj_work", "storing"), ("wsj_work", "deliver"), ("wsj_done", failed_job)])
