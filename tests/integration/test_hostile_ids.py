"""Ids that cannot be a job's (a NUL, too long, not the id format) are a 4xx before any
query on every route that takes one, the history page's included; a hostile id never
stalls the process (its log line, its query) and never fails a read shared with other
owners (the live streams' batched reads)."""

from __future__ import annotations

import concurrent.futures
import json
import re
import threading
import time
from typing import Any

import httpx
import pytest
from starlette.routing import Mount, Route

from devtools.serverthread import ServerThread
from service.app import routes
from tests.conftest import Service
from tests.integration.helpers import submit
from tests.integration.test_history_page import sign_in

HOSTILE = "%00%26" + "key" * 10_000  # ~30 KB: a NUL, then what a backtracking log mask chokes on


def requests_with_an_id(value: str) -> list[tuple[str, str]]:
    """(method, path) of every route of the app with each of its path parameters set to
    ``value``, and the history page's query of job ids."""
    found = [("GET", "/live?id=" + value)]
    for route in routes():
        if isinstance(route, Mount):
            found.append(("GET", route.path + "/" + value))
        elif isinstance(route, Route) and "{" in route.path:
            path = re.sub(r"\{[^}]+\}", value, route.path)
            found += [(method, path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return found


@pytest.fixture
def signed_in(service: Service) -> Any:
    """A client with an API key and a history-page session of the same owner."""
    key = service.new_key()
    with sign_in(service, key) as web:
        web.headers["Authorization"] = f"Bearer {key}"
        yield web


def test_the_routes_taking_an_id_are_all_found() -> None:
    paths = {path for _, path in requests_with_an_id("X")}
    assert {"/v1/jobs/X", "/v1/jobs/X/stream", "/jobs/X", "/jobs/X/live", "/live?id=X",
            "/api/v3/predictions/X/result", "/webhooks/wavespeed/X", "/v1/jobs/X/outputs/X",
            "/v1/jobs/X/receipt"} <= paths


@pytest.mark.parametrize("value", ["%00", "a%00b", "job_" + "0" * 25 + "%00", "x" * 5000, "job_not-an-id"])
def test_an_id_that_cannot_be_a_jobs_is_a_4xx_on_every_route(signed_in: httpx.Client, value: str) -> None:
    answers = {(method, path[:60]): signed_in.request(method, path).status_code
               for method, path in requests_with_an_id(value)}
    assert all(400 <= status < 500 for status in answers.values()), answers


def test_three_30_kb_hostile_ids_leave_healthz_answering_within_a_second(service: Service) -> None:
    slowest, stop = [0.0], threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=service.url, timeout=10) as http:
            while not stop.is_set():
                started = time.monotonic()
                assert http.get("/healthz").status_code == 200
                slowest[0] = max(slowest[0], time.monotonic() - started)
                time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        time.sleep(0.2)
        with service.client() as client:
            statuses = [client.get(f"/v1/jobs/{HOSTILE}/stream").status_code,
                        client.get(f"/v1/jobs/{HOSTILE}").status_code,
                        client.get(f"/api/v3/predictions/{HOSTILE}/result").status_code]
        time.sleep(0.2)
    finally:
        stop.set()
        poller.join(15)
    assert statuses == [404, 404, 404]
    assert slowest[0] < 1.0, f"/healthz took {slowest[0]:.2f} s beside the hostile requests"


def test_another_owners_stream_receives_every_event_while_a_stranger_sends_nul_ids(
    service: Service, sim_defaults: ServerThread
) -> None:
    stop = threading.Event()
    strangers: list[int] = []

    def stranger() -> None:
        with service.client() as client:
            while not stop.is_set():
                strangers.append(client.get("/v1/jobs/%00/stream").status_code)
                strangers.append(client.get("/v1/jobs/job_0000000000000000000000000%00/stream").status_code)

    with service.client() as owner, concurrent.futures.ThreadPoolExecutor(4) as pool:
        job = submit(owner)
        flood = [pool.submit(stranger) for _ in range(3)]
        try:
            seen = []
            with owner.stream("GET", f"/v1/jobs/{job['id']}/stream", timeout=30) as answer:
                assert answer.status_code == 200
                seen = [json.loads(line[6:])["status"] for line in answer.iter_lines() if line.startswith("data: ")]
        finally:
            stop.set()
            for done in flood:
                done.result(timeout=30)
    assert seen[-1] == "completed", seen  # the stream ran to the terminal event, no read failed
    assert seen == sorted(set(seen), key=seen.index)  # each status once, in order
    assert strangers and set(strangers) == {404}
