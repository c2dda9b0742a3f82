"""Callbacks to the backend, end to end: the service POSTs signed events to real HTTP
endpoints on loopback, and every delivery is verified independently with the reference
``standardwebhooks`` library (what a backend would run).

The service here has its own database: its retry schedule and timeout differ from the
session service's, and workers of every process on a database share its deliveries.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devtools.serverthread import ServerThread
from tests.conftest import BUCKET, Service, fresh_database, run_service
from tests.integration.helpers import eventually, s3_object, sha256, submit, wait_terminal
from tests.servers import wait_for_requests

SCHEDULE = [0.0, 0.2, 0.3, 0.4, 0.5]  # five attempts, fast
CALLBACK_TIMEOUT = 4.0
HOLD_LIMIT = 30.0  # a held answer is released after this whatever the test does


# --------------------------------------------------------------------------- endpoint


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hold: threading.Event | None = None  # answer only once this is set (bounded)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    finished: threading.Event = field(default_factory=threading.Event)

    def verify(self, secret: str) -> dict[str, Any]:
        payload: dict[str, Any] = Webhook(secret).verify(self.body, self.headers)
        return payload


class Endpoint:
    """A backend's callback endpoint whose answers the test scripts one by one."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.default = Reply()
        self.requests: list[Received] = []
        self._cond = threading.Condition()
        self._server: ServerThread | None = None

    def app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            body = await request.body()
            with self._cond:
                reply = self.replies.popleft() if self.replies else self.default
                received = Received(request.url.path, {k.lower(): v for k, v in request.headers.items()}, body,
                                    time.time())
                self.requests.append(received)
                self._cond.notify_all()
            try:
                if reply.hold is not None:
                    await asyncio.to_thread(reply.hold.wait, HOLD_LIMIT)
                return Response(reply.body, status_code=reply.status, headers=reply.headers)
            finally:
                received.finished.set()

        return Starlette(routes=[Route("/{path:path}", handle, methods=["POST"])])

    def url(self, path: str = "/hook") -> str:
        assert self._server is not None
        return self._server.url + path

    def wait_for(self, count: int, timeout: float = 15.0,
                 predicate: Callable[[Received], bool] | None = None) -> list[Received]:
        return wait_for_requests(self._cond, self.requests, count, timeout, predicate)

    def __enter__(self) -> Self:
        self._server = ServerThread(self.app()).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.stop()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def private_db(postgres_server: str) -> Iterator[str]:
    with fresh_database(postgres_server) as url:
        yield url


@pytest.fixture(scope="module")
def cb_service(private_db: str, s3_endpoint: str, simulator: ServerThread) -> Iterator[Service]:
    with run_service(private_db, s3_endpoint, simulator.url,
                     callback_retry_schedule=",".join(str(d) for d in SCHEDULE),
                     callback_timeout_seconds=CALLBACK_TIMEOUT) as svc:
        yield svc


@pytest.fixture
def api_service(cb_service: Service) -> Service:
    """``api`` talks to this module's service."""
    return cb_service


@pytest.fixture
def secret(api: httpx.Client) -> str:
    """The owner's own callback secret (each test's owner is new: a random one)."""
    response = api.get("/v1/callback-secret")
    assert response.status_code == 200, response.text
    return str(response.json()["secret"])


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    with Endpoint() as e:
        yield e


def ended_job(api: httpx.Client, callback_url: str) -> dict[str, Any]:
    """A job made terminal at once (canceled), so its callback goes out now."""
    job = submit(api, callback_url=callback_url)
    response = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code in (200, 409), response.text  # 409: it finished first
    return wait_terminal(api, job["id"])


def callback_state(api: httpx.Client, job_id: str, *states: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        job = api.get(f"/v1/jobs/{job_id}").json()
        return job if job["callback"]["status"] in states else None

    return eventually(check, timeout=20)


def events_of(api: httpx.Client, job_id: str, type_: str) -> list[dict[str, Any]]:
    return [e for e in api.get(f"/v1/jobs/{job_id}/events").json()["data"] if e["type"] == type_]


# --------------------------------------------------------------------------- tests


def test_completed_job_is_delivered_once_signed_with_the_job_and_week_long_output_urls(
    api: httpx.Client, endpoint: Endpoint, secret: str, s3: Any
) -> None:
    job = submit(api, callback_url=endpoint.url(), input={"num_images": 2}, metadata={"user_id": "u_1"})
    done = wait_terminal(api, job["id"])
    assert done["status"] == "completed", done
    job_now = callback_state(api, job["id"], "delivered")
    assert job_now["callback"] == {"status": "delivered", "attempts": 1}

    [request] = endpoint.wait_for(1)
    event = request.verify(secret)
    assert event["type"] == "job.completed"
    ended = dt.datetime.fromisoformat(done["completed_at"]).timestamp()
    print(f"\ncallback arrived {(request.at - ended) * 1000:.0f} ms after the job completed")
    assert event["data"]["id"] == job["id"]
    assert event["data"]["status"] == "completed"
    assert event["data"]["metadata"] == {"user_id": "u_1"}
    assert event["timestamp"].endswith("Z")
    assert request.headers["webhook-id"].startswith("msg_")
    assert len(event["data"]["outputs"]) == 2
    for output in event["data"]["outputs"]:
        query = parse_qs(urlsplit(output["url"]).query)
        assert query["X-Amz-Expires"] == ["604800"]  # outlives the whole retry schedule
        stored = s3_object(s3, BUCKET, output["key"])
        assert sha256(httpx.get(output["url"]).content) == output["sha256"] == sha256(stored)

    [attempt] = events_of(api, job["id"], "callback.attempt")
    assert attempt["detail"]["status_code"] == 200
    assert attempt["detail"]["outcome"] == "delivered"
    assert isinstance(attempt["detail"]["latency_ms"], int)
    assert attempt["detail"]["delivery_id"] == request.headers["webhook-id"]
    assert len(events_of(api, job["id"], "callback.delivered")) == 1
    assert len(endpoint.requests) == 1  # delivered, so never sent again


def test_fails_three_times_then_delivered_with_the_same_id_and_body(
    api: httpx.Client, endpoint: Endpoint, secret: str
) -> None:
    endpoint.replies.extend([Reply(500, body=b"boom"), Reply(502), Reply(404)])
    job = ended_job(api, endpoint.url())
    job_now = callback_state(api, job["id"], "delivered")
    assert job_now["callback"] == {"status": "delivered", "attempts": 4}

    requests = endpoint.wait_for(4)
    assert len(requests) == 4
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    assert len({r.body for r in requests}) == 1  # the body is frozen at the first attempt
    for r in requests:
        assert r.verify(secret)["data"]["id"] == job["id"]  # each attempt freshly signed

    attempts = events_of(api, job["id"], "callback.attempt")
    assert [a["detail"]["status_code"] for a in attempts] == [500, 502, 404, 200]
    assert [a["detail"]["outcome"] for a in attempts] == ["retrying"] * 3 + ["delivered"]
    assert attempts[0]["detail"]["answer"] == "boom"  # the answer's first bytes are kept
    assert attempts[0]["detail"]["error"] == "HTTP 500"


def test_gives_up_after_the_schedule_and_redelivers_through_the_api(
    api: httpx.Client, endpoint: Endpoint, secret: str
) -> None:
    endpoint.default = Reply(503)
    job = ended_job(api, endpoint.url())
    failed = callback_state(api, job["id"], "failed")
    assert failed["callback"] == {"status": "failed", "attempts": len(SCHEDULE)}
    assert len(endpoint.wait_for(len(SCHEDULE))) == len(SCHEDULE)
    [gave_up] = events_of(api, job["id"], "callback.failed")
    assert "schedule" in gave_up["detail"]["reason"]
    first_id = endpoint.requests[0].headers["webhook-id"]

    endpoint.default = Reply(204)
    response = api.post(f"/v1/jobs/{job['id']}/callback/redeliver")
    assert response.status_code == 202, response.text
    assert response.json()["id"] == first_id
    again = callback_state(api, job["id"], "delivered")
    assert again["callback"] == {"status": "delivered", "attempts": 1}  # a new attempt series
    last = endpoint.wait_for(len(SCHEDULE) + 1)[-1]
    assert last.headers["webhook-id"] == first_id  # the same event, so the same id
    assert last.verify(secret)["type"] == endpoint.requests[0].verify(secret)["type"]
    types = [e["type"] for e in api.get(f"/v1/jobs/{job['id']}/events").json()["data"]]
    assert types.index("callback.failed") < types.index("callback.redeliver_requested") < types.index(
        "callback.delivered")


def test_redeliver_is_refused_for_a_job_without_callback_or_not_terminal(api: httpx.Client) -> None:
    plain = submit(api)
    response = api.post(f"/v1/jobs/{plain['id']}/callback/redeliver")
    assert response.status_code == 409
    assert response.json()["error"]["fields"][0]["loc"] in ("callback_url", "status")
    assert api.post("/v1/jobs/job_doesnotexist/callback/redeliver").status_code == 404


def test_410_gone_stops_at_once(api: httpx.Client, endpoint: Endpoint) -> None:
    endpoint.default = Reply(410)
    job = ended_job(api, endpoint.url())
    failed = callback_state(api, job["id"], "failed")
    assert failed["callback"] == {"status": "failed", "attempts": 1}
    # The delivery row left 'pending' in the same transaction that recorded the attempt,
    # so no worker can pick it up again.
    assert len(endpoint.requests) == 1
    [gave_up] = events_of(api, job["id"], "callback.failed")
    assert "410" in gave_up["detail"]["reason"]


def test_retry_after_on_503_is_honoured(api: httpx.Client, endpoint: Endpoint) -> None:
    endpoint.replies.append(Reply(503, headers={"Retry-After": "2"}))
    job = ended_job(api, endpoint.url())
    callback_state(api, job["id"], "delivered")
    first, second = endpoint.wait_for(2)
    # The schedule alone would retry after ~0.2 s; Retry-After asked for 2 s.
    assert second.at - first.at >= 1.9
    attempt = events_of(api, job["id"], "callback.attempt")[0]["detail"]
    assert attempt["retry_after"] == 2.0
    assert attempt["next_attempt_in"] >= 2.0


def test_retry_after_on_429_with_an_http_date_is_honoured(api: httpx.Client, endpoint: Endpoint) -> None:
    from email.utils import formatdate

    endpoint.replies.append(Reply(429, headers={"Retry-After": formatdate(time.time() + 3, usegmt=True)}))
    job = ended_job(api, endpoint.url())
    callback_state(api, job["id"], "delivered")
    first, second = endpoint.wait_for(2)
    assert second.at - first.at >= 1.5  # an HTTP-date has one-second resolution


def test_a_hanging_endpoint_does_not_delay_a_healthy_one_and_its_timeout_is_retried(
    api: httpx.Client, endpoint: Endpoint
) -> None:
    release = threading.Event()
    endpoint.replies.append(Reply(200, hold=release))
    try:
        slow = ended_job(api, endpoint.url("/slow"))
        endpoint.wait_for(1, predicate=lambda r: r.path == "/slow")
        fast = ended_job(api, endpoint.url("/fast"))
        endpoint.wait_for(1, predicate=lambda r: r.path == "/fast")
        # The healthy endpoint got its callback while the slow one's was still unanswered.
        hanging = endpoint.requests[0]
        assert not hanging.finished.is_set()
        assert api.get(f"/v1/jobs/{slow['id']}").json()["callback"]["attempts"] == 0
        assert callback_state(api, fast["id"], "delivered")["callback"]["attempts"] == 1

        # The slow attempt ends at the read timeout and is retried (the retry answers at once).
        delivered = callback_state(api, slow["id"], "delivered")
        assert delivered["callback"]["attempts"] == 2
        first = events_of(api, slow["id"], "callback.attempt")[0]["detail"]
        assert first["status_code"] is None
        assert "timeout" in first["error"]
        assert first["latency_ms"] >= CALLBACK_TIMEOUT * 1000 * 0.9
    finally:
        release.set()


def test_connection_refused_is_retried_then_failed(api: httpx.Client) -> None:
    from devtools.devstack import free_port

    closed = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    job = ended_job(api, closed)
    failed = callback_state(api, job["id"], "failed")
    assert failed["callback"]["attempts"] == len(SCHEDULE)
    attempts = events_of(api, job["id"], "callback.attempt")
    assert len(attempts) == len(SCHEDULE)
    for attempt in attempts:
        assert attempt["detail"]["status_code"] is None
        assert attempt["detail"]["error"].startswith("connection failed")


def test_a_redirect_is_not_followed(api: httpx.Client, endpoint: Endpoint) -> None:
    endpoint.replies.append(Reply(307, headers={"Location": endpoint.url("/elsewhere")}))
    job = ended_job(api, endpoint.url("/hook"))
    callback_state(api, job["id"], "delivered")
    paths = [r.path for r in endpoint.wait_for(2)]
    assert paths == ["/hook", "/hook"]  # retried at the same URL, never at the Location
    first = events_of(api, job["id"], "callback.attempt")[0]["detail"]
    assert first["status_code"] == 307
    assert "redirect" in first["error"]


def test_a_huge_answer_is_read_only_up_to_the_cap(api: httpx.Client, endpoint: Endpoint) -> None:
    endpoint.replies.append(Reply(500, body=b"x" * (5 * 1024 * 1024)))
    job = ended_job(api, endpoint.url())
    callback_state(api, job["id"], "delivered")
    first = events_of(api, job["id"], "callback.attempt")[0]["detail"]
    assert first["status_code"] == 500
    assert first["answer"] == "x" * 512  # only the first bytes are kept


def test_a_binary_answer_with_nul_bytes_is_still_recorded(api: httpx.Client, endpoint: Endpoint) -> None:
    endpoint.replies.append(Reply(500, body=b"\x00\xff\xfebinary\x00"))
    job = ended_job(api, endpoint.url())
    callback_state(api, job["id"], "delivered")
    first = events_of(api, job["id"], "callback.attempt")[0]["detail"]
    assert first["status_code"] == 500
    assert "binary" in first["answer"] and "\x00" not in first["answer"]


def test_many_deliveries_in_flight_at_once(api: httpx.Client, endpoint: Endpoint, secret: str) -> None:
    # Every answer is held until all have arrived: only concurrent delivery can finish.
    count = 6
    release = threading.Event()
    endpoint.default = Reply(200, hold=release)
    try:
        jobs = [ended_job(api, endpoint.url(f"/many/{i}")) for i in range(count)]
        endpoint.wait_for(count)
    finally:
        release.set()
    for job in jobs:
        callback_state(api, job["id"], "delivered")
    ids = {r.headers["webhook-id"] for r in endpoint.requests}
    assert len(ids) == count
    spread = max(r.at for r in endpoint.requests) - min(r.at for r in endpoint.requests)
    print(f"\n{count} held callbacks all in flight at once; arrivals spread over {spread * 1000:.0f} ms")
