"""The history query's machinery (service/db/history.py, revision 0003): the job_metadata rows
the triggers keep, and pages that are exactly what a plain ``ORDER BY … OFFSET`` would
give for every filter combination, walked to the end through the cursor.

The query is not the obvious one (one merged branch per status, metadata filters driven
by job_metadata's index, joins on the ordering key), so this compares it with a
reference computed in Python over a random history with deliberate created_at ties.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.conftest import Service

DEV, KREA = "wavespeed-ai/flux-dev-lora", "wavespeed-ai/flux-krea-dev-lora"
STATUSES = ["queued", "submitted", "processing", "storing", "completed", "failed", "canceled", "timed_out"]
BASE = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
PAGE = 13


def insert_job(sql: psycopg.Connection[Any], owner: str, *, metadata: dict[str, Any], status: str = "completed",
               model: str = DEV, created_at: dt.datetime = BASE, job_id: str | None = None) -> str:
    job_id = job_id or "job_x" + uuid.uuid4().hex
    sql.execute(
        "INSERT INTO jobs (id, owner, model, status, input, metadata, created_at, updated_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (job_id, owner, model, status, Jsonb({"prompt": "p"}), Jsonb(metadata), created_at, created_at),
    )
    return job_id


def side_rows(sql: psycopg.Connection[Any], job_id: str) -> dict[str, tuple[str, str, str, dt.datetime]]:
    rows = sql.execute(
        "SELECT key, value, status, owner, created_at FROM job_metadata WHERE job_id = %s", (job_id,)
    ).fetchall()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


# --------------------------------------------------------------------------- triggers


def test_insert_copies_each_string_key_with_owner_time_and_status(sql: psycopg.Connection[Any]) -> None:
    owner = "owner_" + uuid.uuid4().hex[:8]
    job = insert_job(sql, owner, metadata={"user_id": "u_1", "env": "prod", "n": 5, "flag": True},
                     status="queued")
    assert side_rows(sql, job) == {
        "user_id": ("u_1", "queued", owner, BASE),
        "env": ("prod", "queued", owner, BASE),
    }  # 5 and true are not strings: a string filter could never match them (nor does @>)


def test_job_without_metadata_has_no_rows(sql: psycopg.Connection[Any]) -> None:
    job = insert_job(sql, "owner_" + uuid.uuid4().hex[:8], metadata={})
    assert side_rows(sql, job) == {}


def test_status_changes_follow_the_job(sql: psycopg.Connection[Any]) -> None:
    owner = "owner_" + uuid.uuid4().hex[:8]
    job = insert_job(sql, owner, metadata={"a": "1", "b": "2"}, status="queued")
    for status in ("submitted", "processing", "storing", "completed"):
        sql.execute("UPDATE jobs SET status = %s WHERE id = %s", (status, job))
        assert {v[1] for v in side_rows(sql, job).values()} == {status}


def test_other_updates_leave_the_rows_alone(sql: psycopg.Connection[Any]) -> None:
    job = insert_job(sql, "owner_" + uuid.uuid4().hex[:8], metadata={"a": "1"}, status="queued")
    before = sql.execute("SELECT xmin::text FROM job_metadata WHERE job_id = %s", (job,)).fetchone()
    sql.execute("UPDATE jobs SET attempts = attempts + 1, locked_by = 'w', updated_at = now() WHERE id = %s", (job,))
    after = sql.execute("SELECT xmin::text FROM job_metadata WHERE job_id = %s", (job,)).fetchone()
    assert before == after  # not even rewritten: the trigger did not fire


def test_changed_metadata_or_owner_rewrites_the_rows(sql: psycopg.Connection[Any]) -> None:
    job = insert_job(sql, "owner_a" + uuid.uuid4().hex[:8], metadata={"a": "1", "b": "2"})
    sql.execute("UPDATE jobs SET metadata = %s, owner = 'owner_moved' WHERE id = %s",
                (Jsonb({"b": "3", "c": "4"}), job))
    assert side_rows(sql, job) == {
        "b": ("3", "completed", "owner_moved", BASE),
        "c": ("4", "completed", "owner_moved", BASE),
    }
    sql.execute("UPDATE jobs SET metadata = '{}' WHERE id = %s", (job,))
    assert side_rows(sql, job) == {}


def test_deleting_a_job_deletes_its_rows(sql: psycopg.Connection[Any]) -> None:
    job = insert_job(sql, "owner_" + uuid.uuid4().hex[:8], metadata={"a": "1"})
    sql.execute("DELETE FROM jobs WHERE id = %s", (job,))
    assert side_rows(sql, job) == {}


def test_jobs_created_through_the_api_are_filterable(client: httpx.Client) -> None:
    created = client.post("/v1/jobs", json={
        "model": DEV, "input": {"prompt": "a fox", "size": "256*256"}, "metadata": {"order": "o-42"},
    })
    assert created.status_code == 202, created.text
    found = client.get("/v1/jobs", params={"metadata.order": "o-42"}).json()["data"]
    assert [j["id"] for j in found] == [created.json()["id"]]


# --------------------------------------------------------------------------- pages


@pytest.fixture(scope="module")
def history(service: Service, database_url: str) -> Iterator[tuple[httpx.Client, list[dict[str, Any]]]]:
    """300 jobs of one owner (and 100 of a neighbour with the same metadata values):
    random statuses, models and metadata; created_at on a coarse grid so that many
    jobs share a timestamp and only the id orders them."""
    rng = random.Random(6)
    key = service.new_key()
    owner = service.keys[key]
    rows: list[dict[str, Any]] = []
    with psycopg.connect(database_url, autocommit=True) as sql:
        for n in range(400):
            mine = n < 300
            metadata = {k: rng.choice(values) for k, values in
                        (("tenant", ["t1", "t2", "t3"]), ("env", ["prod"] * 9 + ["dev"]),
                         ("user", [f"u{i}" for i in range(40)]), ("x", ["1", "2"]), ("y", ["1", "2"]))
                        if rng.random() < 0.8}
            job_id, status = f"job_t{n:04d}{uuid.uuid4().hex[:6]}", rng.choice(STATUSES[:4] + STATUSES[4:] * 4)
            model, created_at = rng.choice([DEV, DEV, KREA]), BASE + dt.timedelta(minutes=rng.randrange(120))
            insert_job(sql, owner if mine else "neighbour_" + owner, metadata=metadata, status=status, model=model,
                       created_at=created_at, job_id=job_id)
            row = {"id": job_id, "status": status, "model": model, "created_at": created_at, "metadata": metadata}
            if mine:
                rows.append(row)
    with service.client(key) as client:
        yield client, rows


def matches(row: dict[str, Any], params: dict[str, Any]) -> bool:
    for name, value in params.items():
        if name == "status" and row["status"] not in value.split(","):
            return False
        if name == "model" and row["model"] != value:
            return False
        if name == "created_after" and not row["created_at"] > dt.datetime.fromisoformat(value):
            return False
        if name == "created_before" and not row["created_at"] < dt.datetime.fromisoformat(value):
            return False
        if name.startswith("metadata.") and row["metadata"].get(name[len("metadata."):]) != value:
            return False
    return True


def walk(client: httpx.Client, params: dict[str, Any]) -> list[str]:
    """Every page through the cursor; bounded, so a cursor that loops fails the test."""
    seen: list[str] = []
    cursor = None
    for _ in range(400 // PAGE + 2):
        query = {**params, "limit": PAGE, **({"cursor": cursor} if cursor else {})}
        answer = client.get("/v1/jobs", params=query)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert len(body["data"]) <= PAGE
        seen += [j["id"] for j in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("the cursor walk did not end")


T1, T2 = (BASE + dt.timedelta(minutes=30)).isoformat(), (BASE + dt.timedelta(minutes=90)).isoformat()
COMBINATIONS: list[dict[str, Any]] = [
    {},
    {"status": "completed"},
    {"status": "processing"},
    {"status": "failed,canceled,timed_out"},
    {"status": "queued,failed,queued"},  # repeated statuses count once
    {"status": ",".join(STATUSES)},  # every status: no filter at all
    {"model": KREA},
    {"status": "failed,completed", "model": DEV},
    {"created_after": T1},
    {"created_after": T1, "created_before": T2},
    {"status": "completed,canceled", "created_before": T2},
    {"metadata.tenant": "t1"},
    {"metadata.user": "u7"},
    {"metadata.env": "dev"},
    {"metadata.tenant": "t2", "status": "completed"},
    {"metadata.tenant": "t2", "status": "failed,canceled,storing"},
    {"metadata.env": "prod", "model": KREA, "created_after": T1},
    {"metadata.env": "prod", "metadata.tenant": "t3"},
    {"metadata.tenant": "t3", "metadata.env": "prod", "metadata.x": "1"},
    # More keys than are joined: the rest are checked on the job row.
    {"metadata.tenant": "t1", "metadata.env": "prod", "metadata.x": "2", "metadata.y": "1"},
    {"metadata.user": "u3", "metadata.env": "prod", "status": "completed,failed", "created_before": T2},
    {"metadata.tenant": "nobody"},
    {"metadata.absent_key": "t1"},
]


@pytest.mark.parametrize("params", COMBINATIONS, ids=lambda p: json.dumps(p, sort_keys=True))
def test_every_page_matches_the_plain_query(history: tuple[httpx.Client, list[dict[str, Any]]],
                                            params: dict[str, Any]) -> None:
    client, rows = history
    expected = [r["id"] for r in sorted(rows, key=lambda r: (r["created_at"], r["id"]), reverse=True)
                if matches(r, params)]
    assert walk(client, params) == expected


def test_a_status_change_moves_a_job_between_filtered_lists(
    history: tuple[httpx.Client, list[dict[str, Any]]], database_url: str
) -> None:
    client, rows = history
    row = next(r for r in rows if r["status"] == "processing" and r["metadata"].get("tenant"))
    params = {"metadata.tenant": row["metadata"]["tenant"]}
    assert row["id"] in walk(client, {**params, "status": "processing"})
    with psycopg.connect(database_url, autocommit=True) as sql:
        sql.execute("UPDATE jobs SET status = 'failed' WHERE id = %s", (row["id"],))
    try:
        assert row["id"] not in walk(client, {**params, "status": "processing"})
        assert row["id"] in walk(client, {**params, "status": "failed"})
    finally:
        with psycopg.connect(database_url, autocommit=True) as sql:
            sql.execute("UPDATE jobs SET status = 'processing' WHERE id = %s", (row["id"],))
