"""API keys: shown once, stored only as a sha256 hash."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.models import ApiKey, table

keys_t = table(ApiKey)
KEY_PREFIX = "wsj_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


async def create_key(engine: AsyncEngine, owner: str) -> str:
    if not owner or len(owner) > 200:
        raise ValueError("owner must be 1 to 200 characters")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    async with engine.begin() as conn:
        await conn.execute(insert(keys_t).values(owner=owner, key_hash=hash_key(key), prefix=key[:10]))
    return key


def create_key_blocking(database_url: str, owner: str) -> str:
    """``create_key`` from synchronous code (the CLI, tests, benchmarks): its own
    short-lived engine and event loop."""
    import asyncio

    from service.db.engine import create_engine

    async def go() -> str:
        engine = create_engine(database_url, 1)
        try:
            return await create_key(engine, owner)
        finally:
            await engine.dispose()

    return asyncio.run(go())


async def owner_for(engine: AsyncEngine, key: str) -> str | None:
    """The owner of a live key, or None. The lookup is by hash: an index probe, and the
    database never sees the key itself."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(keys_t.c.owner).where(keys_t.c.key_hash == hash_key(key), keys_t.c.revoked_at.is_(None))
            )
        ).first()
    return row.owner if row else None
