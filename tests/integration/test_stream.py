"""GET /v1/jobs/{id}/stream: server-sent events driven by LISTEN/NOTIFY."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import psycopg

from devtools.serverthread import ServerThread
from tests.conftest import Service, run_service
from tests.integration.helpers import submit


def read_events(response: httpx.Response, limit_seconds: float = 30) -> tuple[list[dict[str, Any]], list[str]]:
    """(job events, comment lines) until the server ends the stream; bounded in time."""
    jobs, comments, event, deadline = [], [], None, time.monotonic() + limit_seconds
    for line in response.iter_lines():
        assert time.monotonic() < deadline, "stream did not end in time"
        if line.startswith(":"):
            comments.append(line)
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "job":
            jobs.append(json.loads(line[6:]))
    return jobs, comments


def test_stream_sends_the_job_at_once_and_after_each_status_change_then_ends(client: httpx.Client) -> None:
    job = submit(client, prompt="a paper boat on a pond")
    with client.stream("GET", f"/v1/jobs/{job['id']}/stream", timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events, _ = read_events(response)
    statuses = [e["status"] for e in events]
    assert statuses[-1] == "completed" and events[-1]["outputs"]
    assert len(statuses) == len(set(statuses))  # one event per status, in order
    order = ["queued", "submitted", "processing", "storing", "completed"]
    assert [order.index(s) for s in statuses] == sorted(order.index(s) for s in statuses)
    assert all(e["id"] == job["id"] for e in events)


def test_stream_of_a_terminal_job_sends_it_once_and_ends(client: httpx.Client) -> None:
    job = submit(client)
    client.post(f"/v1/jobs/{job['id']}/cancel")
    with client.stream("GET", f"/v1/jobs/{job['id']}/stream") as response:
        events, _ = read_events(response, 10)
    assert [e["status"] for e in events] == ["canceled"]


def test_stream_of_another_owners_job_is_404(service: Service, client: httpx.Client) -> None:
    job = submit(client)
    with service.client() as stranger:
        assert stranger.get(f"/v1/jobs/{job['id']}/stream").status_code == 404
    assert client.get("/v1/jobs/job_nope/stream").status_code == 404
    assert httpx.get(f"{service.url}/v1/jobs/{job['id']}/stream").status_code == 401


def test_idle_stream_gets_keepalive_comments_and_hears_a_cancel_from_another_process_connection(
    database_url: str, s3_endpoint: str, simulator: ServerThread, sql: psycopg.Connection[Any]
) -> None:
    owner = f"idle_{uuid.uuid4().hex[:8]}"
    job = {"id": f"job_idle_{uuid.uuid4().hex}"}
    # Not due (run_after NULL): no worker of this session moves it, so the stream is idle.
    sql.execute("INSERT INTO jobs (id, owner, model, input, status) VALUES (%s, %s, 'wavespeed-ai/flux-dev-lora',"
                " '{\"prompt\": \"x\"}', 'queued')", (job["id"], owner))
    with run_service(database_url, s3_endpoint, simulator.url, run_workers=False,
                     stream_keepalive_seconds=0.2) as svc, svc.client(svc.new_key(owner)) as client:
        with client.stream("GET", f"/v1/jobs/{job['id']}/stream") as response:
            lines = response.iter_lines()
            assert next(lines) == "event: job"
            assert json.loads(next(lines)[6:])["status"] == "queued"
            assert next(lines) == ""
            assert next(lines) == ": keep-alive"  # idle: nothing changed, no event
            # A change made by another connection (here: another process's API) reaches
            # the stream through NOTIFY.
            with httpx.Client(base_url=svc.url, headers=client.headers) as other:
                other.post(f"/v1/jobs/{job['id']}/cancel")
            rest = [line for line in lines if line.startswith("data: ")]
        assert [json.loads(line[6:])["status"] for line in rest] == ["canceled"]
