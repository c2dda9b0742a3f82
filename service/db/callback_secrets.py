"""Per-owner callback secrets: read, create on first need, rotate with an overlap.

Owners that existed when revision 0005 ran have a row whose ``secret`` is NULL: they keep
signing with the service-wide secret (``legacy``: CALLBACK_SIGNING_SECRET, or the one the
service generated before owners had their own), so no backend breaks on upgrade. Any
other owner gets a random secret the first time one is needed. A rotation keeps the
previous secret for ``keep_previous_seconds``; while it lives, callbacks carry both
signatures.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db.models import CallbackSecret, ServiceSecret, table
from service.domain.errors import ConfigError
from service.domain.sealing import Sealer
from service.domain.signing import generate_standard_secret, standard_key

secrets_t = table(CallbackSecret)
service_secrets_t = table(ServiceSecret)
SERVICE_WIDE_NAME = "callback_signing_secret"  # its row in service_secrets
MAX_KEEP_PREVIOUS_SECONDS = 604800
DEFAULT_KEEP_PREVIOUS_SECONDS = 86400


async def service_wide(engine: AsyncEngine, configured: str | None) -> str:
    """CALLBACK_SIGNING_SECRET, or the one generated and stored on first start (every
    process on the database then signs with the same secret)."""
    if configured:
        try:
            standard_key(configured)
        except ValueError:
            raise ConfigError("CALLBACK_SIGNING_SECRET must be 'whsec_' followed by base64") from None
        return configured
    async with engine.begin() as conn:
        await conn.execute(
            pg_insert(service_secrets_t).values(name=SERVICE_WIDE_NAME, value=generate_standard_secret())
            .on_conflict_do_nothing()
        )
        row = (await conn.execute(
            select(service_secrets_t.c.value).where(service_secrets_t.c.name == SERVICE_WIDE_NAME))).one()
    return str(row.value)


@dataclass(frozen=True)
class OwnerSecrets:
    secret: str
    previous: str | None  # only while it has not expired
    previous_expires_at: dt.datetime | None

    @property
    def signing(self) -> list[str]:
        """The secrets a callback is signed with, newest first."""
        return [self.secret] + ([self.previous] if self.previous else [])


async def _ensure(conn: AsyncConnection, owner: str, sealer: Sealer) -> None:
    await conn.execute(
        pg_insert(secrets_t).values(owner=owner, secret=sealer.seal(generate_standard_secret()))
        .on_conflict_do_nothing(index_elements=["owner"])
    )


def _select(owner: str, *, for_update: bool = False):  # type: ignore[no-untyped-def]
    live = secrets_t.c.previous_expires_at > func.now()
    query = select(
        secrets_t.c.secret, secrets_t.c.previous_secret, secrets_t.c.previous_expires_at, live.label("live"),
        func.now().label("now"),
    ).where(secrets_t.c.owner == owner)
    return query.with_for_update() if for_update else query


async def current(conn: AsyncConnection, owner: str, sealer: Sealer, legacy: str) -> OwnerSecrets:
    """The owner's secrets now; a random one is created if the owner has none yet."""
    row = (await conn.execute(_select(owner))).first()
    if row is None:
        await _ensure(conn, owner, sealer)
        row = (await conn.execute(_select(owner))).one()
    return opened(row.secret, row.previous_secret, bool(row.live), row.previous_expires_at, sealer, legacy)


def opened(secret: str | None, previous_secret: str | None, previous_live: bool,
           previous_expires_at: dt.datetime | None, sealer: Sealer, legacy: str) -> OwnerSecrets:
    """An owner's secrets from its sealed row (``previous_live``: the previous one has not
    expired); ``legacy`` stands for a NULL secret."""
    live = previous_live and previous_secret is not None
    return OwnerSecrets(
        secret=sealer.open(secret) if secret is not None else legacy,
        previous=sealer.open(previous_secret) if live and previous_secret is not None else None,
        previous_expires_at=previous_expires_at if live else None,
    )


async def rotate(
    conn: AsyncConnection, owner: str, sealer: Sealer, legacy: str, keep_previous_seconds: int
) -> OwnerSecrets:
    """A new random secret; the one it replaces verifies for ``keep_previous_seconds``
    more (0: not at all). An older previous secret is dropped. Runs in the caller's
    transaction; the row lock serialises concurrent rotations of one owner."""
    await _ensure(conn, owner, sealer)
    row = (await conn.execute(_select(owner, for_update=True))).one()
    replaced = sealer.open(row.secret) if row.secret is not None else legacy
    new = generate_standard_secret()
    expires = row.now + dt.timedelta(seconds=keep_previous_seconds) if keep_previous_seconds > 0 else None
    await conn.execute(
        update(secrets_t).where(secrets_t.c.owner == owner).values(
            secret=sealer.seal(new),
            previous_secret=sealer.seal(replaced) if expires else None,
            previous_expires_at=expires,
            rotated_at=func.now(),
        )
    )
    return OwnerSecrets(secret=new, previous=replaced if expires else None, previous_expires_at=expires)


async def shares_service_wide(conn: AsyncConnection, owner: str) -> bool:
    """Whether ``owner`` still signs with the service-wide secret (an owner from before
    per-owner secrets that never rotated): every such owner can read that secret, so any
    of them could sign for the others."""
    row = (await conn.execute(select(secrets_t.c.secret.is_(None).label("shared"))
                              .where(secrets_t.c.owner == owner))).first()
    return bool(row and row.shared)


async def sharing_owners(conn: AsyncConnection) -> list[str]:
    """Every owner that still signs with the service-wide secret, by name."""
    rows = await conn.execute(select(secrets_t.c.owner).where(secrets_t.c.secret.is_(None))
                              .order_by(secrets_t.c.owner))
    return [r.owner for r in rows]
