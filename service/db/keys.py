"""API keys: shown once, stored only as a sha256 hash, each with a public id (``key_…``)
that names it in lists and revocations, an optional label and expiry, and the time it
was last used. Every request looks its key up (no cache), so a revocation or an expiry
holds from the next request on, in every process."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import owners, queries
from service.db.engine import raw_statement
from service.db.models import ApiKey, PageSession, table
from service.domain.errors import FieldError, NotFound, ValidationFailed
from service.domain.serialize import iso

keys_t = table(ApiKey)
sessions_t = table(PageSession)
KEY_PREFIX = "wsj_"
PUBLIC_ID_PREFIX = "key_"
MAX_LABEL = 200
MAX_EXPIRES_IN_DAYS = 3650


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class IssuedKey:
    key: str  # shown once
    public_id: str


def live_key_clause() -> Any:
    """SQL condition of a key that still opens doors: not revoked, not expired."""
    return (keys_t.c.revoked_at.is_(None)) & or_(keys_t.c.expires_at.is_(None), keys_t.c.expires_at > func.now())


def check_key_options(label: str | None, expires_in_days: int | None) -> None:
    fields = []
    if label is not None and not 1 <= len(label) <= MAX_LABEL:
        fields.append(FieldError("label", f"must be 1 to {MAX_LABEL} characters"))
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_EXPIRES_IN_DAYS:
        fields.append(FieldError("expires_in_days", f"must be an integer from 1 to {MAX_EXPIRES_IN_DAYS}"))
    if fields:
        raise ValidationFailed(fields)


async def issue_key(
    engine: AsyncEngine, owner: str, *, label: str | None = None, expires_in_days: int | None = None
) -> IssuedKey:
    """A new key for ``owner`` (the owner is created if new)."""
    check_key_options(label, expires_in_days)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    public_id = PUBLIC_ID_PREFIX + secrets.token_hex(12)
    expires = func.now() + dt.timedelta(days=expires_in_days) if expires_in_days else None
    async with engine.begin() as conn:
        await owners.ensure(conn, owner)
        await conn.execute(insert(keys_t).values(owner=owner, key_hash=hash_key(key), prefix=key[:10],
                                                 public_id=public_id, label=label, expires_at=expires))
    return IssuedKey(key, public_id)


async def create_key(engine: AsyncEngine, owner: str) -> str:
    return (await issue_key(engine, owner)).key


def create_key_blocking(database_url: str, owner: str, *, transaction_pooling: bool = False) -> str:
    """``create_key`` from synchronous code (the CLI, tests, benchmarks): its own
    short-lived engine and event loop."""
    import asyncio

    from service.db.engine import create_engine

    async def go() -> str:
        engine = create_engine(database_url, 1, transaction_pooling=transaction_pooling)
        try:
            return await create_key(engine, owner)
        finally:
            await engine.dispose()

    return asyncio.run(go())


async def owner_for(engine: AsyncEngine, key: str) -> str | None:
    """The owner of a live key, or None. The lookup is by hash: an index probe, and the
    database never sees the key itself."""
    async with raw_statement(engine) as conn:
        owner = await conn.fetchval(queries.LOOKUP_KEY, hash_key(key))
    return None if owner is None else str(owner)


def key_dict(row: Any) -> dict[str, Any]:
    return {"id": row.public_id, "owner": row.owner, "label": row.label, "created_at": iso(row.created_at),
            "last_used_at": iso(row.last_used_at), "expires_at": iso(row.expires_at),
            "revoked_at": iso(row.revoked_at)}


async def list_keys(engine: AsyncEngine, owner: str | None = None) -> list[dict[str, Any]]:
    stmt = select(keys_t).order_by(keys_t.c.owner, keys_t.c.created_at, keys_t.c.id)
    if owner is not None:
        stmt = stmt.where(keys_t.c.owner == owner)
    async with engine.connect() as conn:
        return [key_dict(r) for r in await conn.execute(stmt)]


async def revoke_key(engine: AsyncEngine, public_id: str) -> dict[str, Any]:
    """Revoke a key and end the history-page sessions it opened. Revoking twice keeps
    the first revocation time."""
    async with engine.begin() as conn:
        row = (await conn.execute(select(keys_t).where(keys_t.c.public_id == public_id).with_for_update())).first()
        if row is None:
            raise NotFound(f"no API key with id {public_id!r}")
        if row.revoked_at is None:
            await conn.execute(update(keys_t).where(keys_t.c.id == row.id).values(revoked_at=func.now()))
        await conn.execute(delete(sessions_t).where(sessions_t.c.api_key_id == row.id))
        row = (await conn.execute(select(keys_t).where(keys_t.c.id == row.id))).one()
    return key_dict(row)
