"""Callback signing and the retry decision, without I/O.

Signatures are checked two independent ways: against the Standard Webhooks spec's
published test vector, and by the reference library's ``Webhook.verify`` (what a
backend runs), so a drift in either our signing or our headers fails here.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import json
import random
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.clients.callbacks import Attempt, parse_retry_after, signed_headers
from service.domain.signing import generate_standard_secret, standard_signature
from service.work.deliverer import JITTER, RETRY_AFTER_CAP, next_delay, outcome_of

# The Standard Webhooks specification's test vector.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

SCHEDULE = [0.0, 5.0, 300.0, 1800.0]


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    assert standard_signature(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_reference_library_signs_the_vector_the_same_way() -> None:
    # Guards the test above: the reference implementation agrees on the same inputs.
    when = dt.datetime.fromtimestamp(VECTOR_TIMESTAMP, tz=dt.UTC)
    assert Webhook(VECTOR_SECRET).sign(VECTOR_ID, when, VECTOR_BODY.decode()) == VECTOR_SIGNATURE


def test_signed_headers_verify_with_the_reference_library() -> None:
    secret = generate_standard_secret()
    body = json.dumps({"type": "job.completed", "data": {"id": "job_1", "prompt": "café ☕"}},
                      ensure_ascii=False).encode()
    headers = signed_headers(secret, "msg_abc", int(time.time()), body)
    assert Webhook(secret).verify(body, headers)["data"]["prompt"] == "café ☕"
    assert headers["webhook-id"] == "msg_abc"
    assert headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "tamper",
    ["body", "id", "timestamp", "secret"],
)
def test_reference_library_rejects_anything_changed(tamper: str) -> None:
    secret = generate_standard_secret()
    body = b'{"type":"job.failed"}'
    headers = signed_headers(secret, "msg_abc", int(time.time()), body)
    if tamper == "body":
        body = b'{"type":"job.completed"}'
    elif tamper == "id":
        headers["webhook-id"] = "msg_other"
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = str(int(headers["webhook-timestamp"]) - 1)
    else:
        secret = generate_standard_secret()
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)


def test_generated_secret_is_whsec_and_32_random_bytes() -> None:
    secret = generate_standard_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[len("whsec_"):])) == 32
    assert secret != generate_standard_secret()


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("120", 120.0), (" 7 ", 7.0), ("soon", None), ("-5", None)],
)
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=1_000_000.0) == expected


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 90, usegmt=True)
    assert parse_retry_after(header, now=now) == pytest.approx(90.0)
    past = email.utils.formatdate(now - 90, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0


@pytest.mark.parametrize("attempts_done", range(1, len(SCHEDULE)))
def test_next_delay_follows_the_schedule_within_the_jitter(attempts_done: int) -> None:
    rng = random.Random(attempts_done)
    for _ in range(200):
        delay = next_delay(attempts_done, SCHEDULE, rng=rng)
        assert delay is not None
        base = SCHEDULE[attempts_done]
        assert base * (1 - JITTER) <= delay <= base * (1 + JITTER)


def test_next_delay_is_jittered_not_constant() -> None:
    rng = random.Random(1)
    delays = {next_delay(2, SCHEDULE, rng=rng) for _ in range(20)}
    assert len(delays) > 1


def test_schedule_used_up_means_no_next_attempt() -> None:
    assert next_delay(len(SCHEDULE), SCHEDULE) is None
    assert next_delay(len(SCHEDULE) + 3, SCHEDULE) is None


def test_retry_after_only_pushes_later_and_is_capped() -> None:
    rng = random.Random(3)
    assert next_delay(1, SCHEDULE, retry_after=60.0, rng=rng) == 60.0
    assert next_delay(2, SCHEDULE, retry_after=1.0, rng=rng) >= 300.0 * (1 - JITTER)  # type: ignore[operator]
    assert next_delay(1, SCHEDULE, retry_after=10 * RETRY_AFTER_CAP, rng=rng) == RETRY_AFTER_CAP


def _attempt(status: int | None, retry_after: float | None = None) -> Attempt:
    return Attempt(status_code=status, latency_ms=5, error=None if status and status < 300 else "x", answer="",
                   retry_after=retry_after)


@pytest.mark.parametrize(
    ("status", "attempts_done", "expected_status"),
    [
        (200, 1, "delivered"),
        (204, 4, "delivered"),
        (299, 2, "delivered"),
        (410, 1, "failed"),  # Gone: stop at once, whatever is left of the schedule
        (500, 1, "pending"),
        (302, 1, "pending"),  # redirects are not followed, so not a success
        (404, 1, "pending"),
        (None, 1, "pending"),  # timeout or connection refused
        (500, len(SCHEDULE), "failed"),  # the last attempt
        (None, len(SCHEDULE), "failed"),
    ],
)
def test_outcome_of_an_attempt(status: int | None, attempts_done: int, expected_status: str) -> None:
    outcome, delay, reason = outcome_of(_attempt(status), attempts_done, SCHEDULE, random.Random(0))
    assert outcome == expected_status
    assert (delay is not None) == (outcome == "pending")
    assert (reason is not None) == (outcome == "failed")


@pytest.mark.parametrize(("status", "honoured"), [(429, True), (503, True), (500, False), (404, False)])
def test_retry_after_is_honoured_only_on_429_and_503(status: int, honoured: bool) -> None:
    _, delay, _ = outcome_of(_attempt(status, retry_after=1000.0), 1, SCHEDULE, random.Random(0))
    assert delay is not None
    assert (delay == 1000.0) == honoured
