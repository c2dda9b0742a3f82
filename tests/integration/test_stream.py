"""GET /v1/jobs/{id}/stream: server-sent events driven by LISTEN/NOTIFY."""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from devtools.devstack import free_port
from devtools.serverthread import ServerThread
from service.db.jobs import new_job_id
from service.db.keys import create_key_blocking
from tests.conftest import Service, make_settings, run_service
from tests.integration.helpers import submit
from tests.processes import ServiceProcess


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
    job = {"id": new_job_id()}
    # Not due (run_after NULL): no worker of the test run moves it, so the stream is idle.
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


def _idle_job(sql: psycopg.Connection[Any], owner: str) -> str:
    """A queued job no worker will move (run_after NULL), so its stream stays open."""
    job_id = new_job_id()
    sql.execute("INSERT INTO jobs (id, owner, model, input, status) VALUES (%s, %s, 'wavespeed-ai/flux-dev-lora',"
                " '{\"prompt\": \"x\"}', 'queued')", (job_id, owner))
    return job_id


def test_a_stream_past_streams_max_per_process_is_503_with_retry_after_and_a_slot_frees_when_one_ends(
    database_url: str, s3_endpoint: str, simulator: ServerThread, sql: psycopg.Connection[Any]
) -> None:
    owner = f"cap_{uuid.uuid4().hex[:8]}"
    ids = [_idle_job(sql, owner) for _ in range(3)]
    with (run_service(database_url, s3_endpoint, simulator.url, run_workers=False,
                      streams_max_per_process=2) as svc, svc.client(svc.new_key(owner)) as client,
          client.stream("GET", f"/v1/jobs/{ids[0]}/stream") as first):
        # Keep each line iterator: dropping one closes its response (httpx).
        first_lines = first.iter_lines()
        assert next(first_lines) == "event: job"
        with client.stream("GET", f"/v1/jobs/{ids[1]}/stream") as second:
            second_lines = second.iter_lines()
            assert next(second_lines) == "event: job"
            refused = client.get(f"/v1/jobs/{ids[2]}/stream")
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "5"
            error = refused.json()["error"]
            assert error["type"] == "too_many_streams"
            assert "STREAMS_MAX_PER_PROCESS" in error["message"] and "2" in error["message"]
            metrics = client.get("/metrics").text
            assert "wavespeed_jobs_streams_open 2.0" in metrics
        # The second stream's client went away: its slot is free again (the server
        # notices the closed connection at once or at its next write).
        deadline = time.monotonic() + 10
        while True:
            third = client.send(client.build_request("GET", f"/v1/jobs/{ids[2]}/stream"), stream=True)
            if third.status_code != 503 or time.monotonic() > deadline:
                break
            third.close()
            time.sleep(0.1)
        try:
            assert third.status_code == 200
            assert next(third.iter_lines()) == "event: job"
        finally:
            third.close()


@pytest.mark.slow
def test_sigterm_ends_every_open_stream_cleanly_and_serve_exits_at_once(
    database_url: str, s3_endpoint: str, simulator: ServerThread, sql: psycopg.Connection[Any], tmp_path: Path
) -> None:
    owner = f"bye_{uuid.uuid4().hex[:8]}"
    ids = [_idle_job(sql, owner) for _ in range(3)]
    port = free_port()
    # A graceful wait of 30 s: streams left open would hold the exit that long.
    settings = make_settings(database_url, s3_endpoint, simulator.url, port, shutdown_grace_seconds=25.0)
    with ServiceProcess(["serve", "--no-workers", "--host", "127.0.0.1", "--port", str(port)], settings,
                        tmp_path / "serve.log", port) as proc:
        key = create_key_blocking(database_url, owner)
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=proc.url, headers=headers, timeout=30) as client:
            streams = [client.send(client.build_request("GET", f"/v1/jobs/{i}/stream"), stream=True) for i in ids]
            try:
                lines = [s.iter_lines() for s in streams]
                for it in lines:
                    assert next(it) == "event: job"
                started = time.monotonic()
                assert proc.proc is not None
                proc.proc.send_signal(signal.SIGTERM)
                for it in lines:
                    rest = list(it)  # ends only when the server completes the response
                    assert [line for line in rest if line][-1] == ": closing: the server is shutting down, reconnect"
                assert proc.proc.wait(20) == 0
                assert time.monotonic() - started < 20  # well before the 30 s graceful timeout
            finally:
                for s in streams:
                    s.close()
