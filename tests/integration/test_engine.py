"""Pooled connections are pinged only after sitting idle: busy reuse costs no extra round
trips, and a connection that died while idle (a Postgres restart, here its backends
terminated) is replaced before anyone uses it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import asyncpg
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import engine as engine_module
from service.domain.errors import Unavailable


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


async def test_one_statement_commits_each_statement_without_begin_and_commit(own_db: str) -> None:
    """The claim path's connection: each statement is its own transaction (visible to
    others at once, no BEGIN/COMMIT round trips: no transaction is open between them)."""
    engine = engine_module.create_engine(own_db, pool_size=1)
    try:
        async with engine_module.one_statement(engine) as conn:
            await conn.execute(text("CREATE TABLE t (x int)"))
            await conn.execute(text("INSERT INTO t VALUES (1)"))
            xids = [(await conn.execute(text("SELECT txid_current()"))).scalar() for _ in range(2)]
            assert xids[0] != xids[1]  # in one transaction they would be equal
            with psycopg.connect(own_db, autocommit=True) as other:  # committed while conn is still open
                assert other.execute("SELECT count(*) FROM t").fetchone() == (1,)
    finally:
        await engine.dispose()


async def test_a_connection_back_from_one_statement_is_transactional_again(own_db: str) -> None:
    """The pool resets the isolation level on return: the next ``begin()`` on the same
    connection (pool of one) is one transaction again, rolled back as a whole."""
    engine = engine_module.create_engine(own_db, pool_size=1)
    try:
        async with engine_module.one_statement(engine) as conn:
            await conn.execute(text("CREATE TABLE t (x int)"))
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()
        with pytest.raises(RuntimeError):
            async with engine.begin() as conn:
                assert (await conn.execute(text("SELECT pg_backend_pid()"))).scalar() == pid
                await conn.execute(text("INSERT INTO t VALUES (1)"))
                await conn.execute(text("INSERT INTO t VALUES (2)"))
                raise RuntimeError("roll back")
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 0
    finally:
        await engine.dispose()


async def test_sessions_run_without_jit(own_db: str) -> None:
    """A plan whose estimate passes jit_above_cost would be compiled on every execution
    (2.5 s per submit claim over 100,000 provider slots): the service's sessions never JIT."""
    engine = engine_module.create_engine(own_db, pool_size=1)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SHOW jit"))).scalar() == "off"
    finally:
        await engine.dispose()


async def test_raw_statement_runs_in_autocommit_and_the_pool_gets_the_connection_back(own_db: str) -> None:
    """The hot reads' path (key lookup, job read): no transaction is open on the raw
    connection, and the same pooled connection then serves SQLAlchemy as before."""
    engine = engine_module.create_engine(own_db, pool_size=1)
    try:
        async with engine_module.raw_statement(engine) as raw:
            assert not raw.is_in_transaction()
            await raw.execute("CREATE TABLE t (x int)")
            await raw.execute("INSERT INTO t VALUES (1)")
            pid = await raw.fetchval("SELECT pg_backend_pid()")
            with psycopg.connect(own_db, autocommit=True) as other:  # committed while raw is still held
                assert other.execute("SELECT count(*) FROM t").fetchone() == (1,)
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT pg_backend_pid()"))).scalar() == pid
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def pool_of_one(url: str) -> AsyncIterator[tuple[AsyncEngine, int]]:
    """An engine whose pool holds one connection, and that connection's backend pid."""
    engine = engine_module.create_engine(url, pool_size=1)
    try:
        async with engine_module.raw_statement(engine) as raw:
            pid = await raw.fetchval("SELECT pg_backend_pid()")
        yield engine, pid
    finally:
        await engine.dispose()


async def test_a_failed_statement_on_raw_statement_keeps_the_connection(own_db: str) -> None:
    async with pool_of_one(own_db) as (engine, pid):
        with pytest.raises(asyncpg.UndefinedTableError):
            async with engine_module.raw_statement(engine) as raw:
                await raw.fetch("SELECT * FROM no_such_table")
        async with engine_module.raw_statement(engine) as raw:
            assert await raw.fetchval("SELECT pg_backend_pid()") == pid


async def test_a_connection_lost_between_uses_is_replaced_unseen_by_raw_statement(own_db: str) -> None:
    """Postgres ended the session moments after its last use (under the idle ping's 5 s):
    asyncpg already knows it is closed, and the caller gets a fresh connection instead
    of a 500 ("connection is closed")."""
    async with pool_of_one(own_db) as (engine, first):
        with psycopg.connect(own_db, autocommit=True) as sql:
            sql.execute("SELECT pg_terminate_backend(%s)", (first,))
        await asyncio.sleep(0.2)  # asyncpg reads the end of the socket
        async with engine_module.raw_statement(engine) as raw:
            assert await raw.fetchval("SELECT pg_backend_pid()") != first


async def test_a_session_lost_mid_statement_on_raw_statement_is_503_and_then_replaced(own_db: str) -> None:
    async with pool_of_one(own_db) as (engine, first):
        def terminate_soon() -> None:  # in a thread, while the statement runs
            time.sleep(0.3)
            with psycopg.connect(own_db, autocommit=True) as sql:
                sql.execute("SELECT pg_terminate_backend(%s)", (first,))

        killer = asyncio.create_task(asyncio.to_thread(terminate_soon))
        with pytest.raises(Unavailable) as caught:
            async with engine_module.raw_statement(engine) as raw:
                await raw.fetchval("SELECT pg_sleep(5)")
        await killer
        assert caught.value.retry_after == 1
        async with engine_module.raw_statement(engine) as raw:
            assert await raw.fetchval("SELECT pg_backend_pid()") != first


async def test_a_statement_cancelled_on_raw_statement_never_serves_the_next_caller(own_db: str) -> None:
    """A request whose client went away is cancelled mid-statement: that connection is
    dropped (asyncpg may still be cancelling on the server), the next caller gets a fresh
    one that works."""
    async with pool_of_one(own_db) as (engine, first):
        async def slow() -> None:
            async with engine_module.raw_statement(engine) as raw:
                await raw.fetchval("SELECT pg_sleep(5)")

        task = asyncio.create_task(slow())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with engine_module.raw_statement(engine) as raw:
            assert await raw.fetchval("SELECT pg_backend_pid()") != first
            assert await raw.fetchval("SELECT 1") == 1


async def test_a_burst_reuses_the_pools_sessions_and_starts_no_backend_per_request(own_db: str) -> None:
    """As many transactions at once as the pool holds, round after round: the same
    backends serve every round. (With an overflow beside the pool, SQLAlchemy closed the
    overflow sessions each round and Postgres started new backends for the next.)"""
    engine = engine_module.create_engine(own_db, pool_size=2)  # 4 sessions
    backends: set[int] = set()

    async def one() -> None:
        async with engine.begin() as conn:
            backends.add((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            await conn.execute(text("SELECT pg_sleep(0.01)"))

    try:
        for _ in range(10):
            await asyncio.gather(*(one() for _ in range(4)))
    finally:
        await engine.dispose()
    assert len(backends) == 4
