"""Owners and their keys from the operator's side: the CLI (as a real process), the
owner's own view (GET /v1/owner), revocation and expiry."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from devtools.serverthread import ServerThread
from service.db.engine import create_engine
from service.db.page_sessions import open_session
from tests.conftest import Service, fresh_database, run_service
from tests.integration.test_cli import cli

# Left out of the fast loop (pytest -m "not slow", docs/development.md):
# every test drives the operator CLI as processes.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def owners_db(postgres_server: str) -> Iterator[str]:
    with fresh_database(postgres_server) as url:
        yield url


@pytest.fixture(scope="module")
def svc(owners_db: str, s3_endpoint: str, simulator: ServerThread) -> Iterator[Service]:
    with run_service(owners_db, s3_endpoint, simulator.url, run_workers=False) as service:
        yield service


def run(db: str, *args: str) -> Any:
    done = cli(*args, env={"DATABASE_URL": db})
    assert done.returncode == 0, done.stderr
    return done


def new_key(db: str, owner: str, *extra: str) -> tuple[str, str]:
    done = run(db, "keys", "create", "--owner", owner, *extra)
    public_id = done.stderr.split("API key ", 1)[1].split(" ", 1)[0]
    return done.stdout.strip(), public_id


def test_keys_carry_a_public_id_label_and_expiry_and_list_without_secrets(owners_db: str) -> None:
    owner = f"acme_{uuid.uuid4().hex[:6]}"
    key, public_id = new_key(owners_db, owner, "--label", "billing backend", "--expires-in-days", "30")
    assert public_id.startswith("key_")
    listed = json.loads(run(owners_db, "keys", "list", "--owner", owner, "--json").stdout)
    assert [k["id"] for k in listed] == [public_id]
    row = listed[0]
    assert set(row) == {"id", "owner", "label", "created_at", "last_used_at", "expires_at", "revoked_at"}
    assert (row["owner"], row["label"], row["revoked_at"], row["last_used_at"]) == (owner, "billing backend", None,
                                                                                    None)
    assert row["expires_at"] > row["created_at"]
    assert key not in run(owners_db, "keys", "list").stdout


def _session(db: str, key: str) -> str:
    """A history-page session opened with ``key`` (as signing in does)."""

    async def go() -> str:
        engine = create_engine(db, 1)
        try:
            session = await open_session(engine, key, dt.timedelta(hours=1))
            assert session is not None
            return session.token
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_a_revoked_key_is_refused_within_a_second_and_its_sessions_end(svc: Service, owners_db: str) -> None:
    owner = f"rev_{uuid.uuid4().hex[:6]}"
    key, public_id = new_key(owners_db, owner)
    cookie = {"wsj_session": _session(owners_db, key)}
    with httpx.Client(base_url=svc.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
        assert client.get("/v1/owner").status_code == 200
        assert httpx.get(svc.url + "/v1/jobs", cookies=cookie).status_code == 200
        run(owners_db, "keys", "revoke", public_id)
        revoked_at = time.monotonic()
        answer = client.get("/v1/owner")
        elapsed = time.monotonic() - revoked_at
    assert answer.status_code == 401 and elapsed < 1.0
    assert httpx.get(svc.url + "/v1/jobs", cookies=cookie).status_code == 401
    with psycopg.connect(owners_db) as conn:
        sessions = conn.execute("SELECT count(*) FROM dashboard_sessions s JOIN api_keys k ON k.id = s.api_key_id "
                                "WHERE k.public_id = %s", (public_id,)).fetchone()
    assert sessions == (0,)
    listed = json.loads(run(owners_db, "keys", "list", "--owner", owner, "--json").stdout)
    assert listed[0]["revoked_at"] is not None


def test_an_expired_key_is_refused_and_last_used_is_recorded(svc: Service, owners_db: str) -> None:
    owner = f"exp_{uuid.uuid4().hex[:6]}"
    key, public_id = new_key(owners_db, owner, "--expires-in-days", "1")
    with httpx.Client(base_url=svc.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
        assert client.get("/v1/owner").status_code == 200
        with psycopg.connect(owners_db, autocommit=True) as conn:
            used = conn.execute("SELECT last_used_at FROM api_keys WHERE public_id = %s", (public_id,)).fetchone()
            conn.execute("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE public_id = %s",
                         (public_id,))
        assert client.get("/v1/owner").status_code == 401
    assert used is not None and used[0] is not None


def test_owners_set_show_list_and_the_owner_view_agree(svc: Service, owners_db: str) -> None:
    owner = f"set_{uuid.uuid4().hex[:6]}"
    shown = json.loads(run(owners_db, "owners", "set", owner, "--monthly-budget-usd", "100", "--max-in-flight", "20",
                           "--weight", "3", "--paused", "--retention-days", "30").stdout)
    key, _ = new_key(owners_db, owner)
    with httpx.Client(base_url=svc.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
        view = client.get("/v1/owner").json()
    assert view == shown
    assert view["owner"] == owner and view["paused"] is True and view["retention_days"] == 30
    assert view["limits"] == {"max_in_flight": 20, "weight": 3}
    budget = view["budget"]
    assert (budget["monthly_usd"], budget["spent_usd"], budget["reserved_usd"], budget["remaining_usd"]) == (
        "100.00", "0.00", "0.00", "100.00")
    assert budget["period_start"].endswith("-01T00:00:00Z") and budget["period_end"] > budget["period_start"]
    cleared = json.loads(run(owners_db, "owners", "set", owner, "--monthly-budget-usd", "none", "--max-in-flight",
                             "none", "--resumed").stdout)
    assert cleared["budget"]["monthly_usd"] is None and cleared["budget"]["remaining_usd"] is None
    assert cleared["limits"] == {"max_in_flight": None, "weight": 3} and cleared["paused"] is False
    assert json.loads(run(owners_db, "owners", "show", owner, "--json").stdout) == cleared
    assert owner in [o["owner"] for o in json.loads(run(owners_db, "owners", "list", "--json").stdout)]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["owners", "set", "x", "--monthly-budget-usd", "-1"], "--monthly-budget-usd"),
        (["owners", "set", "x", "--monthly-budget-usd", "1e400"], "--monthly-budget-usd"),
        (["owners", "set", "x", "--monthly-budget-usd", "0.00001"], "--monthly-budget-usd"),
        (["owners", "set", "x", "--monthly-budget-usd", "NaN"], "--monthly-budget-usd"),
        (["owners", "set", "x", "--max-in-flight", "0"], "--max-in-flight"),
        (["owners", "set", "x", "--weight", "1001"], "--weight"),
        (["owners", "set", "x", "--weight", "two"], "--weight"),
        (["owners", "set", "x", "--retention-days", "0"], "--retention-days"),
        (["owners", "set", "y" * 201], "--owner"),
        (["keys", "create", "--owner", "x", "--expires-in-days", "0"], "--expires-in-days"),
        (["keys", "create", "--owner", "x", "--label", "l" * 201], "--label"),
        (["keys", "revoke", "key_nope"], "no API key"),
        (["owners", "show", "nobody-by-this-name"], "no owner"),
    ],
)
def test_bad_operator_input_is_refused_by_name_and_changes_nothing(owners_db: str, args: list[str], words: str) -> None:
    with psycopg.connect(owners_db) as conn:
        before = conn.execute("SELECT count(*) FROM owners").fetchone()
    done = cli(*args, env={"DATABASE_URL": owners_db})
    assert done.returncode != 0 and words in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    with psycopg.connect(owners_db) as conn:
        assert conn.execute("SELECT count(*) FROM owners").fetchone() == before
