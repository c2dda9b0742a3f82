"""Held reservations past their task's deadline are released.

A job canceled or timed out after its task was sent upstream keeps its reservation
(service/db/ledger.py) while the provider may still make the task. Its own webhook
settles it (service/db/news.py); when nothing was heard by the task's deadline (the
job's ``deadline_at``, or the send plus JOB_DEADLINE_SECONDS when the submit's answer
never came), this sweep asks the provider once more (a lost webhook must not make the
owner's spend count less than the provider billed) and then releases the rest.
"""

from __future__ import annotations

import time

import structlog

from service.db import ledger, news
from service.domain.errors import ProviderError
from service.resources import Resources
from service.work.runner import holder_for

log = structlog.get_logger(__name__)

BATCH = 100


class HeldReservations:
    """A periodic duty: ``claim`` yields one sweep token every RECONCILE_AFTER_SECONDS."""

    name = "holds"
    table = "sweeps"
    concurrency = 1

    def __init__(self, res: Resources) -> None:
        self.res = res
        self.holder = holder_for(res, self.name)  # claims no row: the runner's bookkeeping only
        self._last = float("-inf")

    async def claim(self, limit: int) -> list[str]:
        if time.monotonic() - self._last < self.res.settings.reconcile_after_seconds:
            return []
        self._last = time.monotonic()
        return ["sweep"]

    async def run(self, _token: str) -> None:
        expired = await ledger.expired_holds(self.res.engine, self.res.settings.job_deadline_seconds, BATCH)
        for job_id, task_id in expired:
            if task_id:
                await self._last_look(job_id, task_id)
        await ledger.release_held(self.res.engine, [job_id for job_id, _ in expired])
        if len(expired) == BATCH:
            self._last = float("-inf")  # more are due: sweep again at once
        if expired:
            log.info("holds.released", jobs=len(expired))

    async def _last_look(self, job_id: str, task_id: str) -> None:
        """The task's result, through the one path for provider news: a completion there
        spends (a late result), anything else leaves the release to the sweep."""
        try:
            prediction = await self.res.wavespeed.result(task_id)
        except ProviderError as exc:
            log.warning("holds.provider_error", job_id=job_id, task_id=task_id, http_status=exc.http_status)
            return
        item = news.plan(job_id, prediction, source="reconcile",
                         reconcile_after=self.res.settings.reconcile_after_seconds)
        async with self.res.engine.begin() as conn:
            await news.apply_one(conn, item)
