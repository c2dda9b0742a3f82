"""Webhook signatures: WaveSpeed's "v3" scheme (what the receiver verifies) against the
spec's test vector and every way a webhook can be wrong, and our Standard Webhooks
signer against the reference implementation (the ``standardwebhooks`` package)."""

from __future__ import annotations

import base64
import datetime as dt
import time
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from service.domain.errors import SignatureInvalid
from service.domain.signing import (
    WAVESPEED_TOLERANCE_SECONDS,
    generate_standard_secret,
    standard_key,
    standard_signature,
    verify_wavespeed,
    wavespeed_signature,
)

# The test vector of docs/provider.md, computed from the documented rule.
SECRET = "whsec_test_secret_0123456789"
WEBHOOK_ID = "evt_01"
TIMESTAMP = "1758798328"
BODY = b'{"id":"task_01","status":"completed"}'
SIGNATURE = "v3,0d55016b88f55391fdd5e1d7a850309f3e799ae7e19f6511928f78058a63a8bc"
NOW = float(TIMESTAMP)


def headers(**overrides: str | None) -> dict[str, str]:
    base: dict[str, str | None] = {
        "webhook-id": WEBHOOK_ID,
        "webhook-timestamp": TIMESTAMP,
        "webhook-signature": SIGNATURE,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def test_signature_matches_the_spec_test_vector() -> None:
    assert wavespeed_signature(SECRET, WEBHOOK_ID, TIMESTAMP, BODY) == SIGNATURE


def test_key_is_the_secret_text_after_whsec_not_base64_decoded() -> None:
    # With or without the prefix the key is the same UTF-8 text.
    assert wavespeed_signature("test_secret_0123456789", WEBHOOK_ID, TIMESTAMP, BODY) == SIGNATURE


def test_valid_webhook_is_accepted_and_its_id_returned() -> None:
    assert verify_wavespeed(SECRET, headers(), BODY, now=NOW) == WEBHOOK_ID


@pytest.mark.parametrize("skew", [-WAVESPEED_TOLERANCE_SECONDS, WAVESPEED_TOLERANCE_SECONDS])
def test_timestamp_exactly_at_the_tolerance_is_accepted(skew: int) -> None:
    assert verify_wavespeed(SECRET, headers(), BODY, now=NOW + skew) == WEBHOOK_ID


@pytest.mark.parametrize(
    "entries",
    [
        f"v1,bm90IGl0 {SIGNATURE}",
        f"{SIGNATURE} v3,{'0' * 64}",
        f"v3,{'f' * 64} v2,abc {SIGNATURE}",
    ],
    ids=["after-a-v1-entry", "before-a-wrong-v3", "last-of-three"],
)
def test_several_space_separated_entries_pass_when_one_v3_matches(entries: str) -> None:
    assert verify_wavespeed(SECRET, headers(**{"webhook-signature": entries}), BODY, now=NOW) == WEBHOOK_ID


HEX = SIGNATURE.split(",", 1)[1]

REJECTIONS: list[tuple[str, dict[str, Any]]] = [
    ("missing webhook-id", {"headers": headers(**{"webhook-id": None})}),
    ("missing webhook-timestamp", {"headers": headers(**{"webhook-timestamp": None})}),
    ("missing webhook-signature", {"headers": headers(**{"webhook-signature": None})}),
    ("empty webhook-signature", {"headers": headers(**{"webhook-signature": ""})}),
    ("wrong version", {"headers": headers(**{"webhook-signature": f"v1,{HEX}"})}),
    ("no version", {"headers": headers(**{"webhook-signature": HEX})}),
    ("upper-case hex is not the signature", {"headers": headers(**{"webhook-signature": f"v3,{HEX.upper()}"})}),
    ("tampered body", {"body": BODY.replace(b"completed", b"failed")}),
    ("body with an extra space", {"body": BODY + b" "}),
    ("wrong secret", {"secret": "whsec_test_secret_0123456788"}),
    ("other webhook-id", {"headers": headers(**{"webhook-id": "evt_02"})}),
    ("other timestamp inside the window", {"headers": headers(**{"webhook-timestamp": str(int(TIMESTAMP) + 1)}),
                                           "now": NOW + 1}),
    ("stale timestamp", {"now": NOW + WAVESPEED_TOLERANCE_SECONDS + 1}),
    ("future timestamp", {"now": NOW - WAVESPEED_TOLERANCE_SECONDS - 1}),
    ("non-integer timestamp", {"headers": headers(**{"webhook-timestamp": "1758798328.0"})}),
    ("several entries and none matches", {"headers": headers(**{"webhook-signature": f"v3,{'0' * 64} v1,{HEX}"})}),
]


@pytest.mark.parametrize(("why", "case"), REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_bad_webhooks_are_rejected(why: str, case: dict[str, Any]) -> None:
    with pytest.raises(SignatureInvalid) as caught:
        verify_wavespeed(
            case.get("secret", SECRET), case.get("headers", headers()), case.get("body", BODY), now=case.get("now", NOW)
        )
    # The error goes back to whoever sent the webhook: it must not help forge one.
    text = str(caught.value)
    assert "test_secret_0123456789" not in text
    assert HEX not in text
    assert caught.value.status_code == 401


def test_custom_tolerance_is_honoured() -> None:
    with pytest.raises(SignatureInvalid):
        verify_wavespeed(SECRET, headers(), BODY, now=NOW + 11, tolerance=10)
    assert verify_wavespeed(SECRET, headers(), BODY, now=NOW + 10, tolerance=10) == WEBHOOK_ID


# --------------------------------------------------------------------------- Standard Webhooks


def test_our_callback_signature_verifies_with_the_reference_library() -> None:
    secret = generate_standard_secret()
    body = b'{"type":"job.completed","data":{"id":"job_1"}}'
    timestamp = int(time.time())
    signed = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard_signature(secret, "msg_1", timestamp, body),
    }
    assert Webhook(secret).verify(body, signed) == {"type": "job.completed", "data": {"id": "job_1"}}


@pytest.mark.parametrize(
    "change",
    ["body", "id", "secret"],
)
def test_reference_library_rejects_our_signature_when_anything_differs(change: str) -> None:
    secret = generate_standard_secret()
    body = b'{"type":"job.failed"}'
    timestamp = int(time.time())
    signature = standard_signature(secret, "msg_2", timestamp, body)
    signed = {"webhook-id": "msg_2", "webhook-timestamp": str(timestamp), "webhook-signature": signature}
    if change == "body":
        body = b'{"type":"job.completed"}'
    elif change == "id":
        signed["webhook-id"] = "msg_3"
    else:
        secret = generate_standard_secret()
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, signed)


def test_standard_signature_matches_the_reference_signer_byte_for_byte() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = '{"test": 2432232314}'
    moment = dt.datetime.fromtimestamp(1614265330, dt.UTC)
    expected = Webhook(secret).sign("msg_p5jXN8AQM9LWM0D4loKWxJek", moment, body)
    assert standard_signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body.encode()) == expected
    # And the published Standard Webhooks example value.
    assert expected == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_generated_secret_is_whsec_and_32_random_bytes() -> None:
    first, second = generate_standard_secret(), generate_standard_secret()
    assert first.startswith("whsec_") and second.startswith("whsec_")
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32
    assert first != second


@pytest.mark.parametrize("bad", ["whsec_not base64!", "whsec_abc"])
def test_standard_key_refuses_a_secret_that_is_not_base64(bad: str) -> None:
    with pytest.raises(ValueError):
        standard_key(bad)
