"""Webhook signatures, both directions.

* WaveSpeed signs the webhooks it sends us with its own non-standard scheme ("v3"):
  HMAC-SHA256 keyed with the UTF-8 bytes of the secret after ``whsec_`` (NOT base64
  decoded), over ``{id}.{timestamp}.{raw body}``, sent as lower-case hex.
* We sign the callbacks we send to backends per the Standard Webhooks spec ("v1"):
  the key is the base64-decoded part after ``whsec_`` and the signature is base64.

Both are pure functions of their inputs so they are unit-tested against test vectors.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping

from service.domain.errors import SignatureInvalid

WAVESPEED_TOLERANCE_SECONDS = 300
_WHSEC = "whsec_"
# A v3 entry is 67 characters; five of them with spaces fit well under 1 KiB. Anything
# bigger is refused before a single HMAC is computed: an unauthenticated request must
# not buy CPU with a long header (a 20 MB header of entries cost 1.5 s of event loop).
MAX_SIGNATURE_HEADER_BYTES = 1024
MAX_SIGNATURE_ENTRIES = 5
MAX_WEBHOOK_ID_BYTES = 256


def _strip_prefix(secret: str) -> str:
    return secret.removeprefix(_WHSEC)


def wavespeed_signature(secret: str, webhook_id: str, timestamp: str, body: bytes) -> str:
    """The ``webhook-signature`` header value WaveSpeed sends: ``v3,<hex>``."""
    key = _strip_prefix(secret).encode("utf-8")
    signed = webhook_id.encode("utf-8") + b"." + timestamp.encode("utf-8") + b"." + body
    return "v3," + hmac.new(key, signed, hashlib.sha256).hexdigest()


def verify_wavespeed(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: int = WAVESPEED_TOLERANCE_SECONDS,
) -> str:
    """Check a WaveSpeed webhook before anything parses it; return its ``webhook-id``.

    Raises SignatureInvalid (whose message never contains the secret or the expected
    signature) on a missing header, a stale or future timestamp, or no matching v3 entry.
    """
    webhook_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signature_header = headers.get("webhook-signature")
    if not webhook_id or not timestamp or not signature_header:
        raise SignatureInvalid("missing webhook-id, webhook-timestamp or webhook-signature header")
    if len(signature_header) > MAX_SIGNATURE_HEADER_BYTES:
        raise SignatureInvalid(f"webhook-signature is longer than {MAX_SIGNATURE_HEADER_BYTES} bytes")
    entries = signature_header.split()
    if len(entries) > MAX_SIGNATURE_ENTRIES:
        raise SignatureInvalid(f"webhook-signature has more than {MAX_SIGNATURE_ENTRIES} entries")
    if len(webhook_id) > MAX_WEBHOOK_ID_BYTES or len(timestamp) > 20:
        raise SignatureInvalid("webhook-id or webhook-timestamp is too long")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise SignatureInvalid("webhook-timestamp is not an integer") from None
    if abs(now - sent_at) > tolerance:
        raise SignatureInvalid(f"webhook-timestamp is more than {tolerance} seconds from our clock")
    expected = wavespeed_signature(secret, webhook_id, timestamp, body).encode("ascii")
    # The spec allows several space-separated "version,signature" entries; one match
    # is enough. Every entry is compared in constant time, and we do not stop early so
    # the time taken does not depend on which entry matched.
    matched = False
    for entry in entries:
        matched |= hmac.compare_digest(entry.encode("utf-8", "replace"), expected)
    if not matched:
        raise SignatureInvalid("no valid v3 signature")
    return webhook_id


def generate_standard_secret() -> str:
    """A fresh Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return _WHSEC + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def standard_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret; raises ValueError if it is not base64."""
    return base64.b64decode(_strip_prefix(secret), validate=True)


def standard_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks ``webhook-signature`` header value: ``v1,<base64>``."""
    signed = msg_id.encode("utf-8") + b"." + str(timestamp).encode("ascii") + b"." + body
    digest = hmac.new(standard_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")
