"""Pacing of background batches (bulk actions, the retention sweep, the eraser) so they
yield the database to the hot paths (the API, the receiver, the pipeline).

One ``Pacer`` per process, held by the resources: every background batch runs inside
``async with pacer.batch():``. The batches of all lifecycle work in the process take
turns (one at a time), and after a batch that took ``t`` seconds it rests, and the next
one waits, ``factor * t`` more, so together they hold at most ``1 / (1 + factor)`` of the wall
clock however many of them are due. The pause follows the batch's own duration, so on a
busy machine, where the same batch takes longer, the background work slows down with it
instead of taking a fixed share of a scarce CPU.

Two paces share the turns: the duties' (retention, erasure: ``LIFECYCLE_PAUSE_FACTOR``,
30 by default, work nobody waits for) and a bulk action's (up to ``BULK_PAUSE_FACTOR``,
20, and no more than ends it ``BULK_TARGET_SECONDS`` after it began: an operator waits
for it; ``spread_factor``). The rest between two batches is the previous batch's duration
times the *smaller* of the two batches' factors: a bulk arriving during a retention
backlog runs at its own pace instead of waiting out the duties' long rests, and the
duties resume theirs once it is done.

Turns go round the participants, not the batches: each bulk names its owner, the duties
are one participant, and when the turn is free it goes to the waiting participant whose
last turn is the oldest. One owner's many bulks (or one bulk of 10,000 jobs) then delay
another owner's bulk by one batch per turn, not by all of theirs.

Why the duties rest so long: the hot paths' p99 moves with the *share of requests* that
meet background work, not with how long each batch is. Every background batch, however
short, adds 1-3 ms to a request that meets it on a machine whose cores Postgres shares;
once more than 1 % of requests meet one, the p99 is one of them. At factor 1 the
receiver's p99 during a retention backlog was 1.4-1.6 times idle whatever the batch
size, pace up to 3, or process layout; at 30 it was 0.97-1.06 (bench_lifecycle
retention, 2026-12-07, 9e96cdf; docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True)
class _Done:
    ended: float  # time.monotonic() at the batch's end
    took: float
    factor: float  # 0 when the batch asked for no rest after it


@dataclass
class Turn:
    """A batch's turn; ``rest = False`` inside the batch waives the rest after it (a batch
    whose S3 call failed and timed out: its duration says nothing about the work), and
    ``factor`` may be changed before it ends (a bulk sizing its rest to its target)."""

    factor: float
    rest: bool = True
    started: float = 0.0  # time.monotonic() when the turn began


class Pacer:
    def __init__(self, factor: float) -> None:
        if factor < 0:
            raise ValueError("the pause factor must be >= 0")
        self.factor = factor
        # No lock: every change of the state below happens between two awaits (one event
        # loop), so a cancelled task can never leave it half changed. Waiters wait on the
        # current event; each change sets it and starts a new one.
        self._changed = asyncio.Event()
        self._running = False
        self._last: _Done | None = None  # None: nothing to rest after (start, or a batch that failed)
        self._stopping = asyncio.Event()
        # Who waits for a turn (batches per participant), and when each last had one.
        self._waiting: Counter[str] = Counter()
        self._arrived: dict[str, int] = {}
        self._last_turn: dict[str, int] = {}
        self._turns = 0
        self.busy_seconds = 0.0  # time spent inside batches (tests and benchmarks read it)
        self.paused_seconds = 0.0  # rests taken after batches

    def _ready_at(self, factor: float) -> float:
        last = self._last
        return 0.0 if last is None else last.ended + last.took * min(last.factor, factor)

    def _next(self) -> str:
        """The waiting participant the free turn goes to: the one whose last turn is the
        oldest (never: first), then the one that has waited longest."""
        return min(self._waiting, key=lambda who: (self._last_turn.get(who, -1), self._arrived[who]))

    def _change(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def stop(self) -> None:
        """Shutting down: rests end now (a duty resting 30 x its batch would otherwise
        hold the shutdown for its whole grace period); no new batch waits for a turn."""
        self._stopping.set()
        self._change()

    async def _wait_for_turn(self, factor: float, who: str) -> None:
        """Until no batch runs, the last one's rest is over and ``who`` is next."""
        self._waiting[who] += 1
        self._arrived.setdefault(who, self._turns)
        try:
            while True:
                changed = self._changed
                if not self._running and self._next() == who:
                    wait = 0.0 if self._stopping.is_set() else self._ready_at(factor) - time.monotonic()
                    if wait <= 0:
                        return
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):  # or sooner, when a batch ends
                            await changed.wait()
                else:
                    await changed.wait()
        finally:
            self._waiting[who] -= 1
            if not self._waiting[who]:
                del self._waiting[who], self._arrived[who]
                self._change()  # another participant may be next now

    @contextlib.asynccontextmanager
    async def batch(self, factor: float | None = None, *, rest_after: bool = True, who: str = ""
                    ) -> AsyncIterator[Turn]:
        """One background batch: waits for its turn (no batch running, the rest owed to
        the last one over, and its participant ``who`` next in the rotation: a bulk's
        owner; "" for the duties), runs, then rests ``factor`` times its duration before
        it returns, so its caller claims no more work meanwhile. ``factor``: this batch's
        pace (the pacer's own if None). ``rest_after=False`` (a bulk's last batch: nothing
        of it follows, a rest would only hold back the caller's answer), ``turn.rest =
        False`` and a batch that raises leave no rest behind them."""
        factor = self.factor if factor is None else factor
        if factor < 0:
            raise ValueError("the pause factor must be >= 0")
        await self._wait_for_turn(factor, who)
        self._running = True  # no await since the check: the turn is this batch's
        self._last_turn[who], self._turns = self._turns, self._turns + 1
        started = time.monotonic()
        turn = Turn(factor, rest_after, started)
        done: _Done | None = None
        try:
            yield turn
            ended = time.monotonic()
            if turn.factor < 0:
                raise ValueError("the pause factor must be >= 0")
            done = _Done(ended, ended - started, turn.factor if turn.rest else 0.0)
        finally:
            self.busy_seconds += time.monotonic() - started
            self._running, self._last = False, done
            self._change()
        if done is not None and done.factor and not self._stopping.is_set():
            pause = done.took * done.factor
            self.paused_seconds += pause
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._stopping.wait()


def spread_factor(most: float, target: float, elapsed: float, worked: float, done: int, left: int) -> float:
    """The rest factor after a bulk's batch: as much as it can afford, up to ``most``, and
    still be done ``target`` seconds after it began.

    The p99 of requests served beside a bulk moves with the share of time the bulk's
    batches hold the database (see above), so the thinner it is spread the less the API
    feels it; but an operator waits for the answer. So a bulk rests ``most`` times each
    batch when that fits in ``target``, and less when it would not, never under once its
    batch (the API keeps at least half the time). ``elapsed``: seconds since the bulk
    began, the batch just done included; ``worked``: seconds inside its ``done`` batches;
    ``left``: batches still to come, each to be rested after but the last.
    ``target <= 0``: always ``most``."""
    if target <= 0 or left <= 0 or done <= 0 or worked <= 0:
        return most
    per_batch = worked / done
    spare = target - elapsed - per_batch * left  # the time left for this rest and left - 1 more
    return max(min(1.0, most), min(most, spare / (per_batch * left)))
