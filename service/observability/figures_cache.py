"""The database's figures of ``/metrics``, read at most once every METRICS_CACHE_SECONDS
per process, however many scrapes arrive.

Each read folds the job counts (a write) and runs a few statements, one more per owner
with METRICS_PER_OWNER (service/db/gauges.py). Prometheus servers scrape every 15-60 s
each, but a scrape storm (several Prometheus replicas, federation, a dashboard refreshing
``/metrics`` itself, a hostile client where the endpoint is reachable) would otherwise
cost the database a read per request. Scrapes within the interval get the last read;
scrapes that arrive while a read is running wait for that read instead of starting
their own. An interval of 0 reads at every scrape (still one read for concurrent ones).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from service.observability.metrics import DatabaseSnapshot, ReadDatabase

log = structlog.get_logger(__name__)
SCRAPE_TIMEOUT_SECONDS = 5.0


class FiguresCache:
    def __init__(self, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age = max_age
        self._clock = clock
        self._snap: DatabaseSnapshot | None = None
        self._read_at = 0.0
        self._reading: asyncio.Future[DatabaseSnapshot] | None = None

    async def get(self, read: ReadDatabase) -> DatabaseSnapshot:
        """The last figures if read less than ``max_age`` seconds ago, else ``read()``'s.
        A read that fails or takes longer than SCRAPE_TIMEOUT_SECONDS gives
        ``DatabaseSnapshot(ok=False)`` (``database_up 0``), kept for the interval too:
        a database that is down is not asked again by every scrape."""
        if self._snap is not None and self._clock() - self._read_at < self._max_age:
            return self._snap
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read(read))
        # shield: a scraper that hangs up does not cancel the read the others wait on.
        return await asyncio.shield(self._reading)

    async def _read(self, read: ReadDatabase) -> DatabaseSnapshot:
        started = self._clock()
        try:
            snap = await asyncio.wait_for(read(), timeout=SCRAPE_TIMEOUT_SECONDS)
        except Exception as exc:  # noqa: BLE001 - an outage is reported as a metric, not raised
            log.warning("metrics.database_failed", error=type(exc).__name__)
            snap = DatabaseSnapshot(ok=False)
        self._snap, self._read_at, self._reading = snap, started, None
        return snap
