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

import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from devtools.serverthread import ServerThread
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
    # The recorder really saw the deliverer's and the redeliver route's transactions.
    assert len(both) >= 2, rec.done
    assert [t for t in rec.done if out_of_order(t)] == []
