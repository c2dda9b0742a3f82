"""Receipt keys in the database (revision 0014): the one the service signs with when
RECEIPT_SIGNING_KEY is unset, and the public part of every key that ever signed.

At most one row holds a private key (a partial unique index): the service makes it on
first start, a rotation clears it from the old row (which stays, public only) and makes
a new one. RECEIPT_SIGNING_KEY's key is recorded public only, so it stays published
after the file changes. Every process reads the signing key when it signs, so a
rotation takes effect at once everywhere.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db.models import ReceiptKey as ReceiptKeyRow
from service.db.models import table
from service.domain import receipt_keys
from service.domain.errors import ConfigError
from service.domain.receipt_keys import ReceiptKey
from service.domain.sealing import Sealer

keys_t = table(ReceiptKeyRow)
SIGNING = keys_t.c.private_key.is_not(None)


async def record(conn: AsyncConnection, key: ReceiptKey, sealer: Sealer | None) -> bool:
    """Insert ``key``: as the signing key when ``sealer`` is given, else public only.
    False when it was not inserted (its kid is known, or another signing key exists)."""
    private = sealer.seal(key.private_pem()) if sealer is not None else None
    inserted = await conn.execute(
        pg_insert(keys_t).values(kid=key.kid, alg=key.alg, public_jwk=key.public_jwk(), private_key=private)
        .on_conflict_do_nothing().returning(keys_t.c.kid)
    )
    return inserted.first() is not None


async def ensure_signing_key(conn: AsyncConnection, sealer: Sealer) -> None:
    """First start: make the service's own signing key unless one exists (two processes
    starting at once make two, and the unique index keeps one)."""
    if (await conn.execute(select(keys_t.c.kid).where(SIGNING))).first() is None:
        await record(conn, receipt_keys.generate(), sealer)


async def signing_key_pem(conn: AsyncConnection) -> tuple[str, str] | None:
    """(kid, sealed PEM) of the service's own signing key, if it has one."""
    row = (await conn.execute(select(keys_t.c.kid, keys_t.c.private_key).where(SIGNING))).first()
    return None if row is None else (str(row.kid), str(row.private_key))


async def rotate(conn: AsyncConnection, sealer: Sealer) -> ReceiptKey:
    """Retire the signing key (its private part is erased, its public part stays
    published) and make a new one, in the caller's transaction."""
    await conn.execute(update(keys_t).where(SIGNING).values(private_key=None, retired_at=func.now()))
    key = receipt_keys.generate()
    if not await record(conn, key, sealer):
        raise ConfigError("another rotation made a signing key at the same time; nothing changed, run it again")
    return key


async def published(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Every public key, the signing one first, then newest first."""
    rows = (await conn.execute(
        select(keys_t.c.public_jwk).order_by(SIGNING.desc(), keys_t.c.created_at.desc(), keys_t.c.kid)
    )).all()
    return [dict(row.public_jwk) for row in rows]


class ReceiptSigner:
    """Which key signs a receipt now: RECEIPT_SIGNING_KEY's, else the service's own from
    the database (opened once per kid and kept)."""

    def __init__(self, configured: ReceiptKey | None, sealer: Sealer) -> None:
        self.configured = configured
        self.sealer = sealer
        self._opened: dict[str, ReceiptKey] = {}

    async def start(self, conn: AsyncConnection) -> None:
        """Publish RECEIPT_SIGNING_KEY's public key, or make the service's own key."""
        if self.configured is not None:
            await record(conn, self.configured, None)
        else:
            await ensure_signing_key(conn, self.sealer)

    async def key(self, engine: AsyncEngine) -> ReceiptKey:
        """The key to sign with now (read from the database each time, so a rotation
        takes effect at once in every process; the database is not asked with
        RECEIPT_SIGNING_KEY)."""
        if self.configured is not None:
            return self.configured
        async with engine.begin() as conn:
            found = await signing_key_pem(conn)
            if found is None:  # only if someone deleted it by hand: make it again
                await ensure_signing_key(conn, self.sealer)
                found = await signing_key_pem(conn)
        assert found is not None
        kid, sealed = found
        if kid not in self._opened:
            self._opened = {kid: receipt_keys.from_pem(self.sealer.open(sealed), "the stored receipt key")}
        return self._opened[kid]
