"""Canceling jobs and holding the create answer with ``?wait=N``."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import httpx
import psycopg
import pytest

from devtools.serverthread import ServerThread
from tests.conftest import Service, fresh_database, run_service, sim_config
from tests.integration.helpers import eventually, sim_tasks, submit, wait_terminal
from tests.servers import WebhookCatcher

# The ?wait hold (wait_terminal()) re-reads the job at least every 5 s even if no
# NOTIFY arrives; an answer well inside that proves the NOTIFY woke it.
FALLBACK_REREAD_SECONDS = 5.0


def events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return client.get(f"/v1/jobs/{job_id}/events").json()["data"]  # type: ignore[no-any-return]


def parse_time(value: str) -> float:
    return dt.datetime.fromisoformat(value).timestamp()


# --------------------------------------------------------------------------- cancel


def test_cancel_before_submit_never_reaches_the_provider(
    postgres_server: str, s3_endpoint: str, simulator: ServerThread, catcher: WebhookCatcher
) -> None:
    """On a database of its own: the job is created and canceled while no worker runs,
    then workers start and must leave it alone (while finishing a job created after it)."""
    with fresh_database(postgres_server) as db:
        with run_service(db, s3_endpoint, simulator.url, run_workers=False) as api_only, api_only.client() as c:
            key = c.headers["Authorization"].removeprefix("Bearer ")
            job = submit(c, callback_url=catcher.url("/cb"))
            canceled = c.post(f"/v1/jobs/{job['id']}/cancel")
            assert canceled.status_code == 200, canceled.text
            assert canceled.json()["status"] == "canceled"
        with run_service(db, s3_endpoint, simulator.url) as workers, workers.client(key) as c:
            # Work is claimed oldest first: once a later job has been submitted and
            # finished, the canceled one has been passed over, not merely not reached yet.
            later = wait_terminal(c, submit(c, prompt="after the cancel")["id"])
            assert later["status"] == "completed"
            [request] = catcher.wait_for(1, timeout=15)
            assert request.json()["type"] == "job.canceled"
            assert request.json()["data"]["id"] == job["id"]
            final = c.get(f"/v1/jobs/{job['id']}").json()
            types = [e["type"] for e in events(c, job["id"])]
    assert final["status"] == "canceled"
    assert final["provider"]["task_id"] is None
    assert not [t for t in types if t.startswith("submit.")]
    # Each upstream task carries its job's own webhook URL, so it names the job.
    webhook_urls = [t["webhook_url"] or "" for t in sim_tasks(simulator.url)]
    assert not [u for u in webhook_urls if u.endswith("/" + job["id"])]
    assert [u for u in webhook_urls if u.endswith("/" + later["id"])]  # the check above looks at the right place


def test_cancel_after_submit_records_the_late_result_and_delivers_only_canceled(
    client: httpx.Client, sim_defaults: ServerThread, catcher: WebhookCatcher, sql: psycopg.Connection[Any]
) -> None:
    sim_config(sim_defaults, completion_delay=2.0)
    job = submit(client, callback_url=catcher.url("/cb"))
    eventually(lambda: client.get(f"/v1/jobs/{job['id']}").json()["provider"]["task_id"], timeout=15)
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "canceled"

    # The provider finishes anyway; its webhook is recorded against the canceled job.
    def late_webhook() -> list[dict[str, Any]]:
        return [e for e in events(client, job["id"])
                if e["type"] == "webhook.received" and e["detail"]["status"] == "completed"]

    eventually(late_webhook, timeout=20)
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["status"] == "canceled"
    # The verified event itself is kept, outputs and all, for whoever wants it later.
    late = sql.execute("SELECT body FROM webhook_events WHERE job_id = %s AND body->>'status' = 'completed'",
                       (job["id"],)).fetchall()
    assert late and late[0][0]["outputs"]

    eventually(lambda: client.get(f"/v1/jobs/{job['id']}").json()["callback"]["status"] == "delivered")
    types = [r.json()["type"] for r in catcher.snapshot()]
    assert types == ["job.canceled"]
    # A completed event could only ever be queued by a transition to completed, in the
    # same transaction; the job's deliveries show there is none, now or later.
    rows = sql.execute("SELECT event_type FROM deliveries WHERE job_id = %s", (job["id"],)).fetchall()
    assert rows == [("job.canceled",)]


def test_cancel_of_a_terminal_job_is_409_naming_the_status(client: httpx.Client) -> None:
    job = submit(client)
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    again = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["fields"][0]["loc"] == "status"


def test_cancel_of_another_owners_job_is_404(client: httpx.Client, service: Service) -> None:
    job = submit(client)
    with service.client() as stranger:
        assert stranger.post(f"/v1/jobs/{job['id']}/cancel").status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] != "canceled"


# --------------------------------------------------------------------------- wait


def test_wait_answers_as_soon_as_the_job_completes(client: httpx.Client) -> None:
    body = {"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "a quick fox", "size": "256*256"}}
    response = client.post("/v1/jobs?wait=30", json=body)
    answered = time.time()
    assert response.status_code == 202
    job = response.json()
    assert job["status"] == "completed"
    assert job["outputs"] and job["outputs"][0]["sha256"]
    lag = answered - parse_time(job["completed_at"])
    print(f"\n?wait answered {lag * 1000:.0f} ms after completed_at")
    assert lag < FALLBACK_REREAD_SECONDS / 2


def test_wait_is_woken_by_a_cancel_from_another_request(client: httpx.Client, sim_defaults: ServerThread) -> None:
    sim_config(sim_defaults, completion_delay=30.0)
    result: dict[str, Any] = {}

    def create() -> None:
        body = {"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "held", "size": "256*256"},
                "metadata": {"case": "wait-cancel"}}
        result["response"] = client.post("/v1/jobs?wait=30", json=body)
        result["at"] = time.monotonic()

    waiter = threading.Thread(target=create)
    waiter.start()
    try:
        job = eventually(lambda: client.get("/v1/jobs?metadata.case=wait-cancel").json()["data"], timeout=10)[0]
        canceled_at = time.monotonic()
        assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    finally:
        waiter.join(40)
    assert result["response"].json()["status"] == "canceled"
    lag = result["at"] - canceled_at
    print(f"\n?wait answered {lag * 1000:.0f} ms after the cancel")
    assert lag < FALLBACK_REREAD_SECONDS / 2


def test_wait_on_a_slow_job_answers_with_the_job_as_it_stands_after_n_seconds(
    client: httpx.Client, sim_defaults: ServerThread
) -> None:
    sim_config(sim_defaults, completion_delay=10.0)
    body = {"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "a slow snail", "size": "256*256"}}
    started = time.monotonic()
    response = client.post("/v1/jobs?wait=1.5", json=body)
    elapsed = time.monotonic() - started
    assert response.status_code == 202
    job = response.json()
    assert job["status"] in ("queued", "submitted", "processing")
    assert elapsed >= 1.5  # it did hold the answer for the N seconds asked
    client.post(f"/v1/jobs/{job['id']}/cancel")


@pytest.mark.parametrize("value", ["61", "-1", "soon", "nan", "inf"])
def test_wait_out_of_range_is_422_naming_wait(client: httpx.Client, value: str) -> None:
    body = {"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "x", "size": "256*256"}}
    response = client.post(f"/v1/jobs?wait={value}", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["fields"][0]["loc"] == "wait"
