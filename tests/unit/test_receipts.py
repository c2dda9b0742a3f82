"""Receipts: signed with joserfc, verified against a JWK Set by the key their header
names; one changed character of the payload fails; a receipt signed before a rotation
verifies while the old public key stays published; unsigned or foreign receipts fail."""

from __future__ import annotations

import base64
import datetime as dt
import json
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from service.domain import receipt_keys, receipts
from service.domain.errors import ConfigError
from service.domain.receipts import ReceiptInvalid
from service.domain.records import OutputRecord
from tests.unit.records_factory import T0, job


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def completed_job_claims() -> dict[str, object]:
    done = job(status="completed", provider_task_id="task_9", cost_usd=Decimal("0.0300"),
               input={"prompt": "a fox", "seed": 77}, submitted_at=T0, completed_at=T0 + dt.timedelta(seconds=9))
    outputs = [OutputRecord("job_1", i, "https://x", f"outputs/job_1/{i}.png", "image/png", 10 + i, f"{i}" * 64,
                            None, T0, content_credentials=True) for i in (1, 0)]
    return receipts.payload(done, outputs)


def test_the_payload_names_owner_model_input_task_outputs_cost_and_times() -> None:
    claims = completed_job_claims()
    assert claims["owner"] == "acme" and claims["model"] == "wavespeed-ai/flux-dev-lora"
    assert claims["input"] == {"prompt": "a fox", "seed": 77}
    assert claims["provider_task_id"] == "task_9" and claims["cost_usd"] == "0.03"
    assert [o["index"] for o in claims["outputs"]] == [0, 1]  # type: ignore[attr-defined]
    assert claims["outputs"][0] == {"index": 0, "key": "outputs/job_1/0.png", "content_type": "image/png",  # type: ignore[index]
                                    "size_bytes": 10, "sha256": "0" * 64, "content_credentials": True}
    assert claims["completed_at"] == "2026-12-01T12:00:09Z"


def test_a_receipt_verifies_with_the_published_key_set() -> None:
    key = receipt_keys.generate()
    token = receipts.sign(completed_job_claims(), key)
    header = json.loads(_unb64(token.split(".")[0]))
    assert header["kid"] == key.kid and header["alg"] == "Ed25519"
    assert receipts.verify(token, receipt_keys.jwks([key.public_jwk()])) == completed_job_claims()


def test_one_changed_character_of_the_payload_fails() -> None:
    key = receipt_keys.generate()
    header, payload, signature = receipts.sign(completed_job_claims(), key).split(".")
    raw = _unb64(payload)
    tampered = raw.replace(b'"cost_usd":"0.03"', b'"cost_usd":"0.02"')
    assert len(tampered) == len(raw) and tampered != raw
    with pytest.raises(ReceiptInvalid, match="bad_signature"):
        receipts.verify(f"{header}.{_b64(tampered)}.{signature}", receipt_keys.jwks([key.public_jwk()]))


def test_after_a_rotation_old_and_new_receipts_verify_while_old_keys_stay_published() -> None:
    old, new = receipt_keys.generate(), receipt_keys.generate()
    before, after = receipts.sign({"n": 1}, old), receipts.sign({"n": 2}, new)
    published = receipt_keys.jwks([new.public_jwk(), old.public_jwk()])
    assert receipts.verify(before, published) == {"n": 1}
    assert receipts.verify(after, published) == {"n": 2}
    with pytest.raises(ReceiptInvalid, match="invalid_key_id"):
        receipts.verify(before, receipt_keys.jwks([new.public_jwk()]))


def test_a_p256_key_signs_es256() -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    key = receipt_keys.from_pem(pem)
    assert key.alg == "ES256"
    assert receipts.verify(receipts.sign({"a": 1}, key), receipt_keys.jwks([key.public_jwk()])) == {"a": 1}


def test_an_unsigned_receipt_is_refused() -> None:
    key = receipt_keys.generate()
    _, payload, _ = receipts.sign({"a": 1}, key).split(".")
    unsigned = _b64(json.dumps({"alg": "none", "kid": key.kid}).encode()) + f".{payload}."
    with pytest.raises(ReceiptInvalid, match="not allowed"):
        receipts.verify(unsigned, receipt_keys.jwks([key.public_jwk()]))


@pytest.mark.parametrize(("token", "jwk_set", "reason"), [
    ("not-a-jws", None, "does not verify"),
    ("a.b.c", None, "does not verify"),
    ("x" * (receipts.MAX_RECEIPT_BYTES + 1), None, "at most"),
    (None, {"keys": "none"}, "cannot be read"),
])
def test_malformed_receipts_and_key_sets_fail_with_a_reason(token: str | None, jwk_set: dict[str, object] | None,
                                                            reason: str) -> None:
    key = receipt_keys.generate()
    with pytest.raises(ReceiptInvalid, match=reason):
        receipts.verify(token or receipts.sign({"a": 1}, key), jwk_set or receipt_keys.jwks([key.public_jwk()]))


def test_a_stored_key_reads_back_with_its_kid() -> None:
    key = receipt_keys.generate()
    assert receipt_keys.from_pem(key.private_pem()).kid == key.kid


@pytest.mark.parametrize("pem", [
    b"garbage",
    ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
])
def test_a_key_of_another_kind_is_a_configuration_error(pem: bytes) -> None:
    with pytest.raises(ConfigError, match="RECEIPT_SIGNING_KEY"):
        receipt_keys.from_pem(pem)


SECRETS = ("X-Amz-Signature", "deadbeef", "t0k3n", "s3cr3t", "alice", "frag")


def test_a_receipts_input_urls_come_without_their_access() -> None:
    """A receipt is passed on as proof and cannot be redacted without breaking its
    signature: the input's URLs (image, mask_image, each LoRA's path) lose query,
    fragment, user and password; the rest of the input is as given."""
    given = {"prompt": "a fox?token=not-a-url", "seed": 7,
             "image": "https://bucket.s3.amazonaws.com/in/a.png?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA",
             "mask_image": "https://alice:s3cr3t@masks.example/m.png#frag",
             "loras": [{"path": "https://hub.example/l.safetensors?token=t0k3n", "scale": 0.7},
                       {"path": "acme/style", "scale": 1.0}]}
    done = job(status="completed", input=given, submitted_at=T0, completed_at=T0)
    shown = receipts.payload(done, [])["input"]
    assert shown == {"prompt": "a fox?token=not-a-url", "seed": 7,
                     "image": "https://bucket.s3.amazonaws.com/in/a.png",
                     "mask_image": "https://masks.example/m.png",
                     "loras": [{"path": "https://hub.example/l.safetensors", "scale": 0.7},
                               {"path": "acme/style", "scale": 1.0}]}
    token = receipts.sign(receipts.payload(done, []), receipt_keys.generate())
    assert not any(secret in _unb64(token.split(".")[1]).decode() for secret in SECRETS)
    assert done.input == given  # the job itself keeps its input
