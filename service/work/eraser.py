"""Erase deleted jobs: every S3 object (outputs and thumbnails, recorded or found under the
job's key prefix), then the job's input, metadata, provider error text, callback URLs,
webhook and callback bodies and event details, leaving a tombstone.

A deletion (``DELETE /v1/jobs/{id}``, a bulk delete or the retention sweep) marks the job
``deleted_at`` and inserts its ``erasures`` row in one statement (service/db/deletion.py).
This duty claims those rows in batches, so one DeleteObjects call serves up to 1,000
keys, and works a batch in three steps:

1. read the batch's object keys, and list the key prefixes of jobs the storer worked on;
2. delete them from S3 (a key already gone counts as deleted, so a repeat is harmless);
3. one transaction erases the rows and removes the duty rows.

A crash anywhere (even ``kill -9`` between 2 and 3) leaves the duty rows due: their lease
lapses, another claim repeats the batch, and step 3 finishes it. No new object can
appear once ``deleted_at`` is committed: the storer checks it under a row lock before it
records an object, and deletes what it uploaded for a deleted job itself.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import structlog

from service.clients.storage import StorageError
from service.db import deletion, leases
from service.domain.pacing import Turn
from service.observability import metrics
from service.observability.tracing import job_attributes, job_span
from service.resources import Resources
from service.work.runner import holder_for

log = structlog.get_logger(__name__)

LIST_CONCURRENCY = 4  # prefix listings at once, of the S3 thread pool's threads


class Eraser:
    """The erasure duty. ``claim`` takes one batch of erasure rows per free slot and
    returns its token; ``run`` erases that batch."""

    name = "erase"
    table = "erasures"

    def __init__(self, res: Resources) -> None:
        self.res = res
        self.holder = holder_for(res, self.name)  # its rows carry a token per batch instead
        self.concurrency = res.settings.erase_concurrency
        self.batch_size = res.settings.erase_batch_size
        # Erasure is idempotent, so the lease is generous rather than renewed: a lapse only
        # costs a second pass over the same batch.
        self.lease = max(60.0, res.settings.lease_seconds * 4)

    async def claim(self, limit: int) -> list[str]:
        tokens = []
        for _ in range(limit):
            token = f"{self.res.worker_id}/{uuid.uuid4().hex[:12]}"
            if not await leases.claim_erasures(self.res.engine, self.batch_size, token=token, lease=self.lease):
                break
            tokens.append(token)
        return tokens

    async def run(self, token: str) -> None:
        # Background work yields to the hot paths: batches of every lifecycle duty take
        # turns and rest in proportion to what they took (service/domain/pacing.py;
        # tests/benchmarks/bench_lifecycle.py retention measures the effect).
        async with self.res.pacer.batch() as turn:
            await self._erase(token, turn)

    async def _erase(self, token: str, turn: Turn) -> None:
        res = self.res
        began = time.time_ns()
        # The batch's ids and keys travel as arrays and one string, never as rows or lists
        # of parameters: this runs in serve's event loop, beside the receiver.
        objects = await deletion.erasure_objects(res.engine, token, self.lease)
        try:
            keys = sorted(set(objects.keys) | set(await self._under_prefixes(objects.stored_ids)))
            await res.storage.delete_keys(keys)
        except StorageError as exc:
            await deletion.retry_erasures(res.engine, token, exc.message[:500], 30)
            log.warning("erasure.storage_failed", token=token, error=exc.message[:200])
            # Its time (up to S3's timeout) says nothing of the work: 30 x it would stall
            # every lifecycle batch of the process for minutes.
            turn.rest = False
            return
        done = await deletion.erase_batch(res.engine, token)
        size = sum(b for j, b in zip(objects.job_ids, objects.job_bytes, strict=True) if j in done)
        metrics.observe_erasure(len(done), size, len(keys))
        log.info("erasure.done", jobs=len(done), objects=len(keys), bytes=size)
        self._trace(done, began, len(done))

    async def _under_prefixes(self, job_ids: list[str]) -> list[str]:
        """Every object under these jobs' key prefixes (``S3_PREFIX`` + id + ``/``): an
        upload finished before its row was written (a store retried after a crash) is
        recorded nowhere else. Listed a few at a time (the S3 threads are shared)."""
        prefix = self.res.settings.s3_prefix
        found: list[str] = []
        for start in range(0, len(job_ids), LIST_CONCURRENCY):
            pages = await asyncio.gather(*(self.res.storage.list_keys(f"{prefix}{job_id}/")
                                           for job_id in job_ids[start : start + LIST_CONCURRENCY]))
            found += [key for page in pages for key in page]
        return found

    def _trace(self, done: dict[str, str | None], began: int, batch: int) -> None:
        """Each erased job's ``job.erase`` span, in its own trace, covering its batch. Only
        when spans are exported: without, a batch of 1,000 would make 1,000 spans nobody sees."""
        if not self.res.tracing.exporting:
            return
        for job_id, traceparent in done.items():
            with job_span(self.res.tracing, "job.erase", traceparent, start_time=began,
                          attributes={**job_attributes(job_id), "erase.batch_jobs": batch}):
                pass
