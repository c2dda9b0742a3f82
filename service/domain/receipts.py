"""Provenance receipts: a completed job's facts, signed as a compact JWS
(``application/jose``) that anyone holding the service's JWK Set can check offline.

The payload is what a platform bills its own customers on: who asked (owner), for what
(model, the full input with the seed the service chose, its URLs without their query,
user and password), what the provider ran (its task id), what was stored (each output's
S3 key, size and sha256, and whether it carries Content Credentials), what it cost, and
when. The same job always gives the same payload (JSON with sorted keys), so two
receipts of one job differ only in signature.

Signing and checking go through ``joserfc``; nothing here parses JWS by hand.
"""

from __future__ import annotations

import json
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from service.domain.errors import ServiceError
from service.domain.public_urls import public_input
from service.domain.receipt_keys import ALGORITHMS, ReceiptKey
from service.domain.records import JobRecord, OutputRecord
from service.domain.serialize import iso, usd

RECEIPT_VERSION = 1
MEDIA_TYPE = "application/jose"
MAX_RECEIPT_BYTES = 1024 * 1024  # a job's input is at most a few KB; this bounds what verify reads


class ReceiptInvalid(ServiceError):
    """The receipt does not verify."""


def payload(job: JobRecord, outputs: list[OutputRecord]) -> dict[str, Any]:
    """What a completed job's receipt says."""
    return {
        "receipt_version": RECEIPT_VERSION,
        "job_id": job.id,
        "owner": job.owner,
        "model": job.model,
        # A receipt is passed on as proof, and its signature forbids redacting it: the
        # input's URLs come without their access (query, user, password: public_urls.py).
        "input": public_input(job.input),
        "provider_task_id": job.provider_task_id,
        "outputs": [
            {"index": o.index, "key": o.key, "content_type": o.content_type, "size_bytes": o.size_bytes,
             "sha256": o.sha256, "content_credentials": o.content_credentials}
            for o in sorted(outputs, key=lambda o: o.index)
        ],
        "cost_usd": usd(job.cost_usd),
        "created_at": iso(job.created_at),
        "submitted_at": iso(job.submitted_at),
        "completed_at": iso(job.completed_at),
    }


def encode(claims: dict[str, Any]) -> bytes:
    return json.dumps(claims, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(claims: dict[str, Any], key: ReceiptKey) -> str:
    """The compact JWS of ``claims``, its header naming the key (``kid``)."""
    header = {"alg": key.alg, "kid": key.kid, "typ": "JOSE", "cty": "application/json"}
    return jws.serialize_compact(header, encode(claims), key.key, algorithms=[key.alg])


def verify(token: str, jwk_set: dict[str, Any]) -> dict[str, Any]:
    """The claims of ``token`` if its signature verifies with the key its ``kid`` names
    in ``jwk_set``; ReceiptInvalid saying why otherwise."""
    if len(token) > MAX_RECEIPT_BYTES:
        raise ReceiptInvalid(f"a receipt is at most {MAX_RECEIPT_BYTES} bytes")
    try:
        keys = KeySet.import_key_set(jwk_set)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise ReceiptInvalid(f"the JWK Set cannot be read: {exc}") from None
    try:
        token_obj = jws.deserialize_compact(token.strip(), keys, algorithms=list(ALGORITHMS))
    except JoseError as exc:
        raise ReceiptInvalid(f"the receipt does not verify: {exc.error}: {exc.description or ''}".rstrip(": ")) \
            from None
    except ValueError as exc:  # not base64url, not JSON
        raise ReceiptInvalid(f"the receipt cannot be read: {exc}") from None
    try:
        claims = json.loads(token_obj.payload)
    except ValueError:
        raise ReceiptInvalid("the receipt's payload is not JSON") from None
    if not isinstance(claims, dict):
        raise ReceiptInvalid("the receipt's payload is not a JSON object")
    return claims
