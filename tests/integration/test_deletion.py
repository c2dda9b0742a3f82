"""DELETE /v1/jobs/{id} over the real parts: after the erasure, the bucket and every
table hold nothing of the job but its tombstone."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg
import pytest

from devtools.serverthread import ServerThread
from tests.conftest import BUCKET, Service, run_service
from tests.integration.helpers import eventually, submit, wait_terminal
from tests.servers import WebhookCatcher


def everything_mentioning(sql: psycopg.Connection[Any], needle: str) -> list[tuple[str, str]]:
    """Every row of every table whose text holds ``needle``, as (table, row text)."""
    tables = [r[0] for r in sql.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'")]
    found = []
    for table in tables:
        rows = sql.execute(f'SELECT t::text FROM "{table}" t WHERE strpos(t::text, %s) > 0', (needle,)).fetchall()
        found += [(table, r[0]) for r in rows]
    return found


def s3_keys(s3: Any, job_id: str) -> list[str]:
    answer = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"outputs/{job_id}/")
    return [o["Key"] for o in answer.get("Contents", [])]


def erased(sql: psycopg.Connection[Any], job_id: str) -> bool:
    return sql.execute("SELECT 1 FROM erasures WHERE job_id = %s", (job_id,)).fetchone() is None


def test_deleted_job_leaves_only_its_tombstone_in_the_bucket_and_the_tables(
    client: httpx.Client, s3: Any, sql: psycopg.Connection[Any], catcher: WebhookCatcher
) -> None:
    hooks, hook_url = catcher, catcher.url()
    secret_words = f"a lighthouse owned by {uuid.uuid4().hex}"
    marker = uuid.uuid4().hex
    job = submit(client, prompt=secret_words, input={"num_images": 2}, metadata={"customer": marker},
                 callback_url=hook_url)
    done = wait_terminal(client, job["id"])
    assert done["status"] == "completed"
    hooks.wait_for(1, timeout=20)
    keys = s3_keys(s3, job["id"])
    assert len(keys) == 4  # two outputs and their thumbnails
    assert everything_mentioning(sql, secret_words)  # the prompt really is stored before

    answer = client.delete(f"/v1/jobs/{job['id']}")
    assert answer.status_code == 202
    tomb = answer.json()
    assert tomb["deleted_at"] and tomb["deleted_reason"] == "request"
    assert (tomb["input"], tomb["metadata"], tomb["outputs"]) == ({}, {}, [])
    assert (tomb["status"], tomb["cost_usd"], tomb["created_at"], tomb["completed_at"]) == (
        "completed", done["cost_usd"], done["created_at"], done["completed_at"])

    eventually(lambda: erased(sql, job["id"]), timeout=20)
    assert s3_keys(s3, job["id"]) == []
    assert everything_mentioning(sql, secret_words) == []
    assert everything_mentioning(sql, marker) == []
    for key in keys:  # no event detail, delivery or webhook body names an object any more
        assert everything_mentioning(sql, key) == []
    assert sql.execute("SELECT count(*) FROM job_outputs WHERE job_id = %s", (job["id"],)).fetchone() == (0,)
    bodies = sql.execute("SELECT body FROM webhook_events WHERE job_id = %s", (job["id"],)).fetchall()
    assert bodies and all(b == ({},) for b in bodies)
    types = [r[0] for r in sql.execute("SELECT type FROM job_events WHERE job_id = %s ORDER BY id", (job["id"],))]
    assert types[-2:] == ["job.deleted", "job.erased"]

    # The tombstone, as every reader sees it.
    again = client.get(f"/v1/jobs/{job['id']}").json()
    assert again["deleted_at"] == tomb["deleted_at"] and again["input"] == {} and again["outputs"] == []
    assert client.get(f"/v1/jobs/{job['id']}/outputs/0").status_code == 404
    listed = [j["id"] for j in client.get("/v1/jobs").json()["data"]]
    assert job["id"] not in listed
    listed = [j["id"] for j in client.get("/v1/jobs", params={"include_deleted": "true"}).json()["data"]]
    assert job["id"] in listed


def test_second_delete_answers_202_and_changes_nothing(client: httpx.Client, sql: psycopg.Connection[Any]) -> None:
    job = submit(client)
    wait_terminal(client, job["id"])
    first = client.delete(f"/v1/jobs/{job['id']}").json()
    eventually(lambda: erased(sql, job["id"]), timeout=20)
    events = sql.execute("SELECT count(*) FROM job_events WHERE job_id = %s", (job["id"],)).fetchone()
    second = client.delete(f"/v1/jobs/{job['id']}")
    assert second.status_code == 202
    assert second.json()["deleted_at"] == first["deleted_at"]
    assert sql.execute("SELECT count(*) FROM job_events WHERE job_id = %s", (job["id"],)).fetchone() == events
    assert erased(sql, job["id"])


def test_another_owners_job_cannot_be_deleted(service: Service, client: httpx.Client) -> None:
    job = submit(client)
    with service.client() as stranger:
        assert stranger.delete(f"/v1/jobs/{job['id']}").status_code == 404
        assert stranger.delete("/v1/jobs/job_does_not_exist").status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}").json()["deleted_at"] is None


def test_the_deletion_mark_itself_erases_the_rows_own_data(
    database_url: str, s3_endpoint: str, simulator: ServerThread, sql: psycopg.Connection[Any]
) -> None:
    """The mark rewrites the row once, erasing input, metadata and the idempotency key with
    it (the eraser then leaves the row alone): read while the erasure is still due."""
    with run_service(database_url, s3_endpoint, simulator.url, run_workers=False) as svc, svc.client() as client:
        made = client.post("/v1/jobs", headers={"Idempotency-Key": f"gull-{uuid.uuid4().hex}"}, json={
            "model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "a marked gull", "size": "256*256"},
            "metadata": {"user": "u_gull"}})
        assert made.status_code == 202, made.text
        job = made.json()
        assert client.delete(f"/v1/jobs/{job['id']}").status_code == 202
        with sql.transaction():
            due = sql.execute("SELECT 1 FROM erasures WHERE job_id = %s FOR SHARE", (job["id"],)).fetchone()
            row = sql.execute("SELECT input, metadata, idempotency_key, request_hash, deleted_at IS NOT NULL"
                              " FROM jobs WHERE id = %s", (job["id"],)).fetchone()
            labels = sql.execute("SELECT count(*) FROM job_metadata WHERE job_id = %s", (job["id"],)).fetchone()
    if due is None:
        pytest.skip("another test's eraser finished this job first: nothing to tell the mark's erasure apart")
    assert row == ({}, {}, None, None, True)
    assert labels == (0,)


def test_deleting_a_queued_job_cancels_it_first_and_leaves_its_erasure_due(
    database_url: str, s3_endpoint: str, simulator: ServerThread, sql: psycopg.Connection[Any]
) -> None:
    with run_service(database_url, s3_endpoint, simulator.url, run_workers=False) as svc, svc.client() as client:
        job = submit(client, prompt="a queued boat")
        tomb = client.delete(f"/v1/jobs/{job['id']}").json()
    assert tomb["status"] == "canceled" and tomb["deleted_at"] and tomb["input"] == {}
    # The duty row was committed with the mark: whichever worker runs next erases it.
    row = sql.execute("SELECT reason FROM erasures WHERE job_id = %s", (job["id"],)).fetchone()
    assert row == ("request",) or erased(sql, job["id"])  # another test's workers may already have run it
    # A service with workers erases it (the test does not count on another test's workers).
    with run_service(database_url, s3_endpoint, simulator.url):
        eventually(lambda: erased(sql, job["id"]), timeout=20)
    assert everything_mentioning(sql, "a queued boat") == []
