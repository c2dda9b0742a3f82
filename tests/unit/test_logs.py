"""service/observability/logs.py without I/O: secrets are masked in every string of a line (tracebacks
included), lines are JSON, a job's id and task id ride along on every line of the task
that bound them and no other, and the standard library's records look the same."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from service.observability import logs

API_KEY = "wsj_" + "Q" * 43
WEBHOOK_SECRET = "whsec_c2VjcmV0LXNpZ25pbmcta2V5LTAxMjM0NTY3"
PROVIDER_KEY = "sk-provider-0123456789abcdef"  # shaped like nothing: masked only once registered


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    saved = set(logs._registered)
    structlog.contextvars.clear_contextvars()
    yield
    logs._registered.clear()
    logs._registered.update(saved)
    structlog.contextvars.clear_contextvars()


def json_logger(buffer: io.StringIO) -> Any:
    """A logger with the service's own processors, writing JSON lines to ``buffer``."""
    return structlog.wrap_logger(
        structlog.PrintLogger(file=buffer),
        processors=[*logs._shared(), structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


@pytest.mark.parametrize(("text", "secret"), [
    (f"Authorization: Bearer {API_KEY}", API_KEY),
    (f"key {API_KEY} was revoked", API_KEY),
    (f"secret={WEBHOOK_SECRET}", WEBHOOK_SECRET),
    ("postgresql://wsj:s3cr3t-passw0rd@db:5432/wsj", "s3cr3t-passw0rd"),
    ("GET https://cdn.example/o.png?X-Amz-Signature=abcdef0123456789&x=1", "abcdef0123456789"),
    ("https://cdn.example/o.png?Key-Pair-Id=APKA123456&Signature=zzzz9999", "zzzz9999"),
    ("https://backend.example/hook?token=t0k3n-value", "t0k3n-value"),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
])
def test_values_shaped_like_secrets_are_masked(text: str, secret: str) -> None:
    masked = logs.redact_text(text)
    assert secret not in masked
    assert logs.MASK in masked


def test_ordinary_text_is_left_alone() -> None:
    text = "job job_01abc moved from submitted to processing; size 1024*1024; http://127.0.0.1:8000/v1/jobs"
    assert logs.redact_text(text) == text


def test_registered_values_are_masked_anywhere_in_a_line() -> None:
    logs.register_secret(PROVIDER_KEY, None, "short")  # None and too-short values are ignored
    buffer = io.StringIO()
    json_logger(buffer).warning("provider.said", detail={"echo": [f"your key {PROVIDER_KEY} is wrong"]},
                                headers=(f"Bearer {PROVIDER_KEY}",))
    raw = buffer.getvalue()
    assert PROVIDER_KEY not in raw
    assert lines(buffer)[0]["detail"]["echo"] == ["your key *** is wrong"]
    assert "short" not in logs._registered


def test_a_traceback_is_plain_text_without_locals_and_masked() -> None:
    buffer = io.StringIO()
    log = json_logger(buffer)

    def verify(secret: str) -> None:
        unshaped = "plain-" + "hunter2" * 3  # like nothing: only a locals dump would show it
        assert unshaped
        raise ValueError(f"signature check failed for {secret}")

    try:
        verify(WEBHOOK_SECRET)
    except ValueError:
        log.exception("webhook.crashed", error="ValueError")
    line = lines(buffer)[0]
    assert "Traceback (most recent call last)" in line["exception"]
    assert WEBHOOK_SECRET not in buffer.getvalue()  # the exception's own text is masked
    assert "hunter2" not in buffer.getvalue()  # and frames' variables are never printed


def test_every_line_is_one_json_object_with_level_and_time() -> None:
    buffer = io.StringIO()
    json_logger(buffer).info("job.completed", job_id="job_1", outputs=2)
    (line,) = lines(buffer)
    assert line["event"] == "job.completed" and line["level"] == "info" and line["timestamp"].endswith("Z")


def test_a_bound_job_rides_on_every_line_of_its_task_only() -> None:
    buffer = io.StringIO()
    log = json_logger(buffer)

    async def duty(job_id: str, task_id: str | None) -> None:
        logs.bind_job(job_id)
        log.info("duty.started")
        if task_id:
            logs.bind_job(job_id, task_id)  # the provider named the task
        await asyncio.sleep(0)
        log.info("duty.progress")

    async def main() -> None:
        await asyncio.gather(asyncio.create_task(duty("job_a", "task_a")), asyncio.create_task(duty("job_b", None)))
        log.info("outside")

    asyncio.run(main())
    seen = [(x["event"], x.get("job_id"), x.get("task_id")) for x in lines(buffer)]
    assert sorted(seen, key=str) == sorted([
        ("duty.started", "job_a", None), ("duty.progress", "job_a", "task_a"),
        ("duty.started", "job_b", None), ("duty.progress", "job_b", None),
        ("outside", None, None),
    ], key=str)


def test_standard_library_records_are_rendered_and_masked_the_same_way() -> None:
    stream = io.StringIO()
    handler = logs.stdlib_handler(structlog.processors.JSONRenderer(), stream)
    logger = logging.getLogger("uvicorn.error.test")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("Invalid HTTP request received from %s", f"Bearer {API_KEY}")
    finally:
        logger.removeHandler(handler)
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert line["level"] == "warning" and line["logger"] == "uvicorn.error.test"
    assert API_KEY not in stream.getvalue()


@pytest.mark.parametrize(("text", "masked"), [
    ("https://b.example/h?redirect=https://x.example/?token=t0k3n&a=1", "https://b.example/h?redirect=https://x.example/?token=***&a=1"),
    ("?api_KEY=k1&Sig=s2#frag", "?api_KEY=***&Sig=***#frag"),
    ("?token=a?key=b&x=c", "?token=***&x=c"),  # a name inside a masked value is part of it
    ("?keys&token= &monkey=x", "?keys&token= &monkey=***"),  # no value: nothing to mask
    ("?page=2&limit=50", "?page=2&limit=50"),
])
def test_query_values_named_like_secrets_are_masked(text: str, masked: str) -> None:
    assert logs.redact_text(text) == masked


@pytest.mark.parametrize("hostile", [
    "/v1/jobs/\x00&" + "key" * 10_000,  # a name that never ends in '='
    "?" + "&token" * 5_000,
    "?" + "a" * 30_000,
    "https://x/?k=" + "?key=" * 6_000,
])
def test_masking_a_long_hostile_line_takes_linear_time(hostile: str) -> None:
    # ~30 KB, the size of a request path a client may send: a backtracking pattern took
    # seconds on it (and held the event loop, so every request waited).
    started = time.perf_counter()
    logs.redact_text(hostile)
    assert time.perf_counter() - started < 0.1
