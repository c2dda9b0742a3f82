"""Money after a cancel (the contract's "Money"): a job canceled or deleted after its task
went upstream keeps its reservation while the provider may still make the task; the
task's completion spends price × images made (the job keeps its status and shows its
cost_usd, no job.completed callback), its failure, or silence until the deadline,
releases it. So submit → cancel loops cannot grow the provider's bill past the budget.

The provider here is the simulator over HTTP, holding each task until the test lets it
finish (``/_sim/tasks/{id}/finish``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devtools.serverthread import ServerThread
from tests.conftest import Service, fresh_database, run_service, sim_config
from tests.integration.helpers import events_of, eventually, submit
from tests.integration.test_budget import PRICE, ledger_rows, owner_key
from tests.servers import WebhookCatcher


def sent_upstream(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """The job, once the provider has accepted its task."""
    def check() -> dict[str, Any] | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["provider"]["task_id"] and job["status"] in ("submitted", "processing") else None

    return eventually(check, timeout=30)


def finish(simulator: ServerThread, task_id: str) -> None:
    httpx.post(f"{simulator.url}/_sim/tasks/{task_id}/finish", timeout=5).raise_for_status()


def end_after_submit(client: httpx.Client, job_id: str, how: str) -> None:
    answer = client.post(f"/v1/jobs/{job_id}/cancel") if how == "cancel" else client.delete(f"/v1/jobs/{job_id}")
    assert answer.status_code in (200, 202), answer.text
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "canceled"


def budget(client: httpx.Client) -> tuple[str, str, str]:
    figures = client.get("/v1/owner").json()["budget"]
    return figures["spent_usd"], figures["reserved_usd"], figures["remaining_usd"]


@pytest.mark.parametrize("how", ["cancel", "delete"])
def test_a_job_ended_after_submit_whose_task_completes_is_billed_and_the_budget_holds(
    service: Service, sim_defaults: ServerThread, how: str
) -> None:
    _, key = owner_key(service, PRICE * 3)
    sim_config(sim_defaults, completion_delay=120.0)
    with WebhookCatcher() as catcher, service.client(key) as client:
        job = sent_upstream(client, submit(client, callback_url=catcher.url())["id"])
        end_after_submit(client, job["id"], how)
        # The task may still be made: its reservation is held, and counts against the budget.
        assert budget(client) == ("0.00", "0.015", "0.03")
        assert client.post("/v1/jobs", json={"model": job["model"], "input": {
            "prompt": "x", "size": "256*256", "num_images": 3}}).status_code == 402

        finish(sim_defaults, job["provider"]["task_id"])
        late = eventually(lambda: (j := client.get(f"/v1/jobs/{job['id']}").json())["cost_usd"] and j, timeout=30)
        assert (late["status"], late["cost_usd"], late["outputs"]) == ("canceled", "0.015", [])
        assert budget(client) == ("0.015", "0.00", "0.03")
        usage = client.get("/v1/usage").json()
        assert usage["total"] == {"jobs": 1, "images": 1, "cost_usd": "0.015"}
        charged = events_of(client, job["id"], "cost.charged")
        assert [e["detail"]["cost_usd"] for e in charged] == ["0.0150"]
        if how == "cancel":  # a deleted job's event details are erased
            assert [e["detail"]["status"] for e in events_of(client, job["id"], "webhook.received")] == ["completed"]

        # The next submit that would overshoot is refused; one that fits is taken.
        assert client.post("/v1/jobs", json={"model": job["model"], "input": {
            "prompt": "x", "size": "256*256", "num_images": 3}}).status_code == 402
        fits = submit(client, input={"num_images": 2})
        assert client.post("/v1/jobs", json={"model": job["model"], "input": {
            "prompt": "x", "size": "256*256"}}).status_code == 402
        client.post(f"/v1/jobs/{fits['id']}/cancel")

        time.sleep(1.0)  # a job.completed callback, were one sent, would have arrived
        types = {r.json()["type"] for r in catcher.snapshot()}
    assert "job.completed" not in types
    assert ledger_rows(service.settings.database_url or "", job["id"]) == {
        "reserve": PRICE, "spend": PRICE, "release": PRICE}


def test_a_late_failure_releases_the_held_reservation(service: Service, sim_defaults: ServerThread) -> None:
    _, key = owner_key(service, PRICE * 2)
    sim_config(sim_defaults, completion_delay=120.0, failure_rate=1.0)
    with service.client(key) as client:
        job = sent_upstream(client, submit(client)["id"])
        end_after_submit(client, job["id"], "cancel")
        assert budget(client) == ("0.00", "0.015", "0.015")
        finish(sim_defaults, job["provider"]["task_id"])
        eventually(lambda: budget(client)[1] == "0.00", timeout=30)
        assert budget(client) == ("0.00", "0.00", "0.03")
        assert client.get(f"/v1/jobs/{job['id']}").json()["cost_usd"] is None
    assert ledger_rows(service.settings.database_url or "", job["id"]) == {"reserve": PRICE, "release": PRICE}


@pytest.fixture(scope="module")
def short_deadline(postgres_server: str, s3_endpoint: str, simulator: ServerThread) -> Iterator[Service]:
    """A service whose tasks' deadline is 4 s after their submit, alone on its database
    (the session's service would send its jobs with its own deadline)."""
    with fresh_database(postgres_server) as db, run_service(db, s3_endpoint, simulator.url,
                                                            job_deadline_seconds=4.0) as svc:
        yield svc


def test_silence_until_the_deadline_releases_the_held_reservation(
    short_deadline: Service, sim_defaults: ServerThread
) -> None:
    _, key = owner_key(short_deadline, PRICE)
    sim_config(sim_defaults, completion_delay=120.0, webhook_drop_rate=1.0)
    with short_deadline.client(key) as client:
        job = sent_upstream(client, submit(client)["id"])
        end_after_submit(client, job["id"], "cancel")
        assert budget(client) == ("0.00", "0.015", "0.00")
        eventually(lambda: budget(client)[1] == "0.00", timeout=30)  # deadline 4 s, then the next sweep
        assert budget(client) == ("0.00", "0.00", "0.015")
    assert ledger_rows(short_deadline.settings.database_url or "", job["id"]) == {"reserve": PRICE, "release": PRICE}


def test_a_completion_whose_webhook_was_lost_is_found_at_the_deadline_and_billed(
    short_deadline: Service, sim_defaults: ServerThread
) -> None:
    _, key = owner_key(short_deadline, PRICE * 2)
    sim_config(sim_defaults, completion_delay=120.0, webhook_drop_rate=1.0)
    with short_deadline.client(key) as client:
        job = sent_upstream(client, submit(client)["id"])
        end_after_submit(client, job["id"], "cancel")
        finish(sim_defaults, job["provider"]["task_id"])  # made, but its webhook never comes
        eventually(lambda: budget(client)[1] == "0.00", timeout=30)
        assert budget(client) == ("0.015", "0.00", "0.015")
        assert client.get(f"/v1/jobs/{job['id']}").json()["cost_usd"] == "0.015"
    assert ledger_rows(short_deadline.settings.database_url or "", job["id"]) == {
        "reserve": PRICE, "spend": PRICE, "release": PRICE}
