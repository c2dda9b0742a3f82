"""Retention: jobs completed longer ago than OUTPUT_RETENTION_DAYS are deleted by the
background sweep (deleted_reason "retention") and erased like a DELETE."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import psycopg

from devtools.serverthread import ServerThread
from service.db import queries
from service.db.engine import create_engine
from service.observability import metrics
from tests.conftest import fresh_database, run_service
from tests.integration.helpers import eventually, submit, wait_terminal
from tests.integration.test_deletion import erased, everything_mentioning, s3_keys


def test_jobs_past_retention_are_erased_and_recent_ones_kept(
    database_url: str, s3_endpoint: str, simulator: ServerThread, s3: Any, sql: psycopg.Connection[Any]
) -> None:
    erased_before = metrics.ERASED_JOBS._value.get()
    bytes_before = metrics.ERASED_BYTES._value.get()
    with run_service(database_url, s3_endpoint, simulator.url, output_retention_days=2,
                     retention_interval_seconds=0.2) as svc, svc.client() as client:
        old = submit(client, prompt="an old harbour at dawn", input={"num_images": 2})
        recent = submit(client, prompt="a recent harbour at dusk")
        for job in (old, recent):
            assert wait_terminal(client, job["id"])["status"] == "completed"
        assert len(s3_keys(s3, old["id"])) == 4
        sql.execute("UPDATE jobs SET completed_at = now() - interval '3 days' WHERE id = %s", (old["id"],))

        def swept() -> dict[str, Any] | None:
            current: dict[str, Any] = client.get(f"/v1/jobs/{old['id']}").json()
            return current if current["deleted_at"] and erased(sql, old["id"]) else None

        tomb = eventually(swept, timeout=20)
        assert tomb["deleted_reason"] == "retention" and tomb["status"] == "completed"
        assert s3_keys(s3, old["id"]) == []
        assert everything_mentioning(sql, "an old harbour at dawn") == []
        kept = client.get(f"/v1/jobs/{recent['id']}").json()
        assert kept["deleted_at"] is None and len(s3_keys(s3, recent["id"])) == 2
        assert httpx.get(kept["outputs"][0]["url"]).status_code == 200
    assert metrics.ERASED_JOBS._value.get() >= erased_before + 1
    assert metrics.ERASED_BYTES._value.get() > bytes_before


def test_an_owners_retention_days_wins_over_the_default(
    database_url: str, s3_endpoint: str, simulator: ServerThread, sql: psycopg.Connection[Any]
) -> None:
    with run_service(database_url, s3_endpoint, simulator.url, output_retention_days=30,
                     retention_interval_seconds=0.2) as svc:
        short_key, long_key, default_key = svc.new_key(), svc.new_key(), svc.new_key()
        for key, days in ((short_key, 1), (long_key, 100)):
            sql.execute("INSERT INTO owners (name, retention_days) VALUES (%s, %s)"
                        " ON CONFLICT (name) DO UPDATE SET retention_days = EXCLUDED.retention_days",
                        (svc.keys[key], days))
        jobs: dict[str, str] = {}
        for name, key in (("short", short_key), ("long", long_key), ("default", default_key)):
            with svc.client(key) as client:
                jobs[name] = submit(client, prompt=f"a {name} retention test")["id"]
                wait_terminal(client, jobs[name])
        # Ended 40 days ago: past the default (30) and the short owner's 1, within the long owner's 100.
        sql.execute("UPDATE jobs SET completed_at = now() - interval '40 days' WHERE id = ANY(%s)",
                    (list(jobs.values()),))

        def reasons() -> dict[str, str | None] | None:
            rows = dict(sql.execute("SELECT id, deleted_reason FROM jobs WHERE id = ANY(%s)",
                                    (list(jobs.values()),)).fetchall())
            return rows if rows[jobs["short"]] and rows[jobs["default"]] else None

        found = eventually(reasons, timeout=20)
    assert found == {jobs["short"]: "retention", jobs["default"]: "retention", jobs["long"]: None}


def test_an_erasure_someone_asked_for_is_claimed_before_retentions_backlog(postgres_server: str) -> None:
    """A job deleted during a retention backlog does not wait behind it (the duties rest
    30 x each batch, so a backlog of 100,000 is minutes): the eraser's claim takes
    erasures asked for (``request``) first, then retention's, each oldest first."""
    with fresh_database(postgres_server) as url:
        with psycopg.connect(url, autocommit=True) as sql:
            sql.execute("INSERT INTO jobs (id, owner, model, input, metadata, status)"
                        " SELECT 'job_order_' || g, 'o', 'wavespeed-ai/flux-dev-lora', '{}', '{}', 'completed'"
                        " FROM generate_series(1, 4) g")
            sql.execute("INSERT INTO erasures (job_id, reason, run_after) VALUES"
                        " ('job_order_1', 'retention', now() - interval '3 hours'),"
                        " ('job_order_2', 'retention', now() - interval '2 hours'),"
                        " ('job_order_3', 'request', now() - interval '1 second'),"
                        " ('job_order_4', 'request', now() - interval '1 minute')")

        async def claim_one_at_a_time() -> list[str]:
            engine = create_engine(url, pool_size=1)
            try:
                order = []
                for n in range(4):
                    async with engine.begin() as conn:
                        rows = (await conn.execute(queries.CLAIM_ERASURES,
                                                   {"holder": f"t{n}", "lease": 60, "limit": 1})).all()
                    order += [r.id for r in rows]
                return order
            finally:
                await engine.dispose()

        assert asyncio.run(claim_one_at_a_time()) == ["job_order_4", "job_order_3", "job_order_1", "job_order_2"]
