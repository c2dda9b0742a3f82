"""A throwaway database on the machine's Postgres, migrated, dropped afterwards."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from service.db.engine import migrate

POSTGRES = os.environ.get("BENCH_POSTGRES_URL", os.environ.get(
    "TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))


def _url_for(server_url: str, name: str) -> str:
    base, _, query = server_url.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name + ("?" + query if query else "")


@contextlib.contextmanager
def fresh_database(prefix: str = "wsj_bench", migrate_with: Callable[[str], None] = migrate) -> Iterator[str]:
    """``migrate_with``: how to bring it to the schema (another revision's own migrate, for
    bench_receiver --compare-rev)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _url_for(POSTGRES, name)
    try:
        migrate_with(url)
        yield url
    finally:
        with psycopg.connect(POSTGRES, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, connect_timeout=10)
