"""A duty's claim and its lease renewals write no index entry: they are HOT updates.

The lease (``locked_until``, ``locked_by``) and ``attempts`` are in none of the indexes of
``jobs``, so Postgres can keep the new row version on the old one's page and skip every
index (a status change writes about nine entries) — but only if the page has room.
Rows inserted into pages filled to 100 % leave none; ``jobs`` keeps 10 % of each page
free (fillfactor 90, revision 0017). Each statement runs as the service sends it
(queries.CLAIM_JOBS, queries.RENEW_LEASES) in a transaction of its own, and the session's
own counters (pg_stat_xact_user_tables) say whether its update was HOT.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import sqlalchemy
from sqlalchemy import Connection, Engine, TextClause

from service.db import queries

# Enough jobs of one size to fill several pages: the first page is as full as inserts fill it.
# Rows of ~250 bytes: the 10 % a page keeps free (819 bytes) holds the claim's version and a
# renewal's without pruning the page first (which waits for every older snapshot of the
# database to end, so whether it happens in a test is timing).
JOBS = 300
INPUT = json.dumps({"prompt": "a lighthouse on a cliff at dusk", "size": "1024*1024"})


@pytest.fixture
def sql(own_db: str) -> Iterator[Engine]:
    engine = sqlalchemy.create_engine(own_db.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        # Storing jobs, due in id order (the claim takes the oldest run_after first: job 0,
        # on the first page).
        conn.execute(sqlalchemy.text(
            "INSERT INTO jobs (id, owner, model, input, status, run_after, provider_task_id, provider_status, "
            "                  submit_sent_at, submitted_at, callback_url, traceparent) "
            "SELECT 'job_' || lpad(i::text, 26, '0'), 'hot', 'wavespeed-ai/flux-dev', CAST(:input AS jsonb), "
            "       'storing', now() - interval '1 hour' + i * interval '1 second', 'task_' || i, 'completed', "
            "       now(), now(), 'https://backend.example/cb', NULL "
            "FROM generate_series(0, :n - 1) AS i"), {"input": INPUT, "n": JOBS})
    yield engine
    engine.dispose()


def _updates(conn: Connection, statement: TextClause, params: dict[str, object]) -> tuple[int, int]:
    """Rows of ``jobs`` the statement updated, and how many of them HOT. The session's
    counters include its earlier transactions until they are sent to the statistics (never
    in the middle of a transaction): the difference across the statement is its own."""
    counts = sqlalchemy.text(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = 'jobs'")
    before = conn.execute(counts).one()
    conn.execute(statement, params)
    after = conn.execute(counts).one()
    return int(after[0] - before[0]), int(after[1] - before[1])


def test_a_claim_and_its_lease_renewal_are_hot_updates(sql: Engine) -> None:
    with sql.connect() as conn:
        first_page, row_bytes = conn.execute(sqlalchemy.text(
            "SELECT count(*), max(pg_column_size(jobs.*)) FROM jobs WHERE (ctid::text::point)[0] = 0")).one()
    assert 5 < first_page < JOBS  # the first page is full of jobs, and there are more pages
    assert row_bytes < 300

    with sql.begin() as conn:
        claim = {"statuses": ["storing"], "holder": "w1:store", "lease": 60.0, "limit": 1}
        assert _updates(conn, queries.CLAIM_JOBS, claim) == (1, 1)
    with sql.begin() as conn:
        renewal = {"ids": ["job_" + "0" * 26], "holders": ["w1:store"], "lease": 60.0}
        assert _updates(conn, queries.RENEW_LEASES["jobs"], renewal) == (1, 1)

    with sql.connect() as conn:
        held = conn.execute(sqlalchemy.text(
            "SELECT locked_by, attempts, (ctid::text::point)[0] AS page FROM jobs WHERE id = :id"),
            {"id": "job_" + "0" * 26}).one()
    assert (held.locked_by, held.attempts, held.page) == ("w1:store", 1, 0)
