"""Pooled connections are pinged only after sitting idle: busy reuse costs no extra round
trips, and a connection that died while idle (a Postgres restart, here its backends
terminated) is replaced before anyone uses it."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

from service.db import engine as engine_module
from tests.conftest import fresh_database


@pytest.fixture
def own_db(postgres_server: str) -> Iterator[str]:
    with fresh_database(postgres_server) as url:
        yield url


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = AsyncAdapt_asyncpg_connection.ping

    def counting(self: AsyncAdapt_asyncpg_connection) -> None:
        calls.append(1)
        real(self)

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "ping", counting)
    return calls


async def test_busy_reuse_is_not_pinged(own_db: str, pings: list[int]) -> None:
    engine = engine_module.create_engine(own_db, pool_size=2)
    try:
        for _ in range(20):
            async with engine.begin() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()
    assert pings == []


async def test_a_connection_that_died_while_idle_is_replaced_unseen(
    own_db: str, pings: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_module.create_engine(own_db, pool_size=2)
    try:
        async with engine.begin() as conn:
            first = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()
        monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_SECONDS", 0.0)  # "idle long enough"
        with psycopg.connect(own_db, autocommit=True) as sql:
            sql.execute("SELECT pg_terminate_backend(%s)", (first,))
        async with engine.begin() as conn:  # no error reaches the caller
            second = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()
    finally:
        await engine.dispose()
    assert second != first
    assert pings  # the dead one was found by its ping
