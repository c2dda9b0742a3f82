"""Group commit for the receiver: webhooks that arrive together are written together.

Each webhook is verified on its own by its request; then ``NewsWriter.write`` queues its
``News`` and waits. Up to ``max_flushes`` batches are in flight at once, each one
statement (``news.apply``, its own transaction) on a plain asyncpg pool: at low load a
webhook is written alone at once; under load every arrival during a flush joins the
next batch, so one commit (one WAL flush) serves many webhooks, and a batch starts
beside one in flight only with at least half as many webhooks (16 clients in a closed
loop: two batches of 8 in turn, where a free flush taken by any arrival made batches
of 1 and 15). A request is answered
only after the commit that holds its webhook; the wake-ups go out after it, from one
task, many in one NOTIFY statement (a NOTIFY inside the transaction would serialise the
commits of every notifying transaction).

Two items for the same job (or webhook-id) never share a batch or run in two batches at
once: a row may change only once per statement, and it keeps concurrent batches from
waiting on each other. When a batch fails (a task id adopted by two jobs at once, a
deadlock with another process), each of its items is retried alone, so one bad item
cannot fail the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import AsyncIterator, Callable

import asyncpg
import structlog

from service.db import engine as db
from service.db import leases, news
from service.db.news import News, Result
from service.domain.errors import BadRequest, Unavailable
from service.settings import Settings

log = structlog.get_logger(__name__)

DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
ACQUIRE_TIMEOUT = 10.0
# Batches in flight at once. Postgres pays mostly per statement and per commit (one
# item alone: ~4.7 ms; 16 together: ~0.6 ms each; 64: ~0.3 ms each, on the 2-core
# development machine), so batches should be large; but a commit's latency is mostly
# waiting (the WAL flush, a busy machine's run queue), which batches in flight together
# overlap. Two: beside the code of 6f03e7c (bench_receiver --compare-rev 5e763c9~1, 16
# connections, 2026-12-06, ae6cf55) 2 gave 1.10-1.29x its rate per round, p99 8.5 ms
# against 11.5, with Postgres at 0.64 cores against 0.91 (fewer, larger commits); 4 gave
# 0.81-1.03x, 8 gave 0.70-0.76x. (On a slower machine 1, 2 and 4 measured alike.)
MAX_FLUSHES = 2


class NewsWriter:
    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 256, max_flushes: int = MAX_FLUSHES) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._max_flushes = max_flushes
        self._queue: deque[tuple[News, asyncio.Future[Result]]] = deque()
        self._busy_jobs: set[str] = set()  # jobs with an item in a batch in flight
        self._flushes: set[asyncio.Task[None]] = set()
        self._in_flight = 0  # webhooks in the batches in flight
        self._wakes: set[tuple[str, str]] = set()
        self._notifier: asyncio.Task[None] | None = None
        # This process's own duties (Notifications.kick_for), set when it runs them: a
        # batch's work wakes them at its commit, not a NOTIFY round trip later. The
        # NOTIFY still goes out, for the duties of other processes.
        self.wake_local: Callable[[str], None] | None = None
        # This process's runner, when it has one: a job a batch moves to storing (or a
        # callback it queues) is leased by the same statement to a free slot of the local
        # storer (deliverer), which works it at once, without a claim.
        self.handoff: leases.Handoff | None = None

    async def write(self, item: News) -> Result:
        """Write ``item`` in the next batch; return once that batch is committed."""
        done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, done))
        self._start_flushes()
        # A client that hangs up cancels only ``done``, never the write of its batch (a
        # task of its own, which skips futures already done), so no shield is needed.
        return await done

    async def drain(self, timeout: float = 5.0) -> None:
        """Let the batches in flight finish (at shutdown, before the pool closes)."""
        if self._flushes:
            await asyncio.wait(set(self._flushes), timeout=timeout)
        if self._notifier is not None:
            await asyncio.wait({self._notifier}, timeout=timeout)

    def _start_flushes(self) -> None:
        while self._worth_a_flush():
            batch = self._take()
            if not batch:
                return  # everything queued waits for a job in flight
            task = asyncio.create_task(self._flush(batch), name="news.flush")
            self._flushes.add(task)
            self._in_flight += len(batch)
            task.add_done_callback(functools.partial(self._flush_done, size=len(batch)))

    def _worth_a_flush(self) -> bool:
        """Idle: at once. With a batch in flight, whose commit takes what is queued by
        then, another starts only with at least half as many webhooks: started for any
        arrival, the clients of a closed loop split into a group of one and a group of
        all the others, and half the commits served one webhook each."""
        if not self._queue or len(self._flushes) >= self._max_flushes:
            return False
        return not self._flushes or 2 * len(self._queue) >= self._in_flight

    def _take(self) -> list[tuple[News, asyncio.Future[Result]]]:
        batch: list[tuple[News, asyncio.Future[Result]]] = []
        left: deque[tuple[News, asyncio.Future[Result]]] = deque()
        hooks: set[str] = set()
        while self._queue and len(batch) < self._max_batch:
            entry = self._queue.popleft()
            item = entry[0]
            if item.job_id in self._busy_jobs or (item.webhook_id is not None and item.webhook_id in hooks):
                left.append(entry)
                continue
            self._busy_jobs.add(item.job_id)
            if item.webhook_id is not None:
                hooks.add(item.webhook_id)
            batch.append(entry)
        left.extend(self._queue)
        self._queue = left
        return batch

    def _flush_done(self, task: asyncio.Task[None], size: int) -> None:
        self._flushes.discard(task)
        self._in_flight -= size
        self._start_flushes()

    async def _flush(self, batch: list[tuple[News, asyncio.Future[Result]]]) -> None:
        items = [item for item, _ in batch]
        try:
            try:
                results: list[Result] | None = await self._write(items)
            except DB_ERRORS as exc:
                if len(batch) > 1:
                    log.warning("news.batch_failed", size=len(batch), error=type(exc).__name__)
                results = None
            if results is None:
                for entry in batch:
                    await self._write_alone(*entry)
            else:
                for (_, done), result in zip(batch, results, strict=True):
                    if not done.done():
                        done.set_result(result)
        except BaseException as exc:
            # A bug must not leave requests waiting forever: each gets the error.
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc if isinstance(exc, Exception) else Unavailable())
            if not isinstance(exc, Exception):
                raise
            log.exception("news.flush_crashed", size=len(batch), error=type(exc).__name__)
        finally:
            for item in items:
                self._busy_jobs.discard(item.job_id)

    async def _write_alone(self, item: News, done: asyncio.Future[Result]) -> None:
        """Retry one item of a failed batch; once more if it fails again (a concurrent
        writer that made it fail has committed by then, so the verdict is now clear).
        Text Postgres cannot store (a NUL character) fails the same way every time: that
        webhook is refused, not retried."""
        for attempt in (1, 2):
            try:
                (result,) = await self._write([item])
            except asyncpg.DataError:
                if not done.done():
                    done.set_exception(BadRequest("the webhook carries text that cannot be stored "
                                                  "(such as a NUL character)"))
                return
            except DB_ERRORS as exc:
                if attempt == 2:
                    log.warning("news.write_failed", job_id=item.job_id, error=type(exc).__name__)
                    if not done.done():
                        done.set_exception(Unavailable("the webhook could not be recorded; send it again"))
                continue
            if not done.done():
                done.set_result(result)
            return

    async def _write(self, items: list[News]) -> list[Result]:
        handoff = self.handoff
        duties = [news.handoff_duty(item) for item in items] if handoff is not None else []
        with leases.handing_over(handoff, duties) as slots:
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                # One statement: its own transaction.
                results = await news.apply(conn, items, holders=slots.holders,
                                           lease=handoff.lease if handoff is not None else 0.0)
            slots.adopted = [r.adopted for r in results]
        wakes = [w for r in results for w in r.wake]
        if self.wake_local is not None:
            for payload in {p for r in results for p in news.work_wakes(r)}:
                self.wake_local(payload)
        self._wake(wakes)
        return results

    def _wake(self, wakes: list[tuple[str, str]]) -> None:
        """Queue wake-ups for after the commit, sent by one task, many per statement:
        the answer to the provider does not wait for them (they are only hints)."""
        self._wakes.update(wakes)
        if self._wakes and (self._notifier is None or self._notifier.done()):
            self._notifier = asyncio.create_task(self._send_wakes(), name="news.notify")

    async def _send_wakes(self) -> None:
        while self._wakes:
            wakes, self._wakes = self._wakes, set()
            try:
                async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                    await news.notify(conn, sorted(wakes))
            except DB_ERRORS as exc:
                # Only a hint: pollers and waiters' re-checks pick the change up anyway.
                log.warning("notify.failed", error=type(exc).__name__, count=len(wakes))


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Single statements leave no session state (no open transaction, LISTEN or SET),
    so asyncpg's reset round trip on release is skipped."""


@contextlib.asynccontextmanager
async def open_writer(settings: Settings) -> AsyncIterator[NewsWriter]:
    """The receiver's own small pool: asyncpg directly, no pre-ping round trips. It
    connects lazily (min_size 0) so a database that is down at start-up does not stop
    the service."""
    assert settings.database_url
    pool = asyncpg.create_pool(
        db.asyncpg_dsn(settings.database_url), min_size=0, max_size=settings.db_pool_size,
        reset=_no_reset, max_inactive_connection_lifetime=60, **db.asyncpg_options(settings.transaction_pooling),
    )
    await pool
    writer = NewsWriter(pool, max_flushes=max(1, min(MAX_FLUSHES, settings.db_pool_size)))
    try:
        yield writer
    finally:
        await writer.drain()
        try:
            await asyncio.wait_for(pool.close(), timeout=5)
        except Exception:  # noqa: BLE001 - whatever stops a clean close, leave no sockets behind
            pool.terminate()
