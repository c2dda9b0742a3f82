"""The simulator's own webhook signer (devtools/simulator/signing.py) against the test
vector of docs/provider.md, and against the product's verifier."""

from __future__ import annotations

from devtools.simulator.signing import sign
from service.domain.signing import verify_wavespeed

SECRET = "whsec_test_secret_0123456789"
BODY = b'{"id":"task_01","status":"completed"}'
VECTOR = "v3,0d55016b88f55391fdd5e1d7a850309f3e799ae7e19f6511928f78058a63a8bc"


def test_the_documents_test_vector() -> None:
    assert sign(SECRET, "evt_01", "1758798328", BODY) == VECTOR


def test_another_body_or_secret_gives_another_signature() -> None:
    assert sign(SECRET, "evt_01", "1758798328", BODY + b" ") != VECTOR
    assert sign("whsec_other", "evt_01", "1758798328", BODY) != VECTOR


def test_the_product_accepts_what_the_simulator_signs() -> None:
    headers = {"webhook-id": "evt_02", "webhook-timestamp": "1758798328",
               "webhook-signature": sign(SECRET, "evt_02", "1758798328", BODY)}
    assert verify_wavespeed(SECRET, headers, BODY, now=1758798328, tolerance=300) == "evt_02"
