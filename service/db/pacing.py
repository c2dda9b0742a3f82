"""Pacing of background batches (bulk actions, the retention sweep, the eraser) so they
yield the database to the hot paths (the API, the receiver, the pipeline).

One ``Pacer`` per process, held by the resources: every background batch runs inside
``async with pacer.batch():``. The batches of all lifecycle work in the process take
turns (one at a time), and after a batch that took ``t`` seconds the pacer stays closed
for ``factor * t`` more, so together they hold at most ``1 / (1 + factor)`` of the
wall clock (a half by default) however many of them are due. The pause follows the
batch's own duration, so on a busy machine, where the same batch takes longer, the
background work slows down with it instead of taking a fixed share of a scarce CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator


class Pacer:
    def __init__(self, factor: float) -> None:
        if factor < 0:
            raise ValueError("the pause factor must be >= 0")
        self.factor = factor
        self._turn = asyncio.Lock()
        self.busy_seconds = 0.0  # time spent inside batches (tests and benchmarks read it)
        self.paused_seconds = 0.0

    @contextlib.asynccontextmanager
    async def batch(self, factor: float | None = None) -> AsyncIterator[None]:
        """One background batch: waits for its turn, runs, then keeps the turn for the
        pause (``factor`` times the batch's duration; the pacer's own factor if None). A
        batch that raises gives the turn back at once (nothing to pace)."""
        factor = self.factor if factor is None else factor
        if factor < 0:
            raise ValueError("the pause factor must be >= 0")
        async with self._turn:
            started = time.monotonic()
            yield
            took = time.monotonic() - started
            self.busy_seconds += took
            pause = took * factor
            self.paused_seconds += pause
            await asyncio.sleep(pause)
