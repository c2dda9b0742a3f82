"""Owners from before per-owner secrets still sign with one service-wide secret that each
of them can read: GET /v1/owner and `owners show` say so, `serve` warns at start while any
owner shares it, `callback-secret rotate --all-sharing` ends it for all of them with the
usual overlap; and the secret is read with an API key only, never with a history-page
session cookie alone."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from devtools.devstack import free_port
from devtools.serverthread import ServerThread
from service.db.keys import create_key_blocking
from tests.conftest import Service, fresh_database, make_settings, run_service
from tests.integration.test_history_page import sign_in
from tests.integration.test_owners import run
from tests.processes import ServiceProcess

SERVICE_WIDE = "whsec_" + "c2VydmljZS13aWRlLXNlY3JldC0wMTIzNDU2Nzg5YWI="


def legacy_owner(db: str) -> tuple[str, str]:
    """An owner as revision 0005 left one that existed before per-owner secrets (its row
    without a secret of its own), with an API key: (name, key)."""
    owner = f"old_{uuid.uuid4().hex[:8]}"
    key = create_key_blocking(db, owner)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO callback_secrets (owner, secret) VALUES (%s, NULL)", (owner,))
    return owner, key


@pytest.fixture
def own_db(postgres_server: str) -> Iterator[str]:
    with fresh_database(postgres_server) as url:
        yield url


@pytest.fixture
def svc(own_db: str, s3_endpoint: str, simulator: ServerThread) -> Iterator[Service]:
    with run_service(own_db, s3_endpoint, simulator.url, run_workers=False,
                     callback_signing_secret=SERVICE_WIDE) as service:
        yield service


# slow: runs the CLI (`owners show`, `callback-secret rotate`) as a process of its own
@pytest.mark.slow
def test_an_owner_that_shares_the_service_wide_secret_is_shown_as_such(svc: Service, own_db: str) -> None:
    old, old_key = legacy_owner(own_db)
    with svc.client(old_key) as client, svc.client() as newcomer:
        assert client.get("/v1/callback-secret").json()["secret"] == SERVICE_WIDE
        assert client.get("/v1/owner").json()["callback_secret"] == {"service_wide": True}
        assert newcomer.get("/v1/callback-secret").json()["secret"] != SERVICE_WIDE
        assert newcomer.get("/v1/owner").json()["callback_secret"] == {"service_wide": False}
    shown = json.loads(run(own_db, "owners", "show", old, "--json").stdout)
    assert shown["callback_secret"] == {"service_wide": True}


# slow: runs the CLI (`owners show`, `callback-secret rotate`) as a process of its own
@pytest.mark.slow
def test_rotate_all_sharing_ends_the_sharing_for_every_such_owner_with_the_usual_overlap(
    svc: Service, own_db: str
) -> None:
    olds = [legacy_owner(own_db) for _ in range(2)]
    with svc.client() as own:
        own_secret = own.get("/v1/callback-secret").json()["secret"]
        done = run(own_db, "callback-secret", "rotate", "--all-sharing")
        assert SERVICE_WIDE not in done.stdout and "whsec_" not in done.stdout  # never prints a secret
        rotated = {r["owner"]: r for r in json.loads(done.stdout)}
        assert set(rotated) == {name for name, _ in olds}
        assert own.get("/v1/callback-secret").json()["secret"] == own_secret  # an own secret is left alone
    for name, key in olds:
        with svc.client(key) as client:
            secret = client.get("/v1/callback-secret").json()
            assert client.get("/v1/owner").json()["callback_secret"] == {"service_wide": False}
        assert secret["secret"] != SERVICE_WIDE
        overlap = dt.datetime.fromisoformat(secret["previous_expires_at"]) - dt.datetime.now(dt.UTC)
        assert dt.timedelta(hours=23) < overlap <= dt.timedelta(hours=24)  # the service-wide one signs beside it
        assert rotated[name]["previous_expires_at"] == secret["previous_expires_at"]
    again = run(own_db, "callback-secret", "rotate", "--all-sharing")
    assert json.loads(again.stdout) == []


# slow: starts `serve` three times as a process of its own, reading its start log
@pytest.mark.slow
def test_serve_warns_at_start_while_an_owner_shares_the_service_wide_secret(
    own_db: str, s3_endpoint: str, simulator: ServerThread, tmp_path: Path
) -> None:
    def start_log(name: str) -> str:
        port = free_port()
        settings = make_settings(own_db, s3_endpoint, simulator.url, port, callback_signing_secret=SERVICE_WIDE)
        log = tmp_path / name
        with ServiceProcess(["serve", "--no-workers", "--host", "127.0.0.1", "--port", str(port)], settings, log,
                            port):
            pass
        return log.read_text()

    assert "callback_secret.shared" not in start_log("alone.log")
    old, _ = legacy_owner(own_db)
    warned = [json.loads(line) for line in start_log("sharing.log").splitlines()
              if line.startswith("{") and "callback_secret.shared" in line]
    assert [(w["level"], w["owners"], w["names"]) for w in warned] == [("warning", 1, [old])]
    assert "rotate --all-sharing" in warned[0]["fix"]
    run(own_db, "callback-secret", "rotate", "--all-sharing")
    assert "callback_secret.shared" not in start_log("after.log")


def test_the_callback_secret_needs_a_bearer_key_not_a_history_page_session(svc: Service) -> None:
    key = svc.new_key()
    with sign_in(svc, key) as web:
        assert web.get("/v1/owner").status_code == 200  # the session reads the API (GET) otherwise
        refused = web.get("/v1/callback-secret")
        assert refused.status_code == 401, refused.text
        assert "whsec_" not in refused.text
    answer: Any = httpx.get(f"{svc.url}/v1/callback-secret", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200 and answer.json()["secret"].startswith("whsec_")
