"""Runs the background duties (submit, store, reconcile, deliver) in one process.

Each duty is a small service with a ``claim`` and a ``run``: the runner claims due rows
up to the duty's concurrency, runs each in its own task, renews the leases of what it
holds, and sleeps until a NOTIFY or the poll interval. On stop it claims nothing more,
gives running work a grace period, then hands back whatever it still holds.

A statement of this process that makes work for one of its duties (the receiver's batch
moving a job to storing, the storer's completion queuing a callback) may also lease the
new row to that duty (``Handoff``, service/db/leases.py): it reserves a free slot first
(``reserve``), and the row then runs in it like a claimed one (``adopt``), without a claim
statement or a wake-up; a row it did not get frees the slot (``give_back``). A reserved
slot counts as taken, so claims and hand-overs together never exceed the concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import structlog

from service.db import leases
from service.resources import Resources
from service.work.backpressure import Backpressure

log = structlog.get_logger(__name__)

# After the grace period, how long cancelled work gets to unwind before the rows are
# handed back (a row whose task is still running then keeps its lease).
CANCEL_WAIT_SECONDS = 5.0


async def claim_jobs(res: Resources, statuses: Sequence[str], limit: int, *, holder: str) -> list[str]:
    """Claim up to ``limit`` due jobs in ``statuses`` for ``holder``, leased for LEASE_SECONDS."""
    return await leases.claim_jobs(res.engine, statuses, limit, holder=holder, lease=res.settings.lease_seconds)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_for(res: Resources, duty: str) -> str:
    """What a duty writes in ``locked_by`` when it claims a row: this process and the duty.

    Every later write of the duty is fenced on it, so "holds the row" means "holds the
    claim made for this duty", not merely "this process": when a webhook moves a job on
    while the submitter waits for its answer and the storer of the same process claims
    the job, the submitter can no longer hand the storer's claim back (a job then sat
    120 s with its outputs half stored).
    """
    return f"{res.worker_id}/{duty}"


class Duty(Protocol):
    name: str
    concurrency: int
    table: str  # whose leases the runner renews: "jobs" or "deliveries"
    holder: str  # written in locked_by by this duty's claims (holder_for)

    async def claim(self, limit: int) -> list[str]: ...

    async def run(self, row_id: str) -> None: ...


# What a duty may also be; the runner looks each up once, when it is made.


@runtime_checkable
class Paced(Protocol):
    """A duty that takes fewer rows while the duties that finish what it starts
    (``downstream``, by name) are busy (the submitter; service/work/backpressure.py)."""

    downstream: tuple[str, ...]
    downstream_limit: int


@runtime_checkable
class FollowsBacklog(Protocol):
    """A duty whose concurrency follows its backlog (the storer): told when a row
    waits for a slot, as after a claim that filled every free slot."""

    def more_waiting(self) -> None: ...


@runtime_checkable
class UndoesUnsent(Protocol):
    """A duty whose claim already changed its rows (the submitter marks them as being
    sent): at a stop it undoes that for the rows it never started working on."""

    async def release_unsent(self) -> None: ...


class Runner:
    def __init__(self, res: Resources, duties: Sequence[Duty]) -> None:
        self.res = res
        self.duties = list(duties)
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._running: dict[str, set[asyncio.Task[None]]] = {d.name: set() for d in duties}
        # (row id, holder) of every row a duty is working on, by table.
        self._held: dict[str, set[tuple[str, str]]] = {table: set() for table in leases.LEASED_TABLES}
        self._by_name: dict[str, Duty] = {d.name: d for d in duties}
        # Slots held for statements in flight that may hand a row over (Handoff).
        self._reserved: dict[str, int] = {d.name: 0 for d in duties}
        # Duties that left a row to the claims because every slot was taken: nothing is
        # handed to them until a claim comes back short (that backlog is drained), or a
        # row that came later would take the next free slot before rows that wait
        # (claims take the oldest first). In a burst it did: p99 7 s against 3 s.
        self._backlog: set[str] = set()
        self.lease = res.settings.lease_seconds
        # Duties held back by others (by name), and which of them each downstream duty concerns.
        self._pressure = {d.name: Backpressure(tuple(d.downstream), d.downstream_limit)
                          for d in duties if isinstance(d, Paced) and d.downstream}
        self._follows_backlog = {d.name: d for d in duties if isinstance(d, FollowsBacklog)}
        self._watching: dict[str, list[tuple[str, Backpressure]]] = {}
        for name, pressure in self._pressure.items():
            for below in pressure.downstream:
                self._watching.setdefault(below, []).append((name, pressure))

    def reserve(self, duty: str) -> str | None:
        """A free slot of ``duty`` for a row a statement is about to lease to it; None
        when this process has no such duty, it is full, or stopping. Synchronous: two
        callers cannot both take the last slot."""
        d = self._by_name.get(duty)
        if d is None or self._stopping.is_set() or duty in self._backlog:
            return None
        if self._free(d) <= 0:
            # A row waits for a slot: a duty whose limit follows its backlog (the
            # storer's) raises it, as after a claim that filled every free slot.
            follows = self._follows_backlog.get(duty)
            if follows is not None:
                follows.more_waiting()
            if self._free(d) <= 0:
                self._backlog.add(duty)
                return None
        self._reserved[duty] += 1
        return d.holder

    def _free(self, duty: Duty) -> int:
        """Slots of ``duty`` neither running nor reserved (its concurrency may follow its backlog)."""
        return duty.concurrency - len(self._running[duty.name]) - self._reserved[duty.name]

    def give_back(self, duty: str) -> None:
        self._reserved[duty] -= 1

    def adopt(self, duty: str, row_id: str) -> None:
        """Run ``duty`` on ``row_id``, which a statement has just leased to its holder, in
        the slot reserved for it. Once stopping, nothing starts (stop() waits only for
        tasks that exist): the row goes back with the release, or its lease lapses."""
        self._reserved[duty] -= 1
        if self._stopping.is_set():
            return
        self._start(self._by_name[duty], row_id)

    def _start(self, duty: Duty, row_id: str) -> None:
        running = self._running[duty.name]
        task = asyncio.create_task(self._run_one(duty, row_id), name=f"{duty.name}:{row_id}")
        running.add(task)
        task.add_done_callback(running.discard)

    async def start(self) -> None:
        self.res.handoff = self
        for duty in self.duties:
            self._loops.append(asyncio.create_task(self._loop(duty), name=f"duty:{duty.name}"))
        self._loops.append(asyncio.create_task(self._renew_leases(), name="leases"))
        log.info("workers.started", worker=self.res.worker_id, duties=[d.name for d in self.duties])

    async def stop(self, grace: float) -> None:
        """Stop claiming; let running work finish for ``grace`` seconds; release the rest.

        ``_stopping`` is set before the running tasks are gathered, and a claim that
        returns after that starts nothing (see ``_loop``), so every task that runs is
        in the set waited for here; a row whose task outlives even its cancellation
        keeps its lease (it lapses by itself) instead of being handed to another worker
        while it still runs.
        """
        self._stopping.set()
        self.res.handoff = None
        self.res.pacer.stop()  # resting duties end their rests now (their work is done)
        self.res.notifications.kick()
        running = [t for tasks in self._running.values() for t in tasks]
        if running:
            _, pending = await asyncio.wait(running, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=CANCEL_WAIT_SECONDS)
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._release_all()
        log.info("workers.stopped", worker=self.res.worker_id)

    def release_plan(self) -> list[tuple[str, list[str], list[str]]]:
        """(table, holders, rows kept) for each leased table: every row this process's
        duties hold goes back, except rows whose task is still running: those keep their
        lease until it lapses."""
        holders = [d.holder for d in self.duties]
        return [(table, holders, sorted(row_id for row_id, _ in self._held[table])) for table in leases.LEASED_TABLES]

    async def _release_all(self) -> None:
        try:
            for duty in self.duties:
                # A duty whose claim already changed its rows (the submitter marks them
                # as being sent) undoes that for rows it never started working on.
                if isinstance(duty, UndoesUnsent):
                    await duty.release_unsent()
            for table, holders, keep in self.release_plan():  # one table per transaction
                await leases.release(self.res.engine, table, holders, keep)
        except Exception as exc:  # noqa: BLE001  the database may be gone; leases lapse on their own
            log.warning("workers.release_failed", error=type(exc).__name__)

    async def _loop(self, duty: Duty) -> None:
        running = self._running[duty.name]
        poll = self.res.settings.poll_interval_seconds
        pressure = self._pressure.get(duty.name)
        watching = self._watching.get(duty.name, [])
        while not self._stopping.is_set():
            free = self._free(duty)
            if pressure is not None and free > 0:
                free = pressure.room(free, time.monotonic())
            claimed: list[str] = []
            if free > 0:
                try:
                    claimed = await duty.claim(free)
                except Exception as exc:  # noqa: BLE001  database down: wait and try again
                    log.warning("duty.claim_failed", duty=duty.name, error=type(exc).__name__)
                    await asyncio.sleep(min(poll * 2, 2.0))
                    continue
            if pressure is not None:
                pressure.took(len(claimed), time.monotonic())
            for _, above in watching:
                above.claimed(duty.name, free, len(claimed), time.monotonic())
            if self._stopping.is_set():
                # stop() began while this claim was in flight: it waits only for tasks
                # that exist, so start nothing; the rows go back with _release_all.
                return
            if free > 0 and len(claimed) < free:
                self._backlog.discard(duty.name)  # drained: rows may be handed over again
            for row_id in claimed:
                self._start(duty, row_id)
            if running and len(running) >= duty.concurrency:
                # Full: wait for a slot rather than for news. The concurrency is read
                # again after the claim: a duty whose limit follows its backlog (the
                # storer's) has just raised it when the claim filled every free slot,
                # and then claims the rest of the backlog at once instead of after a
                # copy in flight ends (a steady trickle of one job per wake-up filled
                # the one free slot each time, and the next job waited for a copy).
                await asyncio.wait(set(running), return_when=asyncio.FIRST_COMPLETED)
            elif not claimed:
                # Held back, it looks again soon: its window moves on by itself.
                await self.res.notifications.wait_for_work(
                    duty.name, min(poll, 0.1) if pressure is not None and pressure.holding else poll)

    async def _run_one(self, duty: Duty, row_id: str) -> None:
        # This runs in a task of its own: every line logged while the row is worked on names it.
        key = {"jobs": "job_id", "deliveries": "delivery_id"}.get(duty.table, "batch")
        structlog.contextvars.bind_contextvars(duty=duty.name, **{key: row_id})
        # Duties on other tables (erasures, the retention sweep) hold no renewable lease.
        held, claim = self._held.setdefault(duty.table, set()), (row_id, duty.holder)
        held.add(claim)  # before any await: stop() and renewals must see it
        watching = self._watching.get(duty.name, [])
        for _, above in watching:
            above.began(duty.name, row_id, time.monotonic())
        try:
            await duty.run(row_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The duty handles expected failures; this is a bug or an outage. The lease
            # lapses and the row is retried, so nothing is lost.
            log.exception("duty.crashed", duty=duty.name, row_id=row_id, error=type(exc).__name__)
        finally:
            held.discard(claim)
            for name, above in watching:
                above.ended(duty.name, row_id, time.monotonic())
                if above.holding:  # room downstream: the held duty looks again now
                    self.res.notifications.kick(name)

    async def _renew_leases(self) -> None:
        """Renew every lease this process holds: one statement per table, each its own
        transaction, so renewal never holds a lock on one table while waiting for
        another (it used to renew jobs then deliveries in one transaction, while the
        deliverer locked a delivery then its job: a deadlock)."""
        lease = self.res.settings.lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            for table in leases.LEASED_TABLES:
                if not self._held[table]:
                    continue
                try:
                    await leases.renew(self.res.engine, table, list(self._held[table]), lease)
                except Exception as exc:  # noqa: BLE001  a failed renewal is retried next tick
                    log.warning("workers.renew_failed", table=table, error=type(exc).__name__)
