"""The engine, plus running migrations. Opened in the app's lifespan."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

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


def create_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping: with asyncpg it costs three round trips (BEGIN, ";", ROLLBACK) on
        # every checkout, more than many of the transactions it guards. A Postgres restart
        # is still ridden out: the first statement on a dead connection fails, SQLAlchemy
        # then invalidates the whole pool, and the duty or request that failed is retried
        # (duties by their lease, webhooks by the provider's retry) on fresh connections
        # (tests/integration/test_faults.py::test_postgres_restart_mid_run_is_ridden_out).
        pool_pre_ping=False,
        pool_recycle=1800,
    )


def migrate(url: str, revision: str = "head") -> None:
    """``alembic upgrade head`` on ``url``. Synchronous: call it outside an event loop."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["database_url"] = url
    command.upgrade(config, revision)
