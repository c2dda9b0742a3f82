"""Per-owner callback secrets, end to end: each owner's callbacks verify with its own
secret and with no other owner's; a rotation's overlap carries both signatures until the
previous secret expires; owners from before per-owner secrets keep the service-wide one;
secrets are encrypted at rest when SECRETS_ENCRYPTION_KEY is set. Every signature is
checked with the reference ``standardwebhooks`` library, as a backend would."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.fernet import Fernet
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from devtools.serverthread import ServerThread
from service.db.engine import migrate
from service.db.keys import hash_key
from tests.conftest import Service, _database_url, fresh_database, run_service
from tests.integration.helpers import submit, wait_terminal
from tests.servers import CaughtRequest, WebhookCatcher


def callback_of(client: httpx.Client, catcher: WebhookCatcher, path: str) -> CaughtRequest:
    """Cancel a fresh job whose callback goes to ``path``; the request that arrives."""
    job = submit(client, callback_url=catcher.url(path))
    client.post(f"/v1/jobs/{job['id']}/cancel")
    wait_terminal(client, job["id"])
    [request] = catcher.wait_for(1, timeout=20, predicate=lambda r: r.path == path)
    return request


def verifies(secret: str, request: CaughtRequest) -> bool:
    try:
        Webhook(secret).verify(request.body, request.headers)
    except WebhookVerificationError:
        return False
    return True


def secret_of(client: httpx.Client) -> dict[str, Any]:
    answer = client.get("/v1/callback-secret")
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    return answer.json()  # type: ignore[no-any-return]


def test_owner_a_callback_is_rejected_by_owner_b_secret(service: Service, catcher: WebhookCatcher) -> None:
    with service.client() as a, service.client() as b:
        secret_a, secret_b = secret_of(a)["secret"], secret_of(b)["secret"]
        assert secret_a != secret_b and secret_a.startswith("whsec_")
        # A points its callback at B's endpoint: B's backend must not accept it.
        request = callback_of(a, catcher, "/b-endpoint")
    assert verifies(secret_a, request)
    assert not verifies(secret_b, request)


def test_a_secret_is_stable_until_rotated(client: httpx.Client) -> None:
    first = secret_of(client)
    assert secret_of(client) == first == {"secret": first["secret"], "previous_expires_at": None}


def test_rotation_overlap_signs_with_both_then_only_the_new(client: httpx.Client, catcher: WebhookCatcher) -> None:
    old = secret_of(client)["secret"]
    rotated = client.post("/v1/callback-secret/rotate", json={"keep_previous_seconds": 3600})
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["secret"]
    assert new != old and rotated.json()["previous_expires_at"] is not None
    assert secret_of(client) == rotated.json()

    during = callback_of(client, catcher, "/during")
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert verifies(new, during) and verifies(old, during)

    # A rotation whose overlap has run out: only the newest secret signs.
    short = client.post("/v1/callback-secret/rotate", json={"keep_previous_seconds": 1}).json()
    time.sleep(1.5)
    assert secret_of(client) == {"secret": short["secret"], "previous_expires_at": None}
    after = callback_of(client, catcher, "/after")
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    assert verifies(short["secret"], after)
    assert not verifies(new, after) and not verifies(old, after)


def test_rotation_without_overlap_drops_the_previous_at_once(client: httpx.Client) -> None:
    secret_of(client)
    answer = client.post("/v1/callback-secret/rotate", json={"keep_previous_seconds": 0}).json()
    assert answer["previous_expires_at"] is None
    assert client.post("/v1/callback-secret/rotate").json()["previous_expires_at"] is not None  # default: a day


@pytest.mark.parametrize(("body", "status"), [
    ({"keep_previous_seconds": -1}, 422),
    ({"keep_previous_seconds": 604801}, 422),
    ({"keep_previous_seconds": "60"}, 422),
    ({"keep_previous_seconds": True}, 422),
    ({"keep_previous_seconds": 1e300}, 422),
    ({"keep_previous_secs": 60}, 422),
    ([1, 2], 422),
])
def test_hostile_rotation_bodies_are_refused_naming_the_field(client: httpx.Client, body: Any, status: int) -> None:
    before = secret_of(client)
    answer = client.post("/v1/callback-secret/rotate", json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["fields"]
    assert secret_of(client) == before  # nothing changed


def test_a_rotation_body_that_is_not_json_or_too_deep_is_a_400(client: httpx.Client) -> None:
    assert client.post("/v1/callback-secret/rotate", content=b"{nope").status_code == 400
    assert client.post("/v1/callback-secret/rotate", content=b"[" * 5000 + b"]" * 5000).status_code in (400, 413)


def test_the_secret_needs_an_api_key(service: Service) -> None:
    assert httpx.get(service.url + "/v1/callback-secret", timeout=10).status_code == 401
    assert httpx.post(service.url + "/v1/callback-secret/rotate", timeout=10).status_code == 401


# --------------------------------------------------------------------------- upgrade and storage


@pytest.fixture
def db_before_0005(postgres_server: str) -> Iterator[str]:
    """A database as the previous release left it: migrated up to the revision before 0005."""
    name = f"wsj_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _database_url(postgres_server, name)
    try:
        migrate(url, "0005-1")  # whatever revision 0005 follows
        yield url
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def key_of_the_previous_release(database_url: str, owner: str) -> str:
    """A key as the previous release stored it (api_keys as it was then: today's key
    code also writes the owners table and key columns of later revisions)."""
    key = "wsj_" + secrets.token_urlsafe(32)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO api_keys (owner, key_hash, prefix) VALUES (%s, %s, %s)",
                     (owner, hash_key(key), key[:10]))
    return key


def test_owners_from_before_the_upgrade_keep_the_service_wide_secret(
    db_before_0005: str, s3_endpoint: str, simulator: ServerThread, catcher: WebhookCatcher
) -> None:
    configured = "whsec_" + "c2VydmljZS13aWRlLXNlY3JldC0wMTIzNDU2Nzg5YWI="
    old_key = key_of_the_previous_release(db_before_0005, "old-owner")
    migrate(db_before_0005)  # the upgrade
    with run_service(db_before_0005, s3_endpoint, simulator.url, callback_signing_secret=configured) as svc, \
            svc.client(old_key) as old, svc.client() as new:
        assert secret_of(old)["secret"] == configured  # the backend keeps verifying after the upgrade
        assert verifies(configured, callback_of(old, catcher, "/old"))
        fresh = secret_of(new)["secret"]
        assert fresh != configured
        assert not verifies(configured, callback_of(new, catcher, "/new"))
        # The old owner moves to a secret of its own, keeping the shared one during the overlap.
        own = old.post("/v1/callback-secret/rotate", json={"keep_previous_seconds": 60}).json()["secret"]
        request = callback_of(old, catcher, "/old-rotated")
        assert verifies(own, request) and verifies(configured, request)


def test_secrets_are_encrypted_at_rest_with_the_configured_key(
    postgres_server: str, s3_endpoint: str, simulator: ServerThread
) -> None:
    key = Fernet.generate_key().decode()
    with fresh_database(postgres_server) as db, \
            run_service(db, s3_endpoint, simulator.url, secrets_encryption_key=key) as svc, svc.client() as c:
        secret = secret_of(c)["secret"]
        rotated = c.post("/v1/callback-secret/rotate", json={"keep_previous_seconds": 60}).json()["secret"]
        with psycopg.connect(db) as conn:
            rows = conn.execute("SELECT secret, previous_secret FROM callback_secrets").fetchall()
        stored = " ".join(v for row in rows for v in row if v)
        assert stored.count("fernet:") == 2
        assert secret not in stored and rotated not in stored
        assert secret.removeprefix("whsec_") not in stored


@pytest.mark.slow
def test_the_cli_prints_the_owners_own_secret(service: Service, database_url: str) -> None:
    key = service.new_key()
    with service.client(key) as c:
        expected = secret_of(c)["secret"]
    env = {"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "service", "callback-secret", "--owner", service.keys[key]],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected
