"""History page sessions: what the page's cookie stands for.

Signing in with an API key opens a server-side session; the browser only ever holds a
random token for it, never the key. The table keeps the token's sha256 (a leaked row
cannot be replayed), the session expires on its own, and it dies with its API key:
revoking the key ends every session it opened.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.keys import hash_key, live_key_clause
from service.db.models import ApiKey, PageSession, table

sessions_t = table(PageSession)
keys_t = table(ApiKey)

COOKIE = "wsj_session"


@dataclass(frozen=True)
class Session:
    token: str
    owner: str
    expires_at: dt.datetime


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


async def open_session(engine: AsyncEngine, api_key: str, lifetime: dt.timedelta) -> Session | None:
    """A new session for the owner of a live ``api_key``, or None when the key is not."""
    token = secrets.token_urlsafe(32)
    async with engine.begin() as conn:
        key = (
            await conn.execute(
                select(keys_t.c.id, keys_t.c.owner).where(keys_t.c.key_hash == hash_key(api_key), live_key_clause())
            )
        ).first()
        if key is None:
            return None
        # Sweep expired sessions here rather than in a worker: sign-ins are rare and
        # the range delete rides the expires_at index.
        await conn.execute(delete(sessions_t).where(sessions_t.c.expires_at < func.now()))
        row = (
            await conn.execute(
                insert(sessions_t)
                .values(token_hash=_hash(token), owner=key.owner, api_key_id=key.id,
                        expires_at=func.now() + lifetime)
                .returning(sessions_t.c.expires_at)
            )
        ).one()
    return Session(token=token, owner=key.owner, expires_at=row.expires_at)


async def session_owner(engine: AsyncEngine, token: str) -> str | None:
    """The owner behind a live session token: not expired, and its key not revoked."""
    if not token or len(token) > 200:
        return None
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(sessions_t.c.owner)
                .join(keys_t, keys_t.c.id == sessions_t.c.api_key_id)
                .where(
                    sessions_t.c.token_hash == _hash(token),
                    sessions_t.c.expires_at > func.now(),
                    live_key_clause(),
                )
            )
        ).first()
    return row.owner if row else None


def token_digest(token: str) -> str:
    """What the table keeps of a session token (its sha256)."""
    return _hash(token)


async def live_credentials(engine: AsyncEngine, key_digests: Collection[str], session_digests: Collection[str],
                           ) -> tuple[set[str], set[str]]:
    """Which of these API keys (by sha256) still open doors, and which of these sessions
    (by the sha256 of their token) are live: one connection, one index probe each, so
    the live streams of a process recheck their credentials with two statements."""
    live_keys: set[str] = set()
    live_sessions: set[str] = set()
    async with engine.connect() as conn:
        if key_digests:
            live_keys = set((await conn.execute(select(keys_t.c.key_hash).where(
                keys_t.c.key_hash.in_(list(key_digests)), live_key_clause()))).scalars())
        if session_digests:
            live_sessions = set((await conn.execute(
                select(sessions_t.c.token_hash).join(keys_t, keys_t.c.id == sessions_t.c.api_key_id).where(
                    sessions_t.c.token_hash.in_(list(session_digests)), sessions_t.c.expires_at > func.now(),
                    live_key_clause()))).scalars())
    return live_keys, live_sessions


async def close_session(engine: AsyncEngine, token: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(delete(sessions_t).where(sessions_t.c.token_hash == _hash(token)))


def form_token(session_token: str) -> str:
    """The anti-CSRF token for forms posted inside a session (sign out): derived from
    the session's secret token, so a page on another site can neither read nor guess it."""
    # The label is fixed: another would void the form of every page open at a deploy.
    return hmac.new(session_token.encode("utf-8"), b"wsj-dashboard-form", hashlib.sha256).hexdigest()


def tokens_match(expected: str, given: str) -> bool:
    """Constant-time comparison; empty never matches."""
    return bool(expected) and bool(given) and hmac.compare_digest(expected.encode(), given.encode())
