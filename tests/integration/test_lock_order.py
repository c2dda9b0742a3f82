"""Every transaction takes its row locks in the documented order: jobs, then deliveries,
then the rest (header of service/db/queries.py).

Why: if lease renewal updated jobs then deliveries in one transaction while the
deliverer recording an attempt updated the delivery and then its job, Postgres would
abort one of them with a deadlock and the job's callback would go out twice; the
redeliver route touches both tables too. Here a real service runs a job through its
callback and a redelivery while every statement its engine sends is recorded per
transaction; no transaction may lock a job after it locked a delivery.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from devtools.serverthread import ServerThread
from service.db import queries
from service.db.engine import asyncpg_dsn
from tests.conftest import fresh_database, run_service
from tests.integration.helpers import eventually, submit, wait_terminal
from tests.servers import WebhookCatcher

LOCKING = re.compile(r"^\s*(?:UPDATE|DELETE FROM)\s+(\w+)|^\s*SELECT\b.*?\bFROM\s+(\w+)\b.*\bFOR UPDATE\b",
                     re.DOTALL | re.IGNORECASE)


class LockRecorder:
    """Which tables each transaction of one database locked, in order."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.current: dict[int, list[str]] = {}
        self.done: list[list[str]] = []
        self._lock = threading.Lock()

    def _mine(self, conn: Any) -> bool:
        return bool(conn.engine.url.database == self.database)

    def begin(self, conn: Any) -> None:
        if self._mine(conn):
            with self._lock:
                self.current[id(conn.connection.dbapi_connection)] = []

    def end(self, conn: Any) -> None:
        if self._mine(conn):
            with self._lock:
                tables = self.current.pop(id(conn.connection.dbapi_connection), None)
                if tables:
                    self.done.append(tables)

    def statement(self, conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        match = LOCKING.match(statement)
        if match and self._mine(conn):
            with self._lock:
                tables = self.current.get(id(conn.connection.dbapi_connection))
                if tables is not None:
                    tables.append(match.group(1) or match.group(2))


@pytest.fixture
def recorder(postgres_server: str, s3_endpoint: str, simulator: ServerThread) -> Iterator[tuple[Any, LockRecorder]]:
    with fresh_database(postgres_server) as url:
        rec = LockRecorder(url.partition("?")[0].rsplit("/", 1)[1])
        hooks = [("begin", rec.begin), ("commit", rec.end), ("rollback", rec.end),
                 ("before_cursor_execute", rec.statement)]
        for name, fn in hooks:
            event.listen(Engine, name, fn)
        try:
            # A short lease: renewals run every second while the callback is being sent.
            with run_service(url, s3_endpoint, simulator.url, lease_seconds=3.0) as svc:
                yield svc, rec
        finally:
            for name, fn in hooks:
                event.remove(Engine, name, fn)


def out_of_order(tables: list[str]) -> bool:
    """A job locked after a delivery, in a transaction that had not locked a job before."""
    seen: set[str] = set()
    for table in tables:
        if table == "jobs" and "deliveries" in seen and "jobs" not in seen:
            return True
        seen.add(table)
    return False


def test_no_transaction_locks_a_job_after_a_delivery(recorder: tuple[Any, LockRecorder]) -> None:
    svc, rec = recorder
    with WebhookCatcher() as catcher, svc.client() as api:
        job = submit(api, callback_url=catcher.url("/hook"))
        assert wait_terminal(api, job["id"])["status"] == "completed"
        catcher.wait_for(1, timeout=20)
        eventually(lambda: api.get(f"/v1/jobs/{job['id']}").json()["callback"]["status"] == "delivered" or None)
        assert api.post(f"/v1/jobs/{job['id']}/callback/redeliver").status_code == 202
        catcher.wait_for(2, timeout=20)
        eventually(lambda: api.get(f"/v1/jobs/{job['id']}").json()["callback"]["status"] == "delivered" or None)
    both = [t for t in rec.done if "jobs" in t and "deliveries" in t]
    # The recorder really saw the redeliver route's transaction (the deliverer records an
    # attempt in one statement of its own: the next test).
    assert len(both) >= 1, rec.done
    assert [t for t in rec.done if out_of_order(t)] == []


def _record_attempt(url: str, delivery_id: str, job_id: str) -> Any:
    """queries.RECORD_ATTEMPT as the deliverer runs it: attempt 2, delivered."""
    async def run() -> Any:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            return await conn.fetchrow(queries.RECORD_ATTEMPT, delivery_id, job_id, "test-holder", 2, "delivered",
                                       200, None, None, '{"outcome": "delivered"}', "callback.delivered", "{}")
        finally:
            await conn.close()
    return asyncio.run(run())


def test_recording_an_attempt_locks_the_job_before_its_delivery(recorder: tuple[Any, LockRecorder]) -> None:
    """The deliverer records an attempt in one statement (RECORD_ATTEMPT) that locks the
    job and updates its delivery: while another transaction holds the job, the statement
    waits for it without holding the delivery (which a lease renewal may be locking)."""
    svc, _ = recorder
    with WebhookCatcher() as catcher, svc.client() as api:
        job = submit(api, callback_url=catcher.url("/hook"))
        assert wait_terminal(api, job["id"])["status"] == "completed"
        catcher.wait_for(1, timeout=20)
        eventually(lambda: api.get(f"/v1/jobs/{job['id']}").json()["callback"]["status"] == "delivered" or None)
    url = svc.settings.database_direct_url or svc.settings.database_url or ""
    with psycopg.connect(url, autocommit=True) as sql, psycopg.connect(url) as holder:
        (delivery_id,) = sql.execute("SELECT id FROM deliveries WHERE job_id = %s", (job["id"],)).fetchone() or ()
        # Pending again under a lease of ours, due in an hour: the service leaves it alone.
        sql.execute("UPDATE deliveries SET status = 'pending', locked_by = 'test-holder', "
                    "locked_until = now() + interval '1 hour', next_attempt_at = now() + interval '1 hour' "
                    "WHERE id = %s", (delivery_id,))
        holder.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job["id"],))
        answer: list[Any] = []
        thread = threading.Thread(target=lambda: answer.append(_record_attempt(url, delivery_id, job["id"])))
        thread.start()
        try:
            eventually(lambda: sql.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%%callback.attempt%%'").fetchone()[0] or None)  # type: ignore[index]
            # Waiting for the job, it holds no lock on the delivery.
            sql.execute("SELECT 1 FROM deliveries WHERE id = %s FOR UPDATE NOWAIT", (delivery_id,))
        finally:
            holder.rollback()
            thread.join(30)
        assert answer and answer[0]["moved"] and not answer[0]["deleted"]
        row = sql.execute("SELECT d.status, d.attempts, d.locked_by, j.callback_status, j.callback_attempts "
                          "FROM deliveries d JOIN jobs j ON j.id = d.job_id WHERE d.id = %s", (delivery_id,)).fetchone()
        assert row == ("delivered", 2, None, "delivered", 2)
        types = [t for (t,) in sql.execute("SELECT type FROM job_events WHERE job_id = %s ORDER BY id DESC LIMIT 2",
                                           (job["id"],))]
        assert types == ["callback.delivered", "callback.attempt"]
