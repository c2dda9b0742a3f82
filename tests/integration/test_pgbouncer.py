"""The service behind a real PgBouncer in transaction mode (``DATABASE_POOL_MODE=transaction``,
docs/deploy.md).

The scenarios below are the suite's own (the job's life, ``?wait`` and cancel, streams,
idempotent replays, callbacks, kill -9 of ``serve`` beside two workers, kill -9 owing a
callback), collected again here. In this module every service a test starts reaches
Postgres through PgBouncer (tests/pgbouncer.py: ``pool_mode = transaction``,
``default_pool_size`` of POOL_SIZE, so its clients queue for a server session;
``ignore_startup_parameters = extra_float_digits``; trust with an auth file), and LISTEN/NOTIFY
and migrations use ``DATABASE_DIRECT_URL``. The tests' own reads of rows go to Postgres
directly, as elsewhere. The tests added at the end show the traffic did go through PgBouncer
with clients waiting for a server, and that the engine without its transaction-pooling
options fails there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from devtools.devstack import free_port
from devtools.serverthread import ServerThread
from service.db import engine as db
from service.db.keys import hash_key
from tests.conftest import Service, fresh_database, make_settings, run_service, services_through
from tests.integration import (
    test_callbacks,
    test_cancel_wait,
    test_crash_callback,
    test_faults,
    test_jobs_api,
    test_lifecycle,
    test_stream,
)
from tests.integration.test_cli import cli
from tests.pgbouncer import PgBouncer, why_unavailable
from tests.processes import ServiceProcess

# Left out of the fast loop (pytest -m "not slow", docs/development.md): the suite's own
# scenarios again, kills included, behind a PgBouncer.
pytestmark = pytest.mark.slow

# Server sessions per database: the scenarios' services hold up to 3 x 4 client connections
# each (SQLAlchemy's pool, the receiver's own pool), so clients queue.
POOL_SIZE = 3
BURST = 30  # jobs asked for at once, each answered when it ends (?wait)

RERUN: dict[ModuleType, tuple[str, ...]] = {
    test_lifecycle: (
        "test_job_completes_with_every_output_in_s3", "test_failed_task_fails_the_job_with_the_provider_error",
        "test_events_record_the_whole_story_oldest_first", "test_outputs_endpoint_redirects_to_the_stored_object",
        "test_another_owner_gets_404_for_every_job_call", "test_requests_without_a_valid_key_are_401",
    ),
    test_cancel_wait: (
        "test_cancel_before_submit_never_reaches_the_provider",
        "test_cancel_after_submit_records_the_late_result_and_delivers_only_canceled",
        "test_wait_answers_as_soon_as_the_job_completes", "test_wait_is_woken_by_a_cancel_from_another_request",
        "test_wait_on_a_slow_job_answers_with_the_job_as_it_stands_after_n_seconds",
    ),
    test_stream: (
        "test_stream_sends_the_job_at_once_and_after_each_status_change_then_ends",
        "test_stream_of_a_terminal_job_sends_it_once_and_ends",
        "test_idle_stream_gets_keepalive_comments_and_hears_a_cancel_from_another_process_connection",
        "test_sigterm_ends_every_open_stream_cleanly_and_serve_exits_at_once",
    ),
    test_jobs_api: (
        "test_same_key_and_body_returns_the_first_job_with_200", "test_same_key_with_another_body_is_409",
        "test_different_owners_use_the_same_key_independently", "test_concurrent_requests_with_one_key_make_one_job",
    ),
    test_callbacks: (
        "private_db", "cb_service", "api_service", "secret", "endpoint",
        "test_completed_job_is_delivered_once_signed_with_the_job_and_week_long_output_urls",
        "test_fails_three_times_then_delivered_with_the_same_id_and_body",
        "test_gives_up_after_the_schedule_and_redelivers_through_the_api",
        "test_retry_after_on_503_is_honoured", "test_many_deliveries_in_flight_at_once",
    ),
    test_faults: ("test_kill_9_of_serve_mid_run_with_two_workers_beside_it",),
    test_crash_callback: ("test_callback_of_a_job_that_ended_just_before_kill_9_is_delivered_after_restart",),
}
# Collected here too (pytest collects a module's test functions and fixtures by name), so
# they run with this module's fixtures: the services behind PgBouncer.
for _module, _names in RERUN.items():
    globals().update({name: getattr(_module, name) for name in _names})


@pytest.fixture(scope="module", autouse=True)
def pgbouncer(postgres_server: str) -> Iterator[PgBouncer]:
    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    with PgBouncer.start(postgres_server, pool_size=POOL_SIZE) as bouncer, services_through(bouncer):
        yield bouncer


@contextlib.contextmanager
def pooled_database(postgres_server: str) -> Iterator[str]:
    """A fresh database with JIT off on it, as docs/deploy.md asks for behind a pooler (no
    session can set it there; left on, every claim is compiled anew and a run under load
    takes minutes)."""
    with fresh_database(postgres_server) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{_database(url)}" SET jit = off')
        yield url


@pytest.fixture(scope="module")
def database_url(postgres_server: str, pgbouncer: PgBouncer) -> Iterator[str]:
    """A database of this module's own, so no service of another module (reaching it
    directly) takes its jobs."""
    with pooled_database(postgres_server) as url:
        yield url


@pytest.fixture
def fault_db(postgres_server: str, pgbouncer: PgBouncer) -> Iterator[str]:
    """The kill -9 scenario's database (test_faults makes its own the same way), JIT off."""
    with pooled_database(postgres_server) as url:
        yield url


@pytest.fixture
def crash_db(postgres_server: str, pgbouncer: PgBouncer) -> Iterator[str]:
    """The crashed callback's database (as test_crash_callback's), JIT off."""
    with pooled_database(postgres_server) as url:
        yield url


@pytest.fixture(scope="module")
def service(database_url: str, s3_endpoint: str, simulator: ServerThread, pgbouncer: PgBouncer) -> Iterator[Service]:
    with run_service(database_url, s3_endpoint, simulator.url) as svc:
        assert svc.settings.database_pool_mode == "transaction"
        assert svc.settings.database_url == pgbouncer.url(database_url)
        yield svc


def _database(url: str) -> str:
    return url.rsplit("/", 1)[1]


def test_a_burst_of_waiting_jobs_queues_for_the_pool_and_all_complete_through_pgbouncer(
    service: Service, database_url: str, pgbouncer: PgBouncer
) -> None:
    database = _database(database_url)
    before = pgbouncer.stats(database)
    most_waiting = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal most_waiting
        while not stop.is_set():
            most_waiting = max(most_waiting, int(pgbouncer.pool(database).get("cl_waiting", 0)))
            time.sleep(0.02)

    def job(n: int) -> dict[str, Any]:
        body = {"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": f"burst {n}", "size": "256*256"}}
        with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"}, timeout=70) as c:
            response = c.post("/v1/jobs?wait=30", json=body)
            assert response.status_code == 202, response.text
            return response.json()  # type: ignore[no-any-return]

    key = service.new_key()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
            done = list(pool.map(job, range(BURST)))
    finally:
        stop.set()
        watcher.join(5)
    assert [j["status"] for j in done] == ["completed"] * BURST
    after = pgbouncer.stats(database)
    # The service's statements went through PgBouncer: its count moved with the jobs.
    assert after["total_xact_count"] - before["total_xact_count"] > 5 * BURST
    assert most_waiting > 0, "no client ever waited for a server session: the pool was never under pressure"


async def _burst(engine: Any) -> list[str]:
    """Autocommit statements of one pooled engine, a dozen at once: each may meet another
    server session between its prepare and its execution."""
    errors: list[str] = []

    async def one(n: int) -> None:
        for m in range(20):
            try:
                async with db.one_statement(engine) as conn:
                    assert (await conn.execute(text("SELECT CAST(:n AS int) + 1"), {"n": n + m})).scalar() == n + m + 1
                async with db.raw_statement(engine) as raw:
                    assert await raw.fetchval("SELECT $1::int * 2", n + m) == 2 * (n + m)
            except Exception as exc:  # noqa: BLE001  every failure is the finding
                errors.append(type(exc).__name__ + ": " + str(exc).splitlines()[0])

    await asyncio.gather(*(one(n) for n in range(12)))
    await engine.dispose()
    return errors


def test_the_engine_without_its_transaction_pooling_options_fails_through_pgbouncer_and_with_them_works(
    database_url: str, pgbouncer: PgBouncer
) -> None:
    url = pgbouncer.url(database_url)
    refused = asyncio.run(_burst(db.create_engine(url, 4)))
    assert refused and all("unsupported startup parameter: jit" in e for e in refused), refused[:3]
    # Named statements, as SQLAlchemy's recipe for PgBouncer makes them (a unique name
    # each): an autocommit statement is prepared on one server session, run on another.
    named = create_async_engine(db.async_url(url), pool_size=4, max_overflow=4, connect_args={
        "statement_cache_size": 0, "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": lambda: f"__wsj_{time.monotonic_ns()}_{threading.get_ident()}__"})
    lost = asyncio.run(_burst(named))
    assert any("does not exist" in e for e in lost), "named statements never met another session: no pressure"
    assert asyncio.run(_burst(db.create_engine(url, 4, transaction_pooling=True))) == []



def test_migrate_uses_the_direct_url_and_keys_create_works_through_pgbouncer(
    postgres_server: str, pgbouncer: PgBouncer
) -> None:
    name = f"wsj_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    direct = postgres_server.rsplit("/", 1)[0] + "/" + name
    try:
        # DATABASE_URL leads nowhere: only DATABASE_DIRECT_URL can have been migrated.
        migrated = cli("migrate", env={"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere",
                                       "DATABASE_DIRECT_URL": direct, "DATABASE_POOL_MODE": "transaction"})
        assert migrated.returncode == 0, migrated.stderr
        created = cli("keys", "create", "--owner", "pooled", env={
            "DATABASE_URL": pgbouncer.url(direct), "DATABASE_DIRECT_URL": direct, "DATABASE_POOL_MODE": "transaction"})
        assert created.returncode == 0, created.stderr
        with psycopg.connect(direct) as conn:
            assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
            assert conn.execute("SELECT owner, key_hash FROM api_keys").fetchall() == [
                ("pooled", hash_key(created.stdout.strip()))]
        assert pgbouncer.stats(name)["total_xact_count"] > 0  # the key went through PgBouncer
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_serve_behind_the_pooler_warns_when_the_database_leaves_jit_on(
    postgres_server: str, database_url: str, s3_endpoint: str, simulator: ServerThread, pgbouncer: PgBouncer,
    tmp_path: Path,
) -> None:
    async def jit_on(url: str) -> bool:
        engine = db.create_engine(url, 1, transaction_pooling=True)
        try:
            return await db.jit_on(engine)
        finally:
            await engine.dispose()

    assert not asyncio.run(jit_on(pgbouncer.url(database_url)))  # this module's database: ALTER DATABASE done
    with fresh_database(postgres_server) as url:  # a new database: JIT on, Postgres's default
        assert asyncio.run(jit_on(pgbouncer.url(url)))
        port = free_port()
        settings = make_settings(url, s3_endpoint, simulator.url, port)
        with ServiceProcess(["serve", "--no-workers", "--host", "127.0.0.1", "--port", str(port)], settings,
                            tmp_path / "serve.log", port):
            pass
    warnings = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines()
                if '"database.jit_on"' in line]
    assert warnings and "docs/deploy.md" in warnings[0]["fix"]
