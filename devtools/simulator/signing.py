"""The provider's webhook signature, written from docs/provider.md ("Webhooks"),
not imported from the product: a shared misreading would then sign and verify alike and
no test could see it. tests/unit/test_simulator_signing.py checks the document's vector."""

from __future__ import annotations

import hashlib
import hmac


def sign(secret: str, webhook_id: str, timestamp: str, body: bytes) -> str:
    """``v3,<hex>``: HMAC-SHA256 keyed with the secret minus ``whsec_`` (its UTF-8 bytes,
    not base64-decoded) over ``{webhook-id}.{webhook-timestamp}.{raw body}``."""
    key = secret.removeprefix("whsec_").encode("utf-8")
    content = f"{webhook_id}.{timestamp}.".encode() + body
    return "v3," + hmac.new(key, content, hashlib.sha256).hexdigest()
