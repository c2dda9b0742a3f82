"""LISTEN/NOTIFY on one dedicated asyncpg connection per process.

Workers wake on ``wsj_work``, waiters (``?wait=N``) on ``wsj_done``, and live streams
(``GET /v1/jobs/{id}/stream``) on ``wsj_job`` and ``wsj_done`` (payload: the job id,
or a bulk batch's ids joined by commas), so a thousand open streams cost one listening
connection, not a poll each. Notifications are only a hint: workers also poll, so a
notification lost while the connection was down (a Postgres restart) only delays work.
The connection reconnects by itself. It is a session of its own, on DATABASE_DIRECT_URL
when that is set: through a transaction pooler a LISTEN would be registered on a server
session the pooler lends to other clients next, and hear nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from typing import Any

import asyncpg
import structlog

from service.db.queries import CHANNEL_DONE, CHANNEL_JOB, CHANNEL_WORK

log = structlog.get_logger(__name__)

# Which duties (service/work, by name) a ``wsj_work`` payload concerns. Waking every duty
# on every notification cost each of them a claim transaction that found nothing, about
# five times per job. ``submitted``/``processing`` wake nobody: such a job is due only
# after RECONCILE_AFTER_SECONDS (or 30 s), which polling covers. Any payload not listed
# wakes every duty, and every duty also polls, so a missing entry only costs claims.
WAKES: dict[str, tuple[str, ...]] = {
    "submit": ("submit",),
    "queued": ("submit",),
    "storing": ("store",),
    "deliver": ("deliver",),
    "erase": ("erase",),
    "submitted": (),
    "processing": (),
}


class Notifications:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._work: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._done: dict[str, list[asyncio.Event]] = defaultdict(list)
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="notifications")
        # Do not block start-up forever on a down database: polling covers the gap.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout=5)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def _on_notify(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        if channel == CHANNEL_WORK:
            self.kick_for(payload)
            return
        # A payload is one job id, or several joined by commas (a bulk batch's ends): only
        # the ids someone waits on are looked at (a set intersection, in C).
        ids = payload.split(",")
        if len(ids) > 1:
            ids = [*(self._done.keys() | self._watchers.keys()) & set(ids)] if channel == CHANNEL_DONE \
                else [*self._watchers.keys() & set(ids)]
        for job_id in ids:
            if channel == CHANNEL_DONE:
                for event in self._done.pop(job_id, []):
                    event.set()
            for event in self._watchers.get(job_id, ()):
                event.set()

    async def _run(self) -> None:
        delay = 0.5
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=5)
                await conn.add_listener(CHANNEL_WORK, self._on_notify)
                await conn.add_listener(CHANNEL_DONE, self._on_notify)
                await conn.add_listener(CHANNEL_JOB, self._on_notify)
                self._connected.set()
                delay = 0.5
                self.kick()  # we may have missed news while away: look now
                for event_list in [*self._done.values(), *self._watchers.values()]:
                    for event in event_list:
                        event.set()  # waiters and streams re-check the row themselves
                while not conn.is_closed():
                    await asyncio.sleep(1)
            except asyncio.CancelledError:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
                raise
            except Exception as exc:  # noqa: BLE001  any failure: reconnect (polling covers the gap)
                log.warning("notifications.disconnected", error=type(exc).__name__)
            self._connected.clear()
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=2)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def wait_for_work(self, duty: str, timeout: float) -> None:
        """Sleep until any work notification or ``timeout``; each duty has its own
        event so one duty waking does not swallow the wake-up of another."""
        event = self._work[duty]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        event.clear()

    def kick(self, *duties: str) -> None:
        """Wake the named local duties, or every one when none is named (also used
        after in-process changes)."""
        for name in duties or list(self._work):
            self._work[name].set()

    def kick_for(self, payload: str) -> None:
        """Wake the local duties a ``wsj_work`` payload concerns (WAKES). Called by the
        listener, and at once by this process's own commits that make work for its own
        duties: the NOTIFY's round trip through Postgres and back cost a job ~10-80 ms at
        each hand-over (webhook → store, store → deliver)."""
        duties = WAKES.get(payload)
        if duties is None:
            self.kick()
        elif duties:
            self.kick(*duties)

    def done_waiter(self, job_id: str) -> asyncio.Event:
        """An Event set when ``job_id`` becomes terminal. Register before re-reading the
        row, so a NOTIFY between the read and the wait is not missed."""
        event = asyncio.Event()
        self._done[job_id].append(event)
        return event

    def forget(self, job_id: str, event: asyncio.Event) -> None:
        waiters = self._done.get(job_id)
        if waiters and event in waiters:
            waiters.remove(event)
            if not waiters:
                del self._done[job_id]

    def watch(self, job_id: str) -> asyncio.Event:
        """An Event set on every status change of ``job_id`` (cleared by the watcher)
        until ``unwatch``. Register before reading the row, as for ``done_waiter``."""
        event = asyncio.Event()
        self._watchers.setdefault(job_id, set()).add(event)
        return event

    def unwatch(self, job_id: str, event: asyncio.Event) -> None:
        watchers = self._watchers.get(job_id)
        if watchers is not None:
            watchers.discard(event)
            if not watchers:
                del self._watchers[job_id]

    @property
    def watching(self) -> int:
        return sum(len(w) for w in self._watchers.values())
