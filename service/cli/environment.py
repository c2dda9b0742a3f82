"""What every command reads from its environment: the settings (read once, here), the
database URL, the log format, and a short-lived engine for the commands that need one.

SQLAlchemy is imported by the commands that open an engine, not by parsing or ``--help``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from service.domain.errors import ServiceError, ValidationFailed
from service.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")


def load_settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # noqa: BLE001  pydantic's message names the variable and the rule
        raise SystemExit(f"invalid configuration: {exc}") from None


def configure_logs(settings: Settings) -> None:
    from service.observability.logs import configure

    configure(settings.log_level, settings.effective_log_format)


def require_database(settings: Settings) -> str:
    if not settings.database_url:
        raise SystemExit("DATABASE_URL is not set (e.g. postgresql://user:pass@host:5432/db)")
    return settings.database_url


def open_engine(settings: Settings, pool_size: int = 1) -> AsyncEngine:
    """An engine on DATABASE_URL, opened as DATABASE_POOL_MODE says (the caller disposes it)."""
    from service.db.engine import create_engine

    return create_engine(require_database(settings), pool_size, transaction_pooling=settings.transaction_pooling)


def run_on_engine(work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """``work`` on an engine of one connection, disposed afterwards; a refusal (a
    ServiceError) ends the command with its message, a field's named as its option."""
    settings = load_settings()
    require_database(settings)

    async def go() -> T:
        engine = open_engine(settings)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(go())
    except ServiceError as exc:
        if isinstance(exc, ValidationFailed):
            raise SystemExit("error: " + "; ".join(f"--{f['loc'].replace('_', '-')}: {f['msg']}"
                                                   for f in exc.fields)) from None
        raise SystemExit(f"error: {exc.message}") from None
