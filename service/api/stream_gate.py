"""Who may hold a live stream, and for how long: the process's gate for
``GET /v1/jobs/{id}/stream`` (service/api/job_stream.py).

* At most STREAMS_MAX_PER_PROCESS open streams (one more: 503 ``too_many_streams``), and
  at most STREAMS_MAX_PER_OWNER of one owner (one more: 429 ``too_many_streams``), both
  with ``Retry-After``, before anything is read: one owner cannot take every stream.
* A stream lives only as long as what let it in: the gate rechecks the API keys and
  history-page sessions of every open stream every CREDENTIAL_CHECK_SECONDS (two
  statements for the whole process, whatever the number of streams), and ends the
  streams whose key was revoked or expired, or whose session ended, within about that.
  A stream woken by its job also has its credential checked in the same batch as its
  read (service/api/job_stream.py), so it sends no job data after that.
* On shutdown ``serve`` closes the gate first: every open stream sends a last comment
  and ends its response, so the graceful wait is not spent on streams that never end.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

import structlog

from service.api.plumbing.auth import Credential
from service.domain.errors import TooManyOwnerStreams, TooManyStreams
from service.observability import metrics

log = structlog.get_logger(__name__)

RETRY_AFTER_SECONDS = 5
# The contract: a stream ends within 5 s of its key's revocation or expiry (or its
# session's end); checked every 2 s, a stream ends ~2 s after, plus one statement.
CREDENTIAL_CHECK_SECONDS = 2.0

# The credentials among those given that are still live (the database's verdict).
LiveCheck = Callable[[Collection[Credential]], Awaitable[set[Credential]]]


@dataclass(eq=False)
class OpenStream:
    """One open stream: whose it is, what let it in, and the event that wakes it (its
    job changed, its credential ended, or the server is closing)."""

    owner: str
    credential: Credential
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    credential_ended: bool = False


class StreamGate:
    """Counts this process's open streams (in all and per owner), refuses one past a
    cap, ends those whose credential ended, and ends them all at shutdown. Made in the
    app's lifespan (``app.state.streams``)."""

    def __init__(self, limit: int, per_owner: int, live: LiveCheck) -> None:
        self.limit = limit
        self.per_owner = per_owner
        self.closing = False
        self._live = live
        self._open: set[OpenStream] = set()
        self._owners: Counter[str] = Counter()
        self._watcher: asyncio.Task[None] | None = None

    @property
    def open(self) -> int:
        return len(self._open)

    def enter(self, stream: OpenStream) -> None:
        """Admit ``stream``, or raise TooManyStreams (503) / TooManyOwnerStreams (429)."""
        if self.closing:
            metrics.STREAMS_REFUSED.inc()
            raise TooManyStreams("the server is shutting down; reconnect", retry_after=RETRY_AFTER_SECONDS)
        if len(self._open) >= self.limit:
            metrics.STREAMS_REFUSED.inc()
            raise TooManyStreams(f"this server holds its maximum of {self.limit:,} live streams "
                                 f"(STREAMS_MAX_PER_PROCESS); retry in {RETRY_AFTER_SECONDS} s",
                                 retry_after=RETRY_AFTER_SECONDS)
        if self._owners[stream.owner] >= self.per_owner:
            metrics.STREAMS_REFUSED.inc()
            raise TooManyOwnerStreams(f"you hold {self.per_owner:,} live streams on this server, its maximum per "
                                      f"owner (STREAMS_MAX_PER_OWNER); close one or retry in {RETRY_AFTER_SECONDS} s",
                                      retry_after=RETRY_AFTER_SECONDS)
        self._open.add(stream)
        self._owners[stream.owner] += 1
        metrics.STREAMS_OPEN.set(len(self._open))
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="streams.credentials")

    def leave(self, stream: OpenStream) -> None:
        if stream in self._open:
            self._open.discard(stream)
            self._owners[stream.owner] -= 1
            if not self._owners[stream.owner]:
                del self._owners[stream.owner]
        metrics.STREAMS_OPEN.set(len(self._open))

    def close_all(self) -> None:
        """Shutdown: refuse new streams and wake every open one, which then ends."""
        self.closing = True
        for stream in self._open:
            stream.wake.set()
        if self._watcher is not None:
            self._watcher.cancel()

    async def _watch(self) -> None:
        """While streams are open: every CREDENTIAL_CHECK_SECONDS, end those whose
        credential no longer opens doors. A failed check ends nothing (the database may
        be away for a moment; the next check decides)."""
        try:
            while self._open and not self.closing:
                await asyncio.sleep(CREDENTIAL_CHECK_SECONDS)
                await self.recheck()
        finally:
            self._watcher = None

    async def recheck(self) -> None:
        streams = list(self._open)
        try:
            live = await self._live({s.credential for s in streams})
        except Exception as exc:  # noqa: BLE001 - keep the streams; check again next time
            log.warning("streams.credential_check_failed", error=type(exc).__name__)
            return
        for stream in streams:
            if stream.credential not in live:
                stream.credential_ended = True
                stream.wake.set()


def live_check(check: Callable[[Collection[str], Collection[str]], Awaitable[tuple[set[str], set[str]]]]
               ) -> LiveCheck:
    """A LiveCheck over ``check(key digests, session digests) -> (live keys, live sessions)``
    (service/db/page_sessions.py ``live_credentials``, bound to the engine)."""
    async def live(credentials: Collection[Credential]) -> set[Credential]:
        keys = {c.digest for c in credentials if c.kind == "key"}
        sessions = {c.digest for c in credentials if c.kind == "session"}
        live_keys, live_sessions = await check(keys, sessions)
        return {c for c in credentials if c.digest in (live_keys if c.kind == "key" else live_sessions)}

    return live
