"""Paying twice by inference: a provider whose history pages hold fewer than the 100
items asked for (the documentation says "up to 100") must never make a short page look
like the end of the list, so a lost submit is never "proved absent" and sent again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devtools.serverthread import ServerThread
from devtools.simulator.app import create_simulator_app
from devtools.simulator.config import SimulatorConfig
from tests.conftest import SIM_SECRET, fresh_database, run_service
from tests.integration.helpers import wait_terminal
from tests.integration.test_lost_submit import events, stage_lost_submit, tasks_for

# Left out of the fast loop (pytest -m "not slow", docs/development.md):
# recovery waits out the reconciler's deadlines.
pytestmark = pytest.mark.slow

MODEL = "wavespeed-ai/flux-dev-lora"


@pytest.fixture
def capped_sim() -> Iterator[ServerThread]:
    """A provider of its own whose history pages hold at most 50 items, while echoing
    the page_size asked for (its figures say nothing of the cap but the total)."""
    config = SimulatorConfig(completion_delay=0.05, processing_delay=0.0, webhook_secret=SIM_SECRET, seed=13,
                             list_page_cap=50)
    with ServerThread(create_simulator_app(config)) as server:
        yield server


def fill(sim: ServerThread, count: int) -> None:
    """``count`` tasks in the search window, none of them the lost job's."""
    with httpx.Client(base_url=sim.url, headers={"Authorization": "Bearer sim-key"}, timeout=10) as c:
        for i in range(count):
            answer = c.post(f"/api/v3/{MODEL}", json={"prompt": f"someone else {i}", "size": "256*256"})
            assert answer.status_code == 200, answer.text


def outcome_of_a_lost_job(postgres_server: str, s3_endpoint: str, sim: ServerThread,
                          prompt: str) -> tuple[str, dict[str, Any], list[str]]:
    """A job lost between "about to send" and its answer (sent 60 s ago), run through a
    service on ``sim`` to its end: its id, its final answer and its event types."""
    with fresh_database(postgres_server) as db, run_service(
        db, s3_endpoint, sim.url, submit_lost_deadline_seconds=1.0
    ) as svc:
        key = svc.new_key()
        job_id = stage_lost_submit(db, svc.keys[key], MODEL, prompt, 60)
        with svc.client(key) as client:
            return job_id, wait_terminal(client, job_id, timeout=40), events(client, job_id)


def test_a_page_cap_of_50_never_proves_a_task_absent(postgres_server: str, s3_endpoint: str,
                                                      capped_sim: ServerThread) -> None:
    fill(capped_sim, 60)
    listing = httpx.post(capped_sim.url + "/api/v3/predictions", json={"page": 1, "page_size": 100, "model": MODEL},
                         headers={"Authorization": "Bearer sim-key"}, timeout=10).json()["data"]
    assert len(listing["items"]) == 50 and listing["total"] == 60  # the cap is real
    job_id, done, seen = outcome_of_a_lost_job(postgres_server, s3_endpoint, capped_sim,
                                               "lost while the list is capped")
    # The task may exist past the 50 shown: the job fails rather than risk a second task.
    assert "submit.resend" not in seen
    assert tasks_for(capped_sim.url, job_id) == []
    assert done["status"] == "failed" and "not sent again" in done["error"]


def test_a_complete_list_under_the_cap_still_proves_absence(postgres_server: str, s3_endpoint: str,
                                                             capped_sim: ServerThread) -> None:
    fill(capped_sim, 20)  # everything fits on one capped page: total says so
    _, done, seen = outcome_of_a_lost_job(postgres_server, s3_endpoint, capped_sim, "never left")
    assert seen.count("submit.resend") == 1
    assert done["status"] == "completed"


@pytest.fixture
def busy_sim() -> Iterator[ServerThread]:
    """A provider whose account keeps receiving other users' tasks: every history list
    request first sees 7 new ones arrive (the newest are listed first)."""
    config = SimulatorConfig(completion_delay=0.05, processing_delay=0.0, webhook_secret=SIM_SECRET, seed=17,
                             list_arrivals=7)
    with ServerThread(create_simulator_app(config)) as server:
        yield server


def test_tasks_arriving_while_the_list_is_read_do_not_hide_a_proved_absence(
    postgres_server: str, s3_endpoint: str, busy_sim: ServerThread
) -> None:
    """Two pages of others' tasks and more arriving between page reads: the search's window
    ends when the search starts, so the set it reads is fixed and its total is reached. (A
    window open to the future grew by 7 per page, page 2 repeated page 1's tail, the total
    was never reached and the job failed although its task never existed.)"""
    fill(busy_sim, 150)
    job_id, done, seen = outcome_of_a_lost_job(postgres_server, s3_endpoint, busy_sim, "never left a busy account")
    assert done["status"] == "completed", done.get("error")
    assert seen.count("submit.resend") == 1
    assert len(tasks_for(busy_sim.url, job_id)) == 1
