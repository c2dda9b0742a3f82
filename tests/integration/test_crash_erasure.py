"""Erasure survives ``kill -9``: the duty rows are committed with the deletion and
removed only with the erasure, so a `serve` killed halfway through a bulk delete leaves
every job either erased with no duty left or untouched with its duty still due, and a
restarted process finishes them all."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from devtools.devstack import free_port
from devtools.serverthread import ServerThread
from service.db.keys import create_key_blocking
from tests.conftest import BUCKET, fresh_database, make_settings
from tests.integration.helpers import eventually
from tests.processes import ServiceProcess

# Left out of the fast loop (pytest -m "not slow", docs/development.md):
# kills a worker process and restarts it.
pytestmark = pytest.mark.slow

JOBS = 24


@pytest.fixture
def crash_db(postgres_server: str) -> Iterator[str]:
    with fresh_database(postgres_server) as url:
        yield url


def serve(db: str, s3_endpoint: str, simulator_url: str, port: int, log: Path) -> ServiceProcess:
    # One job per batch and one batch at a time: the erasure takes long enough to be cut.
    # Each batch rests as long as it worked (not the default 30 times): the test is about
    # the crash, and the default pace would stretch it to a minute.
    settings = make_settings(db, s3_endpoint, simulator_url, port, erase_batch_size=1, erase_concurrency=1,
                             lease_seconds=1.0, lifecycle_pause_factor=1.0)
    return ServiceProcess(["serve", "--host", "127.0.0.1", "--port", str(port)], settings, log, port)


def states(db: str) -> list[tuple[str, bool, bool, int]]:
    """(job id, duty due, input erased, outputs left) for every job."""
    with psycopg.connect(db, autocommit=True) as conn:
        return conn.execute(
            "SELECT j.id, e.job_id IS NOT NULL, j.input = '{}'::jsonb,"
            " (SELECT count(*) FROM job_outputs o WHERE o.job_id = j.id)"
            " FROM jobs j LEFT JOIN erasures e ON e.job_id = j.id ORDER BY j.id").fetchall()


def test_kill_9_halfway_through_erasure_is_finished_after_restart(
    crash_db: str, s3_endpoint: str, simulator: ServerThread, s3: Any, tmp_path: Path
) -> None:
    port = free_port()
    headers = {"Authorization": f"Bearer {create_key_blocking(crash_db, 'crash')}"}
    first = serve(crash_db, s3_endpoint, simulator.url, port, tmp_path / "serve1.log")
    with first:
        ids = []
        for i in range(JOBS):
            body = {"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": f"a lantern {i}", "size": "256*256"},
                    "metadata": {"set": "crash"}}
            ids.append(httpx.post(first.url + "/v1/jobs", json=body, headers=headers, timeout=10).json()["id"])

        def all_completed() -> bool:
            page = httpx.get(first.url + "/v1/jobs", params={"status": "completed", "limit": 100},
                             headers=headers, timeout=10).json()["data"]
            return len(page) == JOBS

        eventually(all_completed, timeout=60, interval=0.2)
        answer = httpx.post(first.url + "/v1/jobs/bulk", headers=headers, timeout=30,
                            json={"action": "delete", "filter": {"metadata": {"set": "crash"}}}).json()
        assert answer["affected"] == JOBS
        deadline = time.monotonic() + 30
        while sum(due for _, due, _, _ in states(crash_db)) == JOBS and time.monotonic() < deadline:
            time.sleep(0.01)
        first.kill9()

    cut = states(crash_db)
    due = [s for s in cut if s[1]]
    print(f"\nkilled with {len(due)} of {JOBS} erasures still due")
    assert 0 < len(due) < JOBS, "the kill did not land halfway; the test proves nothing this run"
    for job_id, is_due, input_erased, outputs in cut:
        # Never half erased with no duty due.
        assert is_due or (input_erased and outputs == 0), job_id
        if not is_due:
            assert s3.list_objects_v2(Bucket=BUCKET, Prefix=f"outputs/{job_id}/").get("KeyCount") == 0

    with serve(crash_db, s3_endpoint, simulator.url, port, tmp_path / "serve2.log"):
        eventually(lambda: not any(s[1] for s in states(crash_db)), timeout=60, interval=0.2)
    for job_id, _, input_erased, outputs in states(crash_db):
        assert input_erased and outputs == 0
        assert s3.list_objects_v2(Bucket=BUCKET, Prefix=f"outputs/{job_id}/").get("KeyCount") == 0
