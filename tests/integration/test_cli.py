"""The `wavespeed-jobs` command line, run as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest

from service.db.keys import hash_key
from tests.conftest import fresh_database

# Left out of the fast loop (pytest -m "not slow", docs/development.md):
# the CLI as processes.
pytestmark = pytest.mark.slow


@pytest.fixture
def empty_db(postgres_server: str) -> Iterator[str]:
    with fresh_database(postgres_server) as url:
        yield url


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "S3_BUCKET", "WAVESPEED_API_KEY",
                                                               "PUBLIC_BASE_URL", "CALLBACK_SIGNING_SECRET")}
    return subprocess.run([sys.executable, "-m", "service", *args], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=60)


def test_keys_create_prints_a_key_once_and_stores_only_its_hash(empty_db: str) -> None:
    done = cli("keys", "create", "--owner", "acme", env={"DATABASE_URL": empty_db})
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert key.startswith("wsj_") and len(key) > 30
    with psycopg.connect(empty_db) as conn:
        rows = conn.execute("SELECT owner, key_hash FROM api_keys").fetchall()
    assert rows == [("acme", hash_key(key))]


def test_callback_secret_is_generated_once_and_then_stable(empty_db: str) -> None:
    first = cli("callback-secret", env={"DATABASE_URL": empty_db})
    second = cli("callback-secret", env={"DATABASE_URL": empty_db})
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.startswith("whsec_")


def test_migrate_is_idempotent(empty_db: str) -> None:
    done = cli("migrate", env={"DATABASE_URL": empty_db})
    assert done.returncode == 0, done.stderr


def test_serve_without_configuration_names_every_missing_variable() -> None:
    done = cli("serve", "--port", "0")
    assert done.returncode != 0
    for name in ("DATABASE_URL", "S3_BUCKET", "WAVESPEED_API_KEY", "PUBLIC_BASE_URL"):
        assert name in done.stderr


def test_commands_without_a_database_say_so() -> None:
    done = cli("keys", "create", "--owner", "x")
    assert done.returncode != 0 and "DATABASE_URL is not set" in done.stderr
