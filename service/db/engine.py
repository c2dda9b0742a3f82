"""The engine, plus running migrations. Opened in the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import asyncpg
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from service.db import queries
from service.domain.errors import Unavailable

if TYPE_CHECKING:
    from alembic.config import Config



def async_url(url: str) -> str:
    """Accept ``postgresql://`` (what people paste) and use the asyncpg driver."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def asyncpg_dsn(url: str) -> str:
    """The plain DSN asyncpg itself takes (for the LISTEN connection)."""
    return "postgresql://" + async_url(url)[len("postgresql+asyncpg://") :]


# A connection back from the pool after this long idle is checked before use.
PING_AFTER_IDLE_SECONDS = 5.0

# Every session of the service runs without JIT. Its statements are short and each does
# little work, but Postgres JIT-compiles any plan whose *estimated* cost passes
# jit_above_cost, and a plan's estimate can pass it while the work stays small: the
# submit claim's owner cap check (revision 0009), planned generically over 100,000
# provider slots, was estimated at 800,000 and compiled for 2.5 s on every claim
# (bench_pipeline with the service's limits set high: 47 of 200 jobs sent in 180 s).
SESSION_SETTINGS = {"jit": "off"}


# Errors that say the database could not be reached or took no more clients (a restart,
# ``too many clients already``, the pool's wait running out), not that a statement was
# wrong: a request that meets one is answered 503 with Retry-After, never a 500.
UNREACHABLE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, OSError)  # OSError: refused, reset


def unavailable(exc: BaseException) -> Unavailable | None:
    """The 503 to answer for ``exc`` when it means the database is out of reach."""
    if isinstance(exc, UNREACHABLE) or (isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated):
        return _unreachable()
    return None


def asyncpg_options(transaction_pooling: bool) -> dict[str, Any]:
    """What every pooled asyncpg connection of the service opens with.

    Through a transaction pooler (PgBouncer's ``pool_mode = transaction``) a client meets
    a different server session from one transaction to the next, and between the
    statements of an autocommit request: a named prepared statement made on one session
    is missing on the next ("prepared statement ... does not exist") or collides with one
    of the same name another client made there ("... already exists"). With its statement
    cache off, asyncpg prepares unnamed statements and parses each again in the same
    message batch as its execution, so nothing outlives the statement. Unique statement
    names (SQLAlchemy's ``prepared_statement_name_func`` recipe) are not enough: an
    autocommit statement prepared in one round trip and run in the next still lands on
    another session (tests/integration/test_pgbouncer.py). PgBouncer also refuses
    startup parameters it does not know, ``jit`` among them (docs/deploy.md: set it on
    the database instead). ``client_encoding`` is asked for in Postgres's own spelling:
    asyncpg's ``'utf-8'`` differs from the ``UTF8`` a server session reports, and
    PgBouncer then sent ``SET client_encoding`` before each transaction it lent a
    session for, doubling the statements (bench_capacity --through-pgbouncer)."""
    if transaction_pooling:
        return {"statement_cache_size": 0, "server_settings": {"client_encoding": "UTF8"}}
    return {"server_settings": SESSION_SETTINGS}


async def jit_on(engine: AsyncEngine) -> bool:
    """Whether sessions of ``engine`` start with JIT on (the database's or role's default
    when the session cannot set it itself: behind a transaction pooler)."""
    async with raw_statement(engine) as conn:
        return bool(await conn.fetchval(queries.JIT_SETTING) == "on")


def create_engine(url: str, pool_size: int = 10, *, transaction_pooling: bool = False) -> AsyncEngine:
    """``transaction_pooling``: ``url`` is a transaction pooler (DATABASE_POOL_MODE)."""
    connect_args = asyncpg_options(transaction_pooling)
    if transaction_pooling:
        # SQLAlchemy's own cache of prepared statements would keep each statement's
        # result types from its first run and skip describing it again; a migration run
        # meanwhile (a rolling upgrade) could then be read with the old types unnoticed.
        connect_args["prepared_statement_cache_size"] = 0
    engine = create_async_engine(
        async_url(url),
        # Up to twice DB_POOL_SIZE sessions, opened as needed and kept (recycled after 30
        # min). Not pool_size plus max_overflow: SQLAlchemy closes an overflow session
        # whenever it comes back to a full pool, so a busy process opened a Postgres
        # backend (a fork, cold catalog caches, PL/pgSQL compiled again) for a third of
        # its jobs: 40 % of Postgres's CPU per job (bench_capacity, docs/deploy.md).
        pool_size=2 * pool_size,
        max_overflow=0,
        pool_recycle=1800,
        connect_args=connect_args,
    )
    _ping_when_idle(engine)
    _discard_lost_sessions(engine)
    return engine


@contextlib.asynccontextmanager
async def one_statement(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection on which each statement commits by itself (autocommit), for work
    that is one statement: a claim, a lease renewal, a key lookup. A statement alone is
    atomic anyway; this only spares the BEGIN and COMMIT round trips (one round trip
    instead of three). Never for several statements that must commit together."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


@contextlib.asynccontextmanager
async def raw_statement(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection's asyncpg connection itself, in autocommit (no transaction is
    open on it), for the one-statement reads every API request makes: the key lookup and
    the job read. SQLAlchemy's execution path costs more than the round trip it wraps:
    +0.22 ms a statement back to back, +0.31 ms at 50 requests a second, when the machine
    idles between them (``python -m tests.benchmarks.bench_db_path``, 2026-12-07, 76ddae6;
    docs/benchmarks.md). Statements here are ``(asyncpg)`` ones of queries.sql.

    The pool, its idle ping and its checks stay SQLAlchemy's; what SQLAlchemy's error
    handling does on its own path is done here. A session found lost (Postgres restarted,
    the backend ended) invalidates the whole pool, as a disconnect does there: a
    connection found closed at checkout is replaced once before the caller sees it, and
    one lost mid-statement is a 503. A statement cut short (the request cancelled: asyncpg
    may still be cancelling it on the server) takes its connection out of the pool. Any
    other error (a statement's, the caller's own) leaves the session sound."""
    async with contextlib.AsyncExitStack() as stack:
        for attempt in (1, 2):
            conn = await stack.enter_async_context(engine.connect())
            fairy = await conn.get_raw_connection()
            raw: asyncpg.Connection = fairy.driver_connection
            if not raw.is_closed():
                break
            _lost(engine, fairy, None)
            if attempt == 2:
                raise _unreachable()
        try:
            yield raw
        except (*LOST_SESSION, OSError) as exc:  # OSError: TimeoutError too
            _lost(engine, fairy, exc)
            raise _unreachable() from exc
        except asyncpg.InterfaceError as exc:
            if raw.is_closed():  # "connection is closed": lost between checkout and use
                _lost(engine, fairy, exc)
                raise _unreachable() from exc
            await conn.invalidate(exc)
            raise
        except asyncio.CancelledError:
            await conn.invalidate()
            raise


def _lost(engine: AsyncEngine, fairy: Any, exc: BaseException | None) -> None:
    """Invalidate every connection of ``engine``'s pool opened before now (and this one):
    what SQLAlchemy does when its own path meets a disconnect. ``Pool._invalidate`` is
    the method it calls for that; there is no public one."""
    engine.sync_engine.pool._invalidate(fairy, exc)


def _unreachable() -> Unavailable:
    return Unavailable("the service cannot reach its database right now; try again", retry_after=1)


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Check a pooled connection before use only when it sat idle.

    SQLAlchemy's pool_pre_ping checks on every checkout, and with asyncpg that costs
    three round trips (BEGIN, ";", ROLLBACK): more than many of the transactions it
    guards, on every one of them. A connection that was in use moments ago is alive; one
    idle for a while may have died with a Postgres restart, so only that one is pinged,
    and a dead one is replaced before the caller sees it. (A restart in the middle of a
    busy moment fails the statements then in flight; SQLAlchemy then invalidates the
    whole pool, and duties retry by their lease.)
    """
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "checkin")
    def _stamp(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _ping(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            dbapi_connection.ping()
        except Exception as exc:
            # The pool discards this connection and checks out another (or a new one).
            raise DisconnectionError("pooled connection failed its ping") from exc


# The session behind a pooled connection is gone (Postgres restarted, or an operator
# ended it), or asyncpg's protocol state says the connection is unusable. SQLAlchemy's
# asyncpg dialect calls an error a disconnect only once asyncpg has seen the socket
# closed, which it may not have yet: the connection went back to the pool and the next
# request on it failed with "cannot switch to state 12; another operation is in progress"
# (tests/integration/test_database_unavailable.py).
LOST_SESSION = (
    asyncpg.exceptions.AdminShutdownError, asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError, asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.exceptions.InternalClientError,
)


def _discard_lost_sessions(engine: AsyncEngine) -> None:
    """Count those errors as disconnects, so the connection (and the pool's others,
    opened before the same restart) are replaced instead of reused; and so is any error
    met while connecting (``context.connection`` is None then: refused, too many
    clients, the database not accepting connections), which marks it for ``unavailable``."""

    @event.listens_for(engine.sync_engine, "handle_error")
    def _lost(context: Any) -> None:
        error = context.original_exception
        if context.connection is None or isinstance(error.__cause__, LOST_SESSION) or isinstance(error, LOST_SESSION):
            context.is_disconnect = True


async def ping(engine: AsyncEngine) -> None:
    """One round trip on a pooled connection (the readiness probe); raises if the
    database does not answer."""
    async with engine.connect() as conn:
        await conn.execute(queries.PING)


def alembic_config(url: str) -> Config:
    """Alembic's configuration for ``url``, built here rather than read from an alembic.ini
    (the repository's alembic.ini, for the ``alembic`` command, points at the same place)."""
    from alembic.config import Config

    config = Config()
    # The Alembic revisions (migrations/ in the checkout) ship inside the package as
    # service.db.migrations, so `migrate` runs from any install and any working directory:
    # no alembic.ini, no checkout. The import system knows where either install put them.
    config.set_main_option("script_location", str(importlib.resources.files("service.db.migrations")))
    config.set_main_option("path_separator", "os")
    config.attributes["database_url"] = url
    return config


def migrate(url: str, revision: str = "head") -> None:
    """``alembic upgrade head`` on ``url``. Synchronous: call it outside an event loop."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)
