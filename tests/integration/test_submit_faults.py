"""Submitting to a provider that refuses, breaks or goes silent, over real HTTP: whatever
happens, a job ends with exactly one upstream task, or none and a clear error.

The simulator's fault knobs provoke each case. Tests that need the service itself
configured differently (a short provider timeout, a wrong API key) run their own
instance on a private database, so the session service's workers cannot take their jobs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import fresh_database, run_service, sim_config
from tests.integration.helpers import eventually, sim_tasks, submit, wait_terminal


def tasks_for(simulator_url: str, job_id: str) -> list[dict[str, Any]]:
    """The simulator's tasks whose webhook points at this job: one per upstream submit."""
    suffix = f"/webhooks/wavespeed/{job_id}"
    return [t for t in sim_tasks(simulator_url) if (t.get("webhook_url") or "").endswith(suffix)]


def events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/jobs/{job_id}/events")
    assert response.status_code == 200, response.text
    return response.json()["data"]  # type: ignore[no-any-return]


def of_type(client: httpx.Client, job_id: str, type_: str) -> list[dict[str, Any]]:
    return [e for e in events(client, job_id) if e["type"] == type_]


def stats(simulator_url: str) -> dict[str, int]:
    return httpx.get(simulator_url + "/_sim/stats", timeout=5).json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def private_database(postgres_server: str) -> Iterator[str]:
    """A database no other service instance works on."""
    with fresh_database(postgres_server) as url:
        yield url


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("knob", "status"), [("submit_429_rate", 429), ("submit_500_rate", 500)], ids=["429", "500"]
)
def test_a_refused_submit_is_retried_and_makes_exactly_one_task(
    client: httpx.Client, sim_defaults: Any, knob: str, status: int
) -> None:
    refused_before = stats(sim_defaults.url)[f"submits_rejected_{status}"]
    sim_config(sim_defaults, **{knob: 1.0})
    job = submit(client)
    [first, *_] = eventually(lambda: of_type(client, job["id"], "submit.retry"), timeout=20)
    sim_config(sim_defaults, **{knob: 0.0})
    assert first["detail"]["http_status"] == status
    assert str(status) in first["detail"]["error"]

    done = wait_terminal(client, job["id"], timeout=40)
    assert done["status"] == "completed", done
    [task] = tasks_for(sim_defaults.url, job["id"])
    assert task["id"] == done["provider"]["task_id"]
    assert stats(sim_defaults.url)[f"submits_rejected_{status}"] > refused_before
    accepted = of_type(client, job["id"], "submit.accepted")
    assert [e["detail"]["task_id"] for e in accepted] == [task["id"]]


def test_a_429_waits_as_long_as_retry_after_says(client: httpx.Client, sim_defaults: Any) -> None:
    sim_config(sim_defaults, submit_429_rate=1.0, retry_after_seconds=3)
    try:
        job = submit(client)
        [first, *_] = eventually(lambda: of_type(client, job["id"], "submit.retry"), timeout=20)
    finally:
        # sim_defaults does not restore this knob: put back the session's value ourselves.
        sim_config(sim_defaults, submit_429_rate=0.0, retry_after_seconds=1)
    assert first["detail"]["retry_in"] == 3
    assert wait_terminal(client, job["id"], timeout=40)["status"] == "completed"
    assert len(tasks_for(sim_defaults.url, job["id"])) == 1


# --------------------------------------------------------------------------- a lost answer


def test_a_lost_submit_answer_is_recovered_through_the_jobs_webhook_without_a_second_task(
    private_database: str, s3_endpoint: str, sim_defaults: Any
) -> None:
    # The task is created but its answer hangs past our 1 s timeout; the task finishes
    # after 2 s, so its webhook comes after we gave up on the answer. The reconciler is
    # kept out of the way (60 s) so the webhook alone must recover the job.
    sim_config(sim_defaults, submit_hang_rate=1.0, completion_delay=2.0)
    with run_service(
        private_database, s3_endpoint, sim_defaults.url, wavespeed_timeout_seconds=1.0, reconcile_after_seconds=60.0
    ) as svc, svc.client() as client:
        job = submit(client)
        eventually(lambda: of_type(client, job["id"], "submit.answer_lost"), timeout=20)
        sim_config(sim_defaults, submit_hang_rate=0.0)
        done = wait_terminal(client, job["id"], timeout=40)
        history = events(client, job["id"])

    assert done["status"] == "completed", done
    [task] = tasks_for(sim_defaults.url, job["id"])
    assert task["hung"] is True
    assert done["provider"]["task_id"] == task["id"]
    assert len(done["outputs"]) == 1
    types = [e["type"] for e in history]
    assert "submit.accepted" not in types  # the answer never arrived
    assert types.count("submit.answer_lost") == 1
    [adopted] = [e for e in history if e["type"] == "provider.task_adopted"]
    assert adopted["detail"] == {"task_id": task["id"], "source": "webhook"}
    statuses = [e["detail"]["to"] for e in history if e["type"] == "status.changed"]
    assert statuses == ["submitted", "storing", "completed"]


# --------------------------------------------------------------------------- a permanent refusal


def test_a_4xx_from_the_provider_fails_the_job_with_the_providers_message_and_no_task(
    private_database: str, s3_endpoint: str, sim_defaults: Any
) -> None:
    # A wrong provider key: the provider answers 401, which no retry can fix.
    before = len(sim_tasks(sim_defaults.url))
    with run_service(private_database, s3_endpoint, sim_defaults.url, wavespeed_api_key="wrong-provider-key") as svc, \
            svc.client() as client:
        job = submit(client)
        done = wait_terminal(client, job["id"], timeout=30)
        history = events(client, job["id"])
        listed = client.get("/v1/jobs", params={"status": "failed"}).json()["data"]

    assert done["status"] == "failed", done
    assert done["error"] == "the provider rejected the job: HTTP 401: Unauthorized: invalid or missing API key"
    assert "wrong-provider-key" not in str(done) and "wrong-provider-key" not in str(history)
    assert done["provider"]["task_id"] is None and done["outputs"] == []
    assert tasks_for(sim_defaults.url, job["id"]) == [] and len(sim_tasks(sim_defaults.url)) == before
    [failed] = [e for e in history if e["type"] == "status.changed"]
    assert failed["detail"]["to"] == "failed" and failed["detail"]["reason"] == "submit.rejected"
    assert "submit.retry" not in [e["type"] for e in history]  # permanent: not retried
    assert [j["id"] for j in listed] == [job["id"]]

