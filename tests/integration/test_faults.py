"""Fault scenarios: each runs FAULT_JOBS jobs (default 200) through real
processes, a real Postgres, the S3 emulator and the simulator with faults on, and ends
with the same audit (tests/integration/audit.py)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import psycopg
import pytest

from devtools.devstack import embedded_postgres, free_port
from devtools.serverthread import ServerThread
from service.db.engine import migrate
from service.db.keys import create_key_blocking
from tests.conftest import BUCKET, fresh_database, make_settings, run_service, sim_config
from tests.integration.audit import audit, submit_many, wait_all_terminal, wait_callbacks
from tests.processes import ServiceProcess
from tests.servers import WebhookCatcher

pytestmark = pytest.mark.slow
N = int(os.environ.get("FAULT_JOBS", "200"))
PREFIX = "outputs/"


def new_key(database_url: str, owner: str = "faults") -> str:
    return create_key_blocking(database_url, owner)


@pytest.fixture
def fault_db(postgres_server: str) -> Iterator[str]:
    with fresh_database(postgres_server) as url:
        yield url


def finish_and_audit(
    database_url: str, s3: Any, simulator_url: str, ids: list[str], catcher: WebhookCatcher,
    timeout: float = 180, bucket: str = BUCKET,
) -> Any:
    wait_all_terminal(database_url, ids, timeout)
    wait_callbacks(catcher, database_url, ids, 60)
    report = audit(database_url, s3, bucket, PREFIX, simulator_url, ids, catcher)
    print(report)
    return report


def wait_some_terminal(database_url: str, ids: list[str], fraction: float, timeout: float = 60) -> None:
    target = int(len(ids) * fraction)
    deadline = time.monotonic() + timeout
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM jobs WHERE id = ANY(%s) AND completed_at IS NOT NULL",
                               (ids,)).fetchone()
            if row and row[0] >= target:
                return
            time.sleep(0.2)
    raise AssertionError(f"fewer than {target} jobs finished within {timeout} s")


def test_dropped_duplicated_reordered_and_late_webhooks_lose_nothing(
    fault_db: str, s3_endpoint: str, s3: Any, sim_defaults: ServerThread, catcher: WebhookCatcher
) -> None:
    sim_config(sim_defaults, webhook_drop_rate=0.3, webhook_duplicate_count=3, webhook_out_of_order=True,
               webhook_delay=2.5, completion_jitter=0.5)
    with run_service(fault_db, s3_endpoint, sim_defaults.url, reconcile_after_seconds=2.0) as svc:
        ids = submit_many(svc.url, svc.new_key(), N, catcher.url("/cb"))
        report = finish_and_audit(fault_db, s3, sim_defaults.url, ids, catcher)
    assert report.by_status == {"completed": N}, str(report)


def test_submit_429s_500s_and_hung_answers_still_one_task_per_job(
    fault_db: str, s3_endpoint: str, s3: Any, sim_defaults: ServerThread, catcher: WebhookCatcher
) -> None:
    sim_config(sim_defaults, submit_429_rate=0.2, submit_500_rate=0.2, submit_hang_rate=0.1,
               submit_hang_seconds=4.0, retry_after_seconds=1)
    with run_service(fault_db, s3_endpoint, sim_defaults.url, wavespeed_timeout_seconds=1.0) as svc:
        ids = submit_many(svc.url, svc.new_key(), N, catcher.url("/cb"))
        report = finish_and_audit(fault_db, s3, sim_defaults.url, ids, catcher)
    assert report.by_status == {"completed": N}, str(report)
    with psycopg.connect(fault_db, autocommit=True) as conn:
        lost = conn.execute(
            "SELECT count(DISTINCT job_id) FROM job_events WHERE type = 'submit.answer_lost'").fetchone()
        retried = conn.execute("SELECT count(*) FROM job_events WHERE type = 'submit.retry'").fetchone()
    assert lost and lost[0] > 0, "no submit answer was lost: the scenario did not exercise recovery"
    assert retried and retried[0] > 0


def test_kill_9_of_serve_mid_run_with_two_workers_beside_it(
    fault_db: str, s3_endpoint: str, s3: Any, sim_defaults: ServerThread, catcher: WebhookCatcher,
    tmp_path: Path,
) -> None:
    port = free_port()
    settings = make_settings(fault_db, s3_endpoint, sim_defaults.url, port)
    serve = ServiceProcess(["serve", "--host", "127.0.0.1", "--port", str(port)], settings,
                           tmp_path / "serve.log", port)
    workers = [ServiceProcess(["worker"], settings, tmp_path / f"worker{i}.log") for i in range(2)]
    with contextlib.ExitStack() as stack:
        for worker in workers:
            stack.enter_context(worker)
        stack.enter_context(serve)
        ids = submit_many(serve.url, new_key(fault_db), N, catcher.url("/cb"))
        wait_some_terminal(fault_db, ids, 0.3)
        serve.kill9()
        time.sleep(1.0)
        restarted = ServiceProcess(["serve", "--host", "127.0.0.1", "--port", str(port)], settings,
                                   tmp_path / "serve2.log", port)
        stack.enter_context(restarted)
        report = finish_and_audit(fault_db, s3, sim_defaults.url, ids, catcher)
    assert report.by_status == {"completed": N}, str(report)


def test_postgres_restart_mid_run_is_ridden_out(
    s3_endpoint: str, s3: Any, sim_defaults: ServerThread, catcher: WebhookCatcher
) -> None:
    """A dedicated embedded Postgres, so restarting it disturbs nothing else. Its data
    lives outside pytest's temporary root: run as root, the server runs as another user,
    and a second pytest session starting meanwhile resets that root to owner-only (seen:
    "could not open file global/pg_control: Permission denied" mid-restart)."""
    import pgserver
    from pgserver._commands import pg_ctl  # the wheel's own pg_ctl

    with tempfile.TemporaryDirectory(prefix="wsj-pg-restart-") as scratch, \
            embedded_postgres(Path(scratch) / "pg") as url:
        server = pgserver.get_server(Path(scratch) / "pg", cleanup_mode=None)
        try:
            migrate(url)
            with run_service(url, s3_endpoint, sim_defaults.url) as svc:
                ids = submit_many(svc.url, svc.new_key(), N, catcher.url("/cb"))
                wait_some_terminal(url, ids, 0.2)
                pg_ctl(["-w", "-m", "fast", "restart"], pgdata=server.pgdata, user=server.system_user, timeout=120)
                report = finish_and_audit(url, s3, sim_defaults.url, ids, catcher)
                assert httpx.get(svc.url + "/readyz").status_code == 200
        finally:
            # pgserver's own cleanup tracks the pre-restart postmaster: stop the new one.
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=120)
    assert report.by_status == {"completed": N}, str(report)


def test_s3_outage_of_ten_seconds_delays_and_loses_nothing(
    fault_db: str, sim_defaults: ServerThread, catcher: WebhookCatcher
) -> None:
    """A dedicated S3 emulator, stopped for ten seconds mid-run and started again on the
    same port (moto keeps its objects in this process, as a real store keeps its data)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = "outage-bucket"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        own_s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        own_s3.create_bucket(Bucket=bucket)
        with run_service(fault_db, endpoint, sim_defaults.url, s3_bucket=bucket) as svc:
            ids = submit_many(svc.url, svc.new_key(), N, catcher.url("/cb"))
            wait_some_terminal(fault_db, ids, 0.2)
            server.stop()
            time.sleep(1.0)
            ready = httpx.get(svc.url + "/readyz", timeout=10)
            assert ready.status_code == 503 and ready.json()["checks"]["s3"] != "ok"
            time.sleep(9.0)
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            report = finish_and_audit(fault_db, own_s3, sim_defaults.url, ids, catcher, bucket=bucket)
            with psycopg.connect(fault_db, autocommit=True) as conn:
                failed = conn.execute("SELECT count(*) FROM job_events WHERE type = 'output.store_failed'").fetchone()
            assert failed and failed[0] > 0, "the outage never hit the storer: the scenario proved nothing"
    finally:
        server.stop()
    assert report.by_status == {"completed": N}, str(report)


def test_sigterm_mid_run_exits_0_in_grace_and_leaves_nothing_claimed(
    fault_db: str, s3_endpoint: str, s3: Any, sim_defaults: ServerThread, catcher: WebhookCatcher,
    tmp_path: Path,
) -> None:
    port = free_port()
    grace = 5.0
    settings = make_settings(fault_db, s3_endpoint, sim_defaults.url, port, shutdown_grace_seconds=grace)
    serve = ServiceProcess(["serve", "--host", "127.0.0.1", "--port", str(port)], settings,
                           tmp_path / "serve.log", port)
    with serve:
        ids = submit_many(serve.url, new_key(fault_db), N, catcher.url("/cb"))
        wait_some_terminal(fault_db, ids, 0.2)
        started = time.monotonic()
        code = serve.terminate(timeout=grace + 10)
        took = time.monotonic() - started
    assert code == 0, f"exit code {code}; see {tmp_path / 'serve.log'}"
    assert took < grace + 10
    with psycopg.connect(fault_db, autocommit=True) as conn:
        held = conn.execute("SELECT count(*) FROM jobs WHERE locked_by LIKE %s", (f"%:{serve.pid}:%",)).fetchone()
    assert held and held[0] == 0, "the stopped process left jobs claimed"
    with ServiceProcess(["serve", "--host", "127.0.0.1", "--port", str(port)], settings, tmp_path / "serve2.log", port):
        report = finish_and_audit(fault_db, s3, sim_defaults.url, ids, catcher)
    assert report.by_status == {"completed": N}, str(report)
