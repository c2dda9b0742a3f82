"""A submit whose answer was lost is recovered, never blindly sent twice: adopted from
the provider's list when the webhook is lost too, and sent again only when the
provider's complete list proves the task never existed (a crash before the request
left)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from devtools.serverthread import ServerThread
from devtools.simulator.app import create_simulator_app
from devtools.simulator.config import SimulatorConfig
from service.db.jobs import new_job_id
from service.domain.schemas import validate_input
from tests.conftest import SIM_SECRET, run_service, sim_config
from tests.integration.helpers import wait_terminal

# Left out of the fast loop (pytest -m "not slow", docs/development.md):
# recovery waits out the reconciler's deadlines.
pytestmark = pytest.mark.slow


@pytest.fixture
def own_sim() -> Iterator[ServerThread]:
    """A provider of its own: what its task list shows is this test's doing alone."""
    config = SimulatorConfig(completion_delay=0.3, processing_delay=0.05, webhook_secret=SIM_SECRET, seed=11)
    with ServerThread(create_simulator_app(config)) as server:
        yield server


def tasks_for(simulator_url: str, job_id: str) -> list[dict[str, object]]:
    tasks = httpx.get(simulator_url + "/_sim/tasks", timeout=5).json()
    return [t for t in tasks if str(t.get("webhook_url") or "").endswith("/" + job_id)]


def events(client: httpx.Client, job_id: str) -> list[str]:
    return [e["type"] for e in client.get(f"/v1/jobs/{job_id}/events").json()["data"]]


def test_lost_answer_and_lost_webhook_are_recovered_from_the_provider_list(
    own_db: str, s3_endpoint: str, own_sim: ServerThread
) -> None:
    sim_config(own_sim, submit_hang_rate=1.0, submit_hang_seconds=5.0, webhook_drop_rate=1.0)
    with run_service(own_db, s3_endpoint, own_sim.url, wavespeed_timeout_seconds=1.0) as svc, \
            svc.client() as client:
        job = client.post("/v1/jobs", json={"model": "wavespeed-ai/flux-dev-lora",
                                            "input": {"prompt": "lost twice", "size": "256*256"}}).json()
        done = wait_terminal(client, job["id"], timeout=40)
        seen = events(client, job["id"])
    assert done["status"] == "completed"
    assert len(tasks_for(own_sim.url, job["id"])) == 1
    assert "submit.answer_lost" in seen and "provider.task_adopted" in seen
    assert "webhook.received" not in seen  # every webhook was dropped: the list found it
    assert "submit.resend" not in seen


def stage_lost_submit(database_url: str, owner: str, model: str, prompt: str, sent_ago_seconds: float,
                      seed: int = -1) -> str:
    """A job in the state a kill -9 between "about to send" and "answer recorded" leaves:
    submitted, submit_sent_at set, no task id. Inserted directly, so no worker races it."""
    job_id = new_job_id()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO jobs (id, owner, model, input, status, submit_sent_at, submitted_at, run_after, deadline_at) "
            "VALUES (%s, %s, %s, %s, 'submitted', now() - make_interval(secs => %s), now(), now(), "
            "now() + interval '30 minutes')",
            (job_id, owner, model, Jsonb(validate_input(model, {"prompt": prompt, "size": "256*256", "seed": seed})),
             sent_ago_seconds),
        )
    return job_id


def test_a_submit_that_never_left_is_sent_once_after_the_list_proves_it_absent(
    own_db: str, s3_endpoint: str, own_sim: ServerThread
) -> None:
    with run_service(own_db, s3_endpoint, own_sim.url, submit_lost_deadline_seconds=1.0) as svc:
        key = svc.new_key()
        job_id = stage_lost_submit(own_db, svc.keys[key], "wavespeed-ai/flux-krea-dev-lora", "never left", 60)
        with svc.client(key) as client:
            done = wait_terminal(client, job_id, timeout=40)
            seen = events(client, job_id)
    assert done["status"] == "completed"
    assert len(tasks_for(own_sim.url, job_id)) == 1
    assert seen.count("submit.resend") == 1


def test_when_absence_cannot_be_proved_a_lost_submit_fails_instead_of_risking_a_second_task(
    own_db: str, s3_endpoint: str, own_sim: ServerThread
) -> None:
    with run_service(own_db, s3_endpoint, own_sim.url, submit_lost_deadline_seconds=1.0) as svc:
        key = svc.new_key()
        with svc.client(key) as client:
            # A completed job whose task has exactly the input of the lost one below.
            first = client.post("/v1/jobs", json={"model": "wavespeed-ai/flux-dev-lora",
                                                  "input": {"prompt": "twin", "size": "256*256"}}).json()
            wait_terminal(client, first["id"])
            twin = stage_lost_submit(own_db, svc.keys[key], "wavespeed-ai/flux-dev-lora", "twin", 0)
            done = wait_terminal(client, twin, timeout=40)
    # The listed task matches the twin's input but belongs to the first job: nothing to
    # adopt and no proof of absence, so the twin fails rather than being sent again.
    assert done["status"] == "failed"
    assert "not sent again" in done["error"]
    assert tasks_for(own_sim.url, twin) == []


def test_a_strangers_identical_request_is_neither_adopted_nor_blocks_the_resend(
    own_db: str, s3_endpoint: str, own_sim: ServerThread
) -> None:
    """Another user of the account sent the same prompt and size a moment before (the
    provider's list shows inputs, not webhooks). The job's own seed, chosen at admission,
    tells the two apart: the stranger's task is not taken for the job's, and the job,
    provably never sent, is sent once. (With the provider choosing seeds, the stranger's
    task was adopted and the job completed with someone else's picture.)"""
    model = "wavespeed-ai/flux-krea-dev-lora"
    with httpx.Client(base_url=own_sim.url, headers={"Authorization": "Bearer sim-key"}, timeout=10) as c:
        assert c.post(f"/api/v3/{model}", json={"prompt": "same words", "size": "256*256"}).status_code == 200
    with run_service(own_db, s3_endpoint, own_sim.url, submit_lost_deadline_seconds=1.0) as svc:
        key = svc.new_key()
        job_id = stage_lost_submit(own_db, svc.keys[key], model, "same words", 30, seed=424242)
        with svc.client(key) as client:
            done = wait_terminal(client, job_id, timeout=40)
            seen = events(client, job_id)
    assert done["status"] == "completed", done.get("error")
    assert seen.count("submit.resend") == 1
    assert len(tasks_for(own_sim.url, job_id)) == 1
