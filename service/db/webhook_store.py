"""The receiver's fast path: a verified ``completed`` or ``failed`` webhook recorded in
ONE round trip to Postgres, and the wake-ups it causes sent in batches.

Why: the general path (service/api/webhooks.py ``record`` → ``jobs.apply_prediction``)
makes about fifteen round trips through SQLAlchemy per webhook (pool pre-ping, BEGIN,
lock, inserts, a savepoint, two updates, NOTIFY, COMMIT), which costs milliseconds of
CPU each time; and a NOTIFY inside the transaction makes Postgres serialise the commits
of every transaction that notifies. Here one statement, sent on a plain asyncpg pool
with a prepared plan, does the whole thing as its own transaction, and the NOTIFYs go
afterwards, many webhooks' worth in one statement.

It covers only the common cases and defers everything else to the general path: a
duplicate webhook-id for a job we have, and a new final event for a job that is not
terminal, has the webhook's task id and has not heard a final provider status yet.
Otherwise ``queries.RECORD_FINAL_NEWS`` writes nothing and answers ``handled = false`` (or no
row for an unknown job). Within those cases it must do exactly what ``record`` +
``apply_prediction`` do; the
test tests/integration/test_receiver_fast_path.py posts the same scenarios through both
paths and compares every row they write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from service.db import engine as db
from service.db import jobs, queries
from service.domain.states import CALLBACK_EVENT, TERMINAL, JobStatus, allowed_from
from service.settings import Settings

log = structlog.get_logger(__name__)

FINAL_STATUSES = ("completed", "failed")
_TERMINAL = sorted(s.value for s in TERMINAL)
NO_OUTPUTS_ERROR = "provider reported completion without outputs"
FAILED_ERROR = "the provider reported the task as failed"



@dataclass(frozen=True)
class FinalNews:
    """What the general path would do with a ``completed``/``failed`` webhook, worked out
    from the request alone (the database decides the rest)."""

    provider_status: str
    target: JobStatus
    error: str | None
    outputs: list[str]
    # apply_prediction answers "advanced" for a completion without outputs even when the
    # failure could not be applied; mirrored here.
    always_advanced: bool


def final_news(prediction: dict[str, Any]) -> FinalNews | None:
    """The fast path's plan for ``prediction``, or None when it is not for the fast path.

    Mirrors the ``completed`` and ``failed`` branches of ``jobs.apply_prediction``.
    """
    status = prediction.get("status")
    task_id = prediction.get("id")
    if status not in FINAL_STATUSES or not isinstance(task_id, str) or not task_id:
        return None
    if status == "completed":
        outputs = jobs._outputs(prediction)
        if outputs:
            return FinalNews(status, JobStatus.STORING, None, outputs, always_advanced=False)
        return FinalNews(status, JobStatus.FAILED, NO_OUTPUTS_ERROR, [], always_advanced=True)
    error = str(prediction.get("error") or FAILED_ERROR)
    return FinalNews(status, JobStatus.FAILED, error, [], always_advanced=False)


class NotifyBatcher:
    """Group commit for wake-ups: callers hand in (channel, payload) pairs and wait; the
    first waiter to get the lock sends everything queued so far in one statement, so
    under load one NOTIFY transaction serves many webhooks."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._queued: list[tuple[str, str]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._lock = asyncio.Lock()

    async def send(self, items: list[tuple[str, str]]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued += items
        self._waiters.append(done)
        async with self._lock:
            if done.done():
                return  # an earlier leader sent ours too
            items, self._queued = self._queued, []
            waiters, self._waiters = self._waiters, []
            try:
                unique = sorted(set(items))
                async with self._pool.acquire(timeout=10) as conn:
                    await conn.execute(queries.NOTIFY_MANY, [c for c, _ in unique], [p for _, p in unique])
            except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                # Only a hint: pollers and waiters' re-checks pick the change up anyway.
                log.warning("notify.failed", error=type(exc).__name__, count=len(items))
            finally:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)


class WebhookStore:
    """The fast path's pool and statements; one per process (see ``open_store``)."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings
        self._notify = NotifyBatcher(pool)

    async def record_final(
        self, webhook_id: str, job_id: str, prediction: dict[str, Any], raw: str, news: FinalNews
    ) -> str | None:
        """Record a verified final webhook; return the outcome the general path would,
        or None when this one is not for the fast path (nothing was written)."""
        task_id: str = prediction["id"]
        detail = {"webhook_id": webhook_id, "task_id": task_id, "status": prediction.get("status")}
        terminal = news.target in TERMINAL
        nsfw = jobs._nsfw(prediction)
        async with self._pool.acquire(timeout=10) as conn:
            row = await conn.fetchrow(
                queries.RECORD_FINAL_NEWS,
                job_id, webhook_id, task_id, raw,
                json.dumps({**detail, "duplicate": False}), json.dumps({**detail, "duplicate": True}),
                news.provider_status, jobs._inference_ms(prediction), None if nsfw is None else json.dumps(nsfw),
                news.target.value, allowed_from(news.target), terminal,
                news.error, news.outputs, jobs.new_delivery_id(),
                CALLBACK_EVENT[news.target] if terminal else None, "webhook", _TERMINAL,
            )
        if row is None or not row["handled"]:
            return None  # unknown job, or news the general path must judge
        if not row["fresh"]:
            return "duplicate"
        if row["moved"]:
            await self._wake(job_id, news.target, row["has_callback"])
        if news.always_advanced or row["moved"]:
            return "advanced"
        return "unchanged"

    async def _wake(self, job_id: str, target: JobStatus, has_callback: bool) -> None:
        """The NOTIFYs ``jobs.transition`` would send, after the commit."""
        if target in TERMINAL:
            items = [(queries.CHANNEL_WORK, "deliver")] if has_callback else []
            items.append((queries.CHANNEL_DONE, job_id))
        else:
            items = [(queries.CHANNEL_WORK, target.value), (queries.CHANNEL_JOB, job_id)]
        await self._notify.send(items)


async def _no_reset(conn: asyncpg.Connection) -> None:
    """The fast path leaves no session state behind (single statements: no transaction
    left open, no LISTEN, no SET), so skip asyncpg's reset round trip on release."""


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[WebhookStore]:
    """The fast path's own small pool: asyncpg directly, no pre-ping round trips. It
    connects lazily (min_size 0) so a database that is down at start-up does not stop
    the service; a broken connection makes that one webhook take the general path."""
    assert settings.database_url
    pool = asyncpg.create_pool(
        db.asyncpg_dsn(settings.database_url), min_size=0, max_size=settings.db_pool_size,
        reset=_no_reset, max_inactive_connection_lifetime=60,
    )
    await pool
    try:
        yield WebhookStore(pool, settings)
    finally:
        try:
            await asyncio.wait_for(pool.close(), timeout=5)
        except Exception:  # noqa: BLE001 - whatever stops a clean close, leave no sockets behind
            pool.terminate()
