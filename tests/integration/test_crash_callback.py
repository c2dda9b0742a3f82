"""A callback survives ``kill -9``: the delivery is a row committed with the terminal
transition, not a task in memory, so a restarted process sends it.

The service runs as a real `serve` process (tests/processes.py) on its own database;
the backend's endpoint is down while the job finishes, the process is killed right
after the job turns terminal, and the endpoint only comes up after the restart.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from standardwebhooks.webhooks import Webhook

from devtools.devstack import free_port
from devtools.serverthread import ServerThread
from service.db.keys import create_key_blocking
from tests.conftest import fresh_database, make_settings
from tests.integration.helpers import TERMINAL, eventually
from tests.processes import ServiceProcess
from tests.servers import WebhookCatcher

# Left out of the fast loop (pytest -m "not slow", docs/development.md):
# kills a worker process and restarts it.
pytestmark = pytest.mark.slow

# The first attempt waits 2 s after the job ends, so the kill lands before any attempt
# (the window a crash between "terminal" and "sent" would hit); the rest retry fast.
SCHEDULE = "2," + ",".join(["0.5"] * 30)


def new_key(database_url: str) -> str:
    return create_key_blocking(database_url, "crash")


@pytest.fixture
def crash_db(postgres_server: str) -> Iterator[str]:
    with fresh_database(postgres_server) as url:
        yield url


def serve(crash_db: str, s3_endpoint: str, simulator_url: str, port: int, log: Path) -> ServiceProcess:
    settings = make_settings(crash_db, s3_endpoint, simulator_url, port,
                             callback_retry_schedule=SCHEDULE, lease_seconds=3.0)
    return ServiceProcess(["serve", "--host", "127.0.0.1", "--port", str(port)], settings, log, port)


def test_callback_of_a_job_that_ended_just_before_kill_9_is_delivered_after_restart(
    crash_db: str, s3_endpoint: str, simulator: ServerThread, tmp_path: Path
) -> None:
    port, hook_port = free_port(), free_port()
    callback_url = f"http://127.0.0.1:{hook_port}/hook"  # nothing listens there yet
    headers = {"Authorization": f"Bearer {new_key(crash_db)}"}

    first = serve(crash_db, s3_endpoint, simulator.url, port, tmp_path / "serve1.log")
    with first:
        body = {"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "a kite", "size": "256*256"},
                "callback_url": callback_url}
        job = httpx.post(first.url + "/v1/jobs", json=body, headers=headers, timeout=10).json()

        def terminal() -> dict[str, str] | None:
            current = httpx.get(f"{first.url}/v1/jobs/{job['id']}", headers=headers, timeout=5).json()
            return current if current["status"] in TERMINAL else None

        done = eventually(terminal, timeout=30, interval=0.05)
        first.kill9()
    assert done["status"] == "completed"

    with psycopg.connect(crash_db, autocommit=True) as conn:
        status, delivered_at = conn.execute(
            "SELECT status, delivered_at FROM deliveries WHERE job_id = %s", (job["id"],)).fetchone() or (None, None)
        assert status == "pending" and delivered_at is None  # the process died owing this callback

    catcher = WebhookCatcher()
    with ServerThread(catcher.app(), port=hook_port):
        started = time.monotonic()
        with serve(crash_db, s3_endpoint, simulator.url, port, tmp_path / "serve2.log") as second:
            [request] = catcher.wait_for(1, timeout=30)
            print(f"\ndelivered {time.monotonic() - started:.1f} s after the restart began")
            # Signed with the owner's own secret, the same before and after the restart.
            secret = httpx.get(f"{second.url}/v1/callback-secret", headers=headers, timeout=5).json()["secret"]
            event = Webhook(secret).verify(request.body, request.headers)
            assert event["type"] == "job.completed"
            assert event["data"]["id"] == job["id"]

            def delivered() -> dict[str, dict[str, object]] | None:
                current = httpx.get(f"{second.url}/v1/jobs/{job['id']}", headers=headers, timeout=5).json()
                return current if current["callback"]["status"] == "delivered" else None

            eventually(delivered, timeout=10)
            events = httpx.get(f"{second.url}/v1/jobs/{job['id']}/events", headers=headers, timeout=5).json()["data"]
    # Every attempt, before and after the crash, is in the job's history.
    attempts = [e["detail"] for e in events if e["type"] == "callback.attempt"]
    assert attempts[-1]["status_code"] == 200
    assert all(a["delivery_id"] == request.headers["webhook-id"] for a in attempts)
