"""What the first erasure left behind: an object under the job's key prefix that no row
records, the provider's error text (it can echo the prompt), the callback URL on the job
and its deliveries; and a redeliver of a deleted job, refused one at a time as in bulk."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg

from devtools.serverthread import ServerThread
from tests.conftest import BUCKET, sim_config
from tests.integration.helpers import eventually, submit, wait_terminal
from tests.integration.test_deletion import erased, everything_mentioning, s3_keys
from tests.servers import WebhookCatcher


def test_an_object_under_a_deleted_jobs_prefix_that_no_row_records_is_erased(
    client: httpx.Client, s3: Any, sql: psycopg.Connection[Any]
) -> None:
    job = wait_terminal(client, submit(client)["id"])
    assert job["status"] == "completed"
    # An upload whose row was never written (a store that died between the two, then
    # was retried under another name): only the job's prefix finds it.
    stray = f"outputs/{job['id']}/0.retry.png"
    s3.put_object(Bucket=BUCKET, Key=stray, Body=b"\x89PNG stray", ContentType="image/png")
    assert stray in s3_keys(s3, job["id"])
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 202
    eventually(lambda: erased(sql, job["id"]), timeout=30)
    assert s3_keys(s3, job["id"]) == []


def test_a_deleted_jobs_tombstone_holds_no_provider_text_and_no_callback_url(
    client: httpx.Client, sim_defaults: ServerThread, sql: psycopg.Connection[Any], catcher: WebhookCatcher
) -> None:
    hook = catcher.url(f"/hooks/{uuid.uuid4().hex}")
    sim_config(sim_defaults, failure_rate=1.0)
    job = wait_terminal(client, submit(client, callback_url=hook)["id"])
    assert job["status"] == "failed" and job["error"]
    catcher.wait_for(1, timeout=20)
    eventually(lambda: client.get(f"/v1/jobs/{job['id']}").json()["callback"]["status"] == "delivered")
    def rows_with_the_error() -> list[tuple[str, str]]:  # of this job: other failed jobs share the text
        return [row for row in everything_mentioning(sql, job["id"]) if job["error"] in row[1]]

    assert rows_with_the_error() and everything_mentioning(sql, hook)

    tomb = client.delete(f"/v1/jobs/{job['id']}").json()
    assert (tomb["error"], tomb["callback_url"]) == (None, None)  # from the moment of the DELETE
    eventually(lambda: erased(sql, job["id"]), timeout=30)
    assert everything_mentioning(sql, hook) == []  # neither jobs.callback_url nor deliveries.url
    assert rows_with_the_error() == []
    again = client.get(f"/v1/jobs/{job['id']}").json()
    assert (again["status"], again["error"], again["callback_url"]) == ("failed", None, None)


def test_a_pending_callback_of_a_deleted_job_is_still_sent_then_its_url_is_forgotten(
    client: httpx.Client, sim_defaults: ServerThread, sql: psycopg.Connection[Any], catcher: WebhookCatcher
) -> None:
    hook = catcher.url(f"/hooks/{uuid.uuid4().hex}")
    catcher.statuses.extend([503, 503])  # the job.canceled callback is delivered at its third attempt
    sim_config(sim_defaults, completion_delay=30.0)
    job = submit(client, callback_url=hook)
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 202  # a running job: canceled, then deleted
    delivered = catcher.wait_for(3, timeout=30)
    assert [r.json()["type"] for r in delivered] == ["job.canceled"] * 3
    assert delivered[-1].json()["data"]["callback_url"] is None  # the body is the tombstone
    eventually(lambda: erased(sql, job["id"]) and not everything_mentioning(sql, hook), timeout=30)


def test_a_single_redeliver_of_a_deleted_job_is_refused(
    client: httpx.Client, sql: psycopg.Connection[Any], catcher: WebhookCatcher
) -> None:
    job = wait_terminal(client, submit(client, callback_url=catcher.url())["id"])
    catcher.wait_for(1, timeout=20)
    assert client.post(f"/v1/jobs/{job['id']}/callback/redeliver").status_code == 202  # before: allowed
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 202
    count = sql.execute("SELECT count(*) FROM deliveries WHERE job_id = %s", (job["id"],)).fetchone()
    refused = client.post(f"/v1/jobs/{job['id']}/callback/redeliver")
    assert refused.status_code == 409, refused.text
    assert "deleted" in refused.json()["error"]["message"]
    assert sql.execute("SELECT count(*) FROM deliveries WHERE job_id = %s", (job["id"],)).fetchone() == count
