"""The retention sweep: jobs completed longer ago than the retention period are deleted
like a ``DELETE`` (``deleted_reason`` "retention"); the eraser then erases them in
batches.

The period is the owner's own ``retention_days`` (``owners set NAME --retention-days N``)
or else ``OUTPUT_RETENTION_DAYS``; with neither, jobs are kept forever.
Each sweep marks at most ``RETENTION_BATCH_SIZE`` jobs per transaction and stops after
a bounded number of batches, so it never holds many row locks or runs long.
"""

from __future__ import annotations

import time

import structlog

from service.db import deletion
from service.observability import metrics
from service.resources import Resources
from service.work.runner import holder_for

log = structlog.get_logger(__name__)

MAX_BATCHES_PER_SWEEP = 20


class Retention:
    """A periodic duty: ``claim`` yields one sweep token when a sweep is due."""

    name = "retention"
    table = "sweeps"
    concurrency = 1

    def __init__(self, res: Resources) -> None:
        self.res = res
        self.holder = holder_for(res, self.name)  # claims no row: the runner's bookkeeping only
        self._last = float("-inf")

    async def claim(self, limit: int) -> list[str]:
        if time.monotonic() - self._last < self.res.settings.retention_interval_seconds:
            return []
        self._last = time.monotonic()
        return ["sweep"]

    async def run(self, _token: str) -> None:
        total = await self.sweep()
        if total >= MAX_BATCHES_PER_SWEEP * self.res.settings.retention_batch_size:
            self._last = float("-inf")  # more is due: sweep again at once, in fresh transactions
        if total:
            log.info("retention.swept", jobs=total)

    async def sweep(self) -> int:
        """Mark every job past retention deleted, batch by batch; returns how many."""
        days = self.res.settings.output_retention_days
        shortest = await deletion.shortest_retention(self.res.engine, days)
        if shortest is None:
            return 0  # no default and no owner with a retention of its own: keep everything
        limit = self.res.settings.retention_batch_size
        total = 0
        for _ in range(MAX_BATCHES_PER_SWEEP):
            # Each batch is its own short transaction, paced with the eraser's and the
            # bulk actions' batches (service/domain/pacing.py): the pause comes after the commit.
            async with self.res.pacer.batch(), self.res.engine.begin() as conn:
                ids = await deletion.past_retention(conn, days, shortest, limit)
                marked = await deletion.mark_deleted(conn, ids, "retention", None)
            total += len(marked)
            metrics.RETENTION_DELETED.inc(len(marked))
            if len(ids) < limit:
                break
        if total:
            self.res.notifications.kick()
        return total
