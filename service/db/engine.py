"""The engine, plus running migrations. Opened in the app's lifespan."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

# alembic.ini and migrations/ sit beside the package in a checkout (editable install);
# in an image with a regular install they are in the working directory (/app).
_SOURCE = Path(__file__).resolve().parents[2]
ROOT = _SOURCE if (_SOURCE / "alembic.ini").exists() else Path.cwd()


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


def create_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    engine = create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        connect_args={"server_settings": SESSION_SETTINGS},
    )
    _ping_when_idle(engine)
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


def migrate(url: str, revision: str = "head") -> None:
    """``alembic upgrade head`` on ``url``. Synchronous: call it outside an event loop."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["database_url"] = url
    command.upgrade(config, revision)
