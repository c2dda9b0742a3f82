"""W3C Trace Context at the service's edges, with nothing exported (the session service
sets no OTEL_* variable): a caller's ``traceparent`` makes the job's trace a child of
its own, a malformed one is ignored (a new trace, never a 4xx or 5xx), and the job's
trace id goes out on its upstream submit and on its callback's ``traceparent``.
"""

from __future__ import annotations

import re
import secrets

import httpx
import pytest

from devtools.serverthread import ServerThread
from service.observability.tracing import parse_traceparent
from tests.conftest import Service
from tests.integration.helpers import eventually, sim_tasks, wait_terminal
from tests.servers import WebhookCatcher

TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
BODY = {"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "a quiet harbour", "size": "256*256"}}


def caller() -> tuple[str, str]:
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


def test_a_callers_traceparent_makes_the_jobs_trace_its_child(client: httpx.Client) -> None:
    trace_id, header = caller()
    created = client.post("/v1/jobs", json=BODY, headers={"traceparent": header})
    assert created.status_code == 202, created.text
    assert created.json()["trace_id"] == trace_id
    assert client.get(f"/v1/jobs/{created.json()['id']}").json()["trace_id"] == trace_id


def test_a_facade_submit_with_a_traceparent_joins_the_callers_trace(client: httpx.Client) -> None:
    trace_id, header = caller()
    answer = client.post("/api/v3/wavespeed-ai/flux-dev-lora", json=BODY["input"], headers={"traceparent": header})
    assert answer.status_code == 200, answer.text
    job_id = answer.json()["data"]["id"]
    assert client.get(f"/v1/jobs/{job_id}").json()["trace_id"] == trace_id


def test_without_a_traceparent_each_job_starts_a_trace_of_its_own(client: httpx.Client) -> None:
    first, second = (client.post("/v1/jobs", json=BODY).json()["trace_id"] for _ in range(2))
    assert TRACE_ID.match(first) and TRACE_ID.match(second) and first != second


ZEROS = "0" * 32
MALFORMED = {
    "empty": "",
    "garbage": "not a traceparent",
    "all-zero trace id": f"00-{ZEROS}-{'1' * 16}-01",
    "all-zero span id": f"00-{'a' * 32}-{'0' * 16}-01",
    "version ff": f"ff-{'a' * 32}-{'b' * 16}-01",
    "upper-case hex": f"00-{'A' * 32}-{'b' * 16}-01",
    "version 00 with more fields": f"00-{'a' * 32}-{'b' * 16}-01-extra",
    "short trace id": f"00-{'a' * 31}-{'b' * 16}-01",
    "separators moved": f"00{'a' * 32}--{'b' * 16}-01",
    "non-ascii": f"00-{'a' * 31}é-{'b' * 16}-01",
    "very long": f"01-{'a' * 32}-{'b' * 16}-01-" + "x" * 30000,
}


@pytest.mark.parametrize("header", list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_traceparent_is_ignored_and_the_job_starts_its_own_trace(
    client: httpx.Client, header: str
) -> None:
    # As bytes: the non-ASCII case goes out as the UTF-8 a hostile client would send.
    created = client.post("/v1/jobs", json=BODY, headers={"traceparent": header.encode("utf-8")})
    assert created.status_code == 202, created.text
    trace_id = created.json()["trace_id"]
    assert TRACE_ID.match(trace_id) and trace_id not in header and trace_id != ZEROS


def test_the_upstream_submit_and_the_callback_carry_the_jobs_trace(service: Service, simulator: ServerThread) -> None:
    trace_id, header = caller()
    with WebhookCatcher() as catcher, service.client() as client:
        body = {**BODY, "callback_url": catcher.url("/hook")}
        job = client.post("/v1/jobs", json=body, headers={"traceparent": header}).json()
        done = wait_terminal(client, job["id"])
        [callback] = catcher.wait_for(1, timeout=30)
    assert done["status"] == "completed" and done["trace_id"] == trace_id

    sent = parse_traceparent(callback.headers["traceparent"])
    assert sent is not None and f"{sent.trace_id:032x}" == trace_id
    assert callback.json()["data"]["trace_id"] == trace_id  # the body's job says it too

    task = eventually(lambda: next((t for t in sim_tasks(simulator.url)
                                    if t["id"] == done["provider"]["task_id"]), None))
    upstream = parse_traceparent(task["traceparent"])
    assert upstream is not None and f"{upstream.trace_id:032x}" == trace_id
    # Spans of the job's own (not the caller's), each call its own; nothing is recorded
    # without an exporter, and the sampled flag says so.
    assert len({upstream.span_id, sent.span_id, int(header[36:52], 16)}) == 3
    assert not sent.trace_flags.sampled and not upstream.trace_flags.sampled
