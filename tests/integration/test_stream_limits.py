"""Live streams per owner and for as long as their credential lives: one owner holds at
most STREAMS_MAX_PER_OWNER streams of a process (429 past it, others unaffected); a
stream ends within 5 s of its key being revoked or expiring, or of its history-page
session ending, and sends no job data after that."""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from devtools.serverthread import ServerThread
from tests.conftest import Service, run_service
from tests.integration.test_history_page import sign_in
from tests.integration.test_stream import _idle_job


@pytest.fixture(scope="module")
def capped(database_url: str, s3_endpoint: str, simulator: ServerThread) -> Iterator[Service]:
    with run_service(database_url, s3_endpoint, simulator.url, run_workers=False, streams_max_per_owner=3,
                     stream_keepalive_seconds=0.5) as svc:
        yield svc


def test_an_owner_capped_at_3_streams_gets_a_429_on_the_4th_while_another_owner_still_gets_one(
    capped: Service, sql: psycopg.Connection[Any]
) -> None:
    owner, other = f"cap_{uuid.uuid4().hex[:8]}", f"other_{uuid.uuid4().hex[:8]}"
    ids = [_idle_job(sql, owner) for _ in range(4)]
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(capped.client(capped.new_key(owner)))
        kept = []  # each line iterator is kept: dropping one closes its response (httpx)
        for job_id in ids[:3]:
            opened = stack.enter_context(client.stream("GET", f"/v1/jobs/{job_id}/stream"))
            kept.append(opened.iter_lines())
            assert opened.status_code == 200 and next(kept[-1]) == "event: job"
        refused = client.get(f"/v1/jobs/{ids[3]}/stream")
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "5"
        assert refused.json()["error"]["type"] == "too_many_streams"
        assert "STREAMS_MAX_PER_OWNER" in refused.json()["error"]["message"]
        # Another owner is not held back by the first one's streams.
        with capped.client(capped.new_key(other)) as stranger, stranger.stream(
                "GET", f"/v1/jobs/{_idle_job(sql, other)}/stream") as theirs:
            their_lines = theirs.iter_lines()
            assert theirs.status_code == 200 and next(their_lines) == "event: job"


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def lines_after(answer: httpx.Response, end_credential: Any, then: Any = None) -> tuple[list[str], float]:
    """Read the open stream's first event, end its credential, maybe change the job, and
    read to the end: the lines after the credential ended and how long the end took."""
    lines = answer.iter_lines()
    assert next(lines) == "event: job" and next(lines).startswith("data: ")
    end_credential()
    ended = time.monotonic()
    if then:
        then()
    after = []
    for line in lines:  # a keep-alive comment every 0.5 s: the loop never waits long
        after.append(line)
        assert time.monotonic() - ended < 10, after
    return after, time.monotonic() - ended


@pytest.mark.parametrize("how", ["revoked", "expired"])
@pytest.mark.parametrize("job_changes", [False, True])
def test_a_streams_key_that_ends_ends_the_stream_within_5_s_with_no_further_job_data(
    capped: Service, sql: psycopg.Connection[Any], how: str, job_changes: bool
) -> None:
    owner = f"rev_{uuid.uuid4().hex[:8]}"
    streaming, other = capped.new_key(owner), capped.new_key(owner)
    job_id = _idle_job(sql, owner)
    change = "revoked_at = now()" if how == "revoked" else "expires_at = now()"

    def end_key() -> None:
        sql.execute(f"UPDATE api_keys SET {change} WHERE key_hash = %s", (key_digest(streaming),))

    def cancel() -> None:  # with the owner's other key: the job changes, and the stream is woken
        with capped.client(other) as client:
            assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200

    with capped.client(streaming) as client, client.stream("GET", f"/v1/jobs/{job_id}/stream") as answer:
        after, took = lines_after(answer, end_key, cancel if job_changes else None)
    assert not [line for line in after if line.startswith(("data:", "event:"))], after
    assert took < 5.0, f"the stream ended {took:.1f} s after its key was {how}"
    assert any("no longer opens doors" in line for line in after), after


def test_a_history_page_stream_ends_within_5_s_of_its_session_ending(
    capped: Service, sql: psycopg.Connection[Any]
) -> None:
    owner = f"ses_{uuid.uuid4().hex[:8]}"
    key = capped.new_key(owner)
    job_id = _idle_job(sql, owner)
    with sign_in(capped, key) as web, web.stream("GET", f"/v1/jobs/{job_id}/stream") as answer:
        assert answer.status_code == 200
        token = web.cookies.get("wsj_session") or ""
        after, took = lines_after(answer, lambda: sql.execute(
            "UPDATE dashboard_sessions SET expires_at = now() WHERE token_hash = %s", (key_digest(token),)))
    assert not [line for line in after if line.startswith("data:")], after
    assert took < 5.0, f"the stream ended {took:.1f} s after its session did"
