"""Per-owner callback secrets: sealed at rest with SECRETS_ENCRYPTION_KEY, and both
signatures of a rotation's overlap verify with the Standard Webhooks reference library."""

from __future__ import annotations

import json
import time

import pytest
from cryptography.fernet import Fernet
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from service.clients.callbacks import signed_headers
from service.domain.errors import ConfigError
from service.domain.sealing import SEALED_PREFIX, Sealer
from service.domain.signing import generate_standard_secret


def test_a_sealed_secret_opens_only_with_its_key() -> None:
    key = Fernet.generate_key().decode()
    secret = generate_standard_secret()
    sealed = Sealer(key).seal(secret)
    assert sealed.startswith(SEALED_PREFIX) and secret not in sealed
    assert Sealer(key).open(sealed) == secret
    with pytest.raises(ConfigError, match="wrong key"):
        Sealer(Fernet.generate_key().decode()).open(sealed)
    with pytest.raises(ConfigError, match="not set"):
        Sealer(None).open(sealed)


def test_without_a_key_secrets_are_stored_as_they_are_and_still_read_after_one_is_set() -> None:
    secret = generate_standard_secret()
    assert Sealer(None).seal(secret) == secret
    assert Sealer(Fernet.generate_key().decode()).open(secret) == secret


def test_a_malformed_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="SECRETS_ENCRYPTION_KEY"):
        Sealer("not-a-fernet-key")


def test_both_secrets_of_an_overlap_verify_and_a_third_does_not() -> None:
    new, previous, other = (generate_standard_secret() for _ in range(3))
    body = json.dumps({"type": "job.completed", "data": {"id": "job_1"}}).encode()
    headers = signed_headers([new, previous], "msg_1", int(time.time()), body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(new).verify(body, headers)["data"]["id"] == "job_1"
    assert Webhook(previous).verify(body, headers)["data"]["id"] == "job_1"
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)
