"""Money: a budget that cannot be overshot, a ledger that cannot drift, usage from it.

Every figure asserted here is read back through the API (sums of the ledger) and
checked against the jobs themselves."""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from devtools.devstack import free_port
from devtools.serverthread import ServerThread
from service.db.keys import create_key_blocking
from tests.conftest import Service, make_settings, run_service, sim_config
from tests.integration.helpers import sim_tasks, submit, wait_terminal
from tests.processes import ServiceProcess

PRICE = Decimal("0.015")
BODY = {"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "budget", "size": "256*256"}}


def set_owner(database_url: str, owner: str, **values: Any) -> None:
    """owners set, as the CLI does it (the CLI itself is tested in test_owners.py)."""
    columns = ", ".join(f"{k} = %({k})s" for k in values)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO owners (name) VALUES (%s) ON CONFLICT DO NOTHING", (owner,))
        if values:
            conn.execute(f"UPDATE owners SET {columns} WHERE name = %(name)s", {**values, "name": owner})


def ledger_rows(database_url: str, job_id: str) -> dict[str, Decimal]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT kind, amount_usd FROM ledger WHERE job_id = %s", (job_id,)).fetchall()
    return dict(rows)


def owner_key(service: Service, budget: Decimal | None = None, **values: Any) -> tuple[str, str]:
    owner = f"owner_{uuid.uuid4().hex[:8]}"
    key = service.new_key(owner)
    set_owner(service.settings.database_url or "", owner, monthly_budget_usd=budget, **values)
    return owner, key


@pytest.fixture(scope="module")
def api_only(database_url: str, s3_endpoint: str, simulator: ServerThread) -> Iterator[Service]:
    """A service that sends nothing upstream: jobs stay queued, reservations stay held.
    Its /metrics shows the owner series (METRICS_PER_OWNER)."""
    with run_service(database_url, s3_endpoint, simulator.url, run_workers=False, metrics_per_owner=True) as svc:
        yield svc


def test_a_submit_beyond_the_budget_is_a_402_and_creates_nothing(
    api_only: Service, sql: psycopg.Connection[Any]
) -> None:
    owner, key = owner_key(api_only, PRICE * 3)
    with api_only.client(key) as client:
        for _ in range(3):
            assert client.post("/v1/jobs", json=BODY).status_code == 202
        refused = client.post("/v1/jobs", json=BODY)
        four = client.post("/v1/jobs", json={**BODY, "input": {**BODY["input"], "num_images": 4}})
        me = client.get("/v1/owner").json()
    assert refused.status_code == 402, refused.text
    error = refused.json()["error"]
    assert error["type"] == "budget_exceeded"
    assert "$0.00 left" in error["message"] and "needs $0.015" in error["message"]
    assert four.status_code == 402 and "needs $0.06" in four.json()["error"]["message"]
    count = sql.execute("SELECT count(*) FROM jobs WHERE owner = %s", (owner,)).fetchone()
    assert count == (3,)
    assert me["budget"] == {**me["budget"], "monthly_usd": "0.045", "spent_usd": "0.00", "reserved_usd": "0.045",
                            "remaining_usd": "0.00"}


def test_an_idempotent_replay_is_not_reserved_twice(api_only: Service, sql: psycopg.Connection[Any]) -> None:
    owner, key = owner_key(api_only, PRICE)
    with api_only.client(key) as client:
        first = client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "once"})
        again = client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "once"})
        other = client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "twice"})
    assert (first.status_code, again.status_code, other.status_code) == (202, 200, 402)
    assert again.json()["id"] == first.json()["id"]
    reserves = sql.execute("SELECT count(*) FROM ledger WHERE owner = %s AND kind = 'reserve'", (owner,)).fetchone()
    assert reserves == (1,)


def test_the_facade_answers_the_refusal_in_its_envelope(api_only: Service) -> None:
    _, key = owner_key(api_only, Decimal(0))
    with api_only.client(key) as client:
        answer = client.post("/api/v3/wavespeed-ai/flux-dev-lora", json={"prompt": "x", "size": "256*256"})
    assert answer.status_code == 402
    body = answer.json()
    assert body["code"] == 402 and body["data"] is None and "budget" in body["message"]


def test_cancel_releases_the_reservation_in_the_same_transaction(api_only: Service) -> None:
    # Paused, so the job is still queued when canceled: the session's own service runs
    # workers on this database, and a job whose task went upstream keeps its reservation.
    _, key = owner_key(api_only, PRICE, paused=True)
    with api_only.client(key) as client:
        job = client.post("/v1/jobs", json=BODY).json()
        assert client.post("/v1/jobs", json=BODY).status_code == 402
        assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
        assert client.get("/v1/owner").json()["budget"]["reserved_usd"] == "0.00"
        assert client.post("/v1/jobs", json=BODY).status_code == 202
    assert ledger_rows(api_only.settings.database_url or "", job["id"]) == {"reserve": PRICE, "release": PRICE}


@pytest.mark.slow
def test_200_parallel_submits_through_two_processes_never_overshoot(
    own_db: str, s3_endpoint: str, simulator: ServerThread, tmp_path: Path
) -> None:
    allowed = 37
    owner = "tight"
    key = create_key_blocking(own_db, owner)
    set_owner(own_db, owner, monthly_budget_usd=PRICE * allowed)
    with contextlib.ExitStack() as stack:
        urls = []
        for i in range(2):
            port = free_port()
            # A small pool: submits of one owner pass its row lock one at a time anyway, and
            # the machine's Postgres is shared (max_connections).
            settings = make_settings(own_db, s3_endpoint, simulator.url, port, db_pool_size=4)
            proc = ServiceProcess(["serve", "--no-workers", "--host", "127.0.0.1", "--port", str(port)], settings,
                                  tmp_path / f"serve{i}.log", port)
            stack.enter_context(proc)
            urls.append(proc.url)

        def post(i: int) -> int:
            with httpx.Client(timeout=60) as c:
                r = c.post(urls[i % 2] + "/v1/jobs", json=BODY, headers={"Authorization": f"Bearer {key}"})
                return r.status_code

        with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
            codes = list(pool.map(post, range(200)))
    assert codes.count(202) == allowed and codes.count(402) == 200 - allowed, sorted(set(codes))
    with psycopg.connect(own_db) as conn:
        jobs = conn.execute("SELECT count(*) FROM jobs WHERE owner = %s", (owner,)).fetchone()
        reserved = conn.execute("SELECT sum(amount_usd) FROM ledger WHERE owner = %s AND kind = 'reserve'",
                                (owner,)).fetchone()
    assert jobs == (allowed,)
    assert reserved == (PRICE * allowed,)


def test_completion_spends_cost_usd_and_failure_spends_nothing(
    service: Service, sim_defaults: ServerThread, sql: psycopg.Connection[Any]
) -> None:
    _, key = owner_key(service, PRICE * 10)
    with service.client(key) as client:
        done = wait_terminal(client, submit(client, input={"num_images": 2})["id"])
        sim_config(sim_defaults, failure_rate=1.0)
        failed = wait_terminal(client, submit(client)["id"])
        me = client.get("/v1/owner").json()["budget"]
    assert done["status"] == "completed" and done["cost_usd"] == "0.03"
    assert failed["status"] == "failed"
    assert ledger_rows(service.settings.database_url or "", done["id"]) == {
        "reserve": PRICE * 2, "spend": PRICE * 2, "release": PRICE * 2}
    assert ledger_rows(service.settings.database_url or "", failed["id"]) == {"reserve": PRICE, "release": PRICE}
    assert (me["spent_usd"], me["reserved_usd"], me["remaining_usd"]) == ("0.03", "0.00", "0.12")


def test_any_update_that_completes_a_job_spends_it(api_only: Service, sql: psycopg.Connection[Any]) -> None:
    """The guard for every other completion path (provider news in batches included):
    the spend and release are written by the trigger on jobs.status, so a completion
    written by plain SQL, outside jobs.transition, settles the money just the same."""
    _, key = owner_key(api_only, PRICE * 4)
    with api_only.client(key) as client:
        job = client.post("/v1/jobs", json={**BODY, "input": {**BODY["input"], "num_images": 3}}).json()
    sql.execute("INSERT INTO job_outputs (job_id, index, source_url) SELECT %s, i, 'x' FROM generate_series(0, 1) i",
                (job["id"],))
    sql.execute("UPDATE jobs SET status = 'storing' WHERE id = %s", (job["id"],))
    assert ledger_rows(api_only.settings.database_url or "", job["id"]) == {"reserve": PRICE * 3}
    sql.execute("UPDATE jobs SET status = 'completed', cost_usd = 0.03 WHERE id = %s", (job["id"],))
    sql.execute("UPDATE jobs SET status = 'completed' WHERE id = %s", (job["id"],))  # a replay changes nothing
    assert ledger_rows(api_only.settings.database_url or "", job["id"]) == {
        "reserve": PRICE * 3, "spend": Decimal("0.03"), "release": PRICE * 3}
    images = sql.execute("SELECT images FROM ledger WHERE job_id = %s AND kind = 'spend'", (job["id"],)).fetchone()
    assert images == (2,)


def test_the_ledger_is_append_only(api_only: Service, sql: psycopg.Connection[Any]) -> None:
    _, key = owner_key(api_only)
    with api_only.client(key) as client:
        job = client.post("/v1/jobs", json=BODY).json()
    with pytest.raises(psycopg.errors.RaiseException):
        sql.execute("UPDATE ledger SET amount_usd = 0 WHERE job_id = %s", (job["id"],))
    with pytest.raises(psycopg.errors.RaiseException):
        sql.execute("DELETE FROM ledger WHERE job_id = %s", (job["id"],))


def test_release_reservation_is_one_idempotent_statement(api_only: Service, sql: psycopg.Connection[Any]) -> None:
    """What the erasure of a queued job calls (`ledger_release`): the release is written once."""
    _, key = owner_key(api_only, PRICE)
    with api_only.client(key) as client:
        job = client.post("/v1/jobs", json=BODY).json()
    sql.execute("SELECT ledger_release(%s)", (job["id"],))
    sql.execute("SELECT ledger_release(%s)", (job["id"],))
    sql.execute("DELETE FROM jobs WHERE id = %s", (job["id"],))  # and a hard delete releases too (no double)
    assert ledger_rows(api_only.settings.database_url or "", job["id"]) == {"reserve": PRICE, "release": PRICE}


def test_usage_sums_completed_jobs_by_day_and_model(
    service: Service, sim_defaults: ServerThread, sql: psycopg.Connection[Any]
) -> None:
    _, key = owner_key(service)
    with service.client(key) as client:
        ids = [submit(client, input={"num_images": n})["id"] for n in (1, 2)]
        ids.append(submit(client, model="wavespeed-ai/flux-krea-dev-lora")["id"])
        jobs = [wait_terminal(client, i) for i in ids]
        by_day = client.get("/v1/usage").json()
        by_model = client.get("/v1/usage", params={"group_by": "model"}).json()
        before = client.get("/v1/usage", params={"from": "2020-01-01T00:00:00Z", "to": "2020-02-01T00:00:00Z"}).json()
    assert all(j["status"] == "completed" for j in jobs)
    total = sum(Decimal(j["cost_usd"]) for j in jobs)
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    assert by_day["data"] == [{"key": today, "jobs": 3, "images": 4, "cost_usd": "0.06"}]
    assert Decimal(by_day["total"]["cost_usd"]) == total
    assert {r["key"]: r["images"] for r in by_model["data"]} == {"wavespeed-ai/flux-dev-lora": 3,
                                                                 "wavespeed-ai/flux-krea-dev-lora": 1}
    assert before["data"] == [] and before["total"] == {"jobs": 0, "images": 0, "cost_usd": "0.00"}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-13-01"}, "to"),
        ({"from": "0001-01-01T00:00:00+01:00"}, "from"),
        ({"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to"),
        ({"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to"),
        ({"group_by": "owner"}, "group_by"),
        ({"group_by": "day\x00"}, "group_by"),
        ({"limit": "5"}, "limit"),
        ({"from": "2" * 5000}, "from"),
    ],
)
def test_hostile_usage_queries_are_422_naming_the_field(api_only: Service, query: dict[str, str], field: str) -> None:
    with api_only.client() as client:
        answer = client.get("/v1/usage", params=query)
    assert answer.status_code == 422, answer.text
    assert [f["loc"] for f in answer.json()["error"]["fields"]] == [field]


def test_every_owner_endpoint_needs_a_key(api_only: Service) -> None:
    for path in ("/v1/owner", "/v1/usage"):
        assert httpx.get(api_only.url + path).status_code == 401


def test_nothing_goes_upstream_for_a_refused_submit(
    service: Service, sim_defaults: ServerThread
) -> None:
    _, key = owner_key(service, Decimal(0))
    with service.client(key) as client:
        refused = client.post("/v1/jobs", json={**BODY, "input": {"prompt": "refused-marker-7781", "size": "256*256"}})
    assert refused.status_code == 402
    assert not [t for t in sim_tasks(sim_defaults.url) if "refused-marker-7781" in str(t)]


def test_a_bulk_retry_is_reserved_and_refused_past_the_budget(api_only: Service, sql: psycopg.Connection[Any]) -> None:
    """Retries are submits too: each reserves its retried job's estimate, and a batch
    the budget cannot cover is a 402 that creates nothing. Paused, so no job goes upstream
    (the session's own service runs workers on this database)."""
    owner, key = owner_key(api_only, PRICE * 3, paused=True)
    with api_only.client(key) as client:
        ids = [client.post("/v1/jobs", json={**BODY, "metadata": {"batch": "r"}}).json()["id"] for _ in range(2)]
        sql.execute("UPDATE jobs SET status = 'failed' WHERE id = ANY(%s)", (ids,))  # releases both
        body = {"action": "retry", "filter": {"status": ["failed"], "metadata": {"batch": "r"}}}
        done = client.post("/v1/jobs/bulk", json=body)
        assert done.status_code == 200 and done.json()["affected"] == 2, done.text
        assert client.get("/v1/owner").json()["budget"]["reserved_usd"] == "0.03"
        copies = [r[0] for r in sql.execute("SELECT id FROM jobs WHERE retry_of = ANY(%s)", (ids,)).fetchall()]
        sql.execute("UPDATE jobs SET status = 'failed' WHERE id = ANY(%s)", (copies,))
        for _ in range(2):  # $0.03 of the $0.045 reserved: two retries ($0.03) no longer fit
            assert client.post("/v1/jobs", json=BODY).status_code == 202
        refused = client.post("/v1/jobs/bulk", json=body)
    assert refused.status_code == 402 and refused.json()["error"]["type"] == "budget_exceeded", refused.text
    assert sql.execute("SELECT count(*) FROM jobs WHERE owner = %s", (owner,)).fetchone() == (6,)
    tags = sql.execute("SELECT vtag FROM jobs WHERE id = ANY(%s)", (copies,)).fetchall()
    assert all(t[0] > 0 for t in tags)  # in turn after the owner's jobs, not ahead of everyone


def test_deleting_a_queued_job_releases_its_reservation(api_only: Service) -> None:
    # Paused: the session's own service runs workers on this database, and a job whose
    # task went upstream keeps its reservation when deleted (test_money_after_cancel.py).
    _, key = owner_key(api_only, PRICE, paused=True)
    with api_only.client(key) as client:
        job = client.post("/v1/jobs", json=BODY).json()
        assert client.delete(f"/v1/jobs/{job['id']}").status_code == 202
        budget = client.get("/v1/owner").json()["budget"]
        assert client.post("/v1/jobs", json=BODY).status_code == 202  # the budget is free again
    assert (budget["reserved_usd"], budget["remaining_usd"]) == ("0.00", "0.015")
    assert ledger_rows(api_only.settings.database_url or "", job["id"]) == {"reserve": PRICE, "release": PRICE}


def test_metrics_show_each_owners_spend_reservations_and_waiting_jobs(api_only: Service) -> None:
    # Paused: the session's own service runs workers on this database and would otherwise
    # send these jobs upstream before /metrics is read (their reservations stay either way).
    owner, key = owner_key(api_only, PRICE * 10, paused=True)
    with api_only.client(key) as client:
        for priority in (1, 1, 7):
            client.post("/v1/jobs", json={**BODY, "priority": priority})
    text = httpx.get(api_only.url + "/metrics", timeout=10).text
    assert f'wavespeed_jobs_owner_reserved_usd{{owner="{owner}"}} 0.045' in text
    assert f'wavespeed_jobs_owner_spent_usd{{owner="{owner}"}} 0.0' in text
    assert f'wavespeed_jobs_owner_jobs_waiting{{owner="{owner}",priority="1"}} 2.0' in text
    assert f'wavespeed_jobs_owner_jobs_waiting{{owner="{owner}",priority="7"}} 1.0' in text
    # The budget too (the owner-near-budget alert divides by it), for owners that have one.
    assert f'wavespeed_jobs_owner_budget_usd{{owner="{owner}"}} 0.15' in text
    unlimited, _ = owner_key(api_only)
    text = httpx.get(api_only.url + "/metrics", timeout=10).text
    assert f'wavespeed_jobs_owner_spent_usd{{owner="{unlimited}"}} 0.0' in text
    assert f'wavespeed_jobs_owner_budget_usd{{owner="{unlimited}"}}' not in text
