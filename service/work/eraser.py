"""Erase deleted jobs: every S3 object (outputs and thumbnails), then the job's input,
metadata, webhook and callback bodies and event details, leaving a tombstone.

A deletion (``DELETE /v1/jobs/{id}``, a bulk delete or the retention sweep) marks the job
``deleted_at`` and inserts its ``erasures`` row in one statement (queries.MARK_DELETED).
This duty claims those rows in batches, so one DeleteObjects call serves up to 1,000
keys, and works a batch in three steps:

1. read the batch's object keys;
2. delete them from S3 (a key already gone counts as deleted, so a repeat is harmless);
3. one transaction erases the rows and removes the duty rows.

A crash anywhere (even ``kill -9`` between 2 and 3) leaves the duty rows due: their lease
lapses, another claim repeats the batch, and step 3 finishes it. No new object can
appear once ``deleted_at`` is committed: the storer checks it under a row lock before it
records an object, and deletes what it uploaded for a deleted job itself.
"""

from __future__ import annotations

import uuid

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from service.clients.storage import StorageError
from service.db import queries
from service.db.engine import one_statement
from service.db.jobs import id_list
from service.db.pacing import Turn
from service.domain.states import TERMINAL
from service.observability import metrics
from service.resources import Resources
from service.work.runner import claim_rows, holder_for

log = structlog.get_logger(__name__)

TERMINAL_VALUES = sorted(s.value for s in TERMINAL)


async def mark_deleted(conn: AsyncConnection, ids: list[str], reason: str, owner: str | None) -> list[str]:
    """Tombstone ``ids`` (terminal jobs of ``owner``; any owner when None) and queue their
    erasure, in the caller's transaction; returns the ids newly marked."""
    if not ids:
        return []
    marked: list[str] = (await conn.execute(queries.MARK_DELETED, {
        "ids": id_list(ids), "reason": reason, "terminal": TERMINAL_VALUES, "owner": owner})).scalar_one()
    if marked:
        await conn.execute(queries.NOTIFY, {"channel": queries.CHANNEL_WORK, "payload": "erase"})
    return marked


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
            if not await claim_rows(self.res, queries.CLAIM_ERASURES, self.batch_size, holder=token, lease=self.lease):
                break
            tokens.append(token)
        return tokens

    async def run(self, token: str) -> None:
        # Background work yields to the hot paths: batches of every lifecycle duty take
        # turns and rest in proportion to what they took (service/db/pacing.py;
        # tests/benchmarks/bench_lifecycle.py retention measures the effect).
        async with self.res.pacer.batch() as turn:
            await self._erase(token, turn)

    async def _erase(self, token: str, turn: Turn) -> None:
        res = self.res
        # The batch's ids and keys travel as arrays and one string, never as rows or lists
        # of parameters: this runs in serve's event loop, beside the receiver.
        async with one_statement(res.engine) as conn:
            await conn.execute(queries.EXTEND_ERASURE_LEASE, {"token": token, "lease": self.lease})
            objects = (await conn.execute(queries.ERASURE_OBJECTS, {"token": token})).one()
        keys: list[str] = objects.keys
        try:
            await res.storage.delete_keys(keys)
        except StorageError as exc:
            async with res.engine.begin() as conn:
                await conn.execute(queries.RETRY_ERASURES, {"token": token, "error": exc.message[:500], "delay": 30})
            log.warning("erasure.storage_failed", token=token, error=exc.message[:200])
            # Its time (up to S3's timeout) says nothing of the work: 30 x it would stall
            # every lifecycle batch of the process for minutes.
            turn.rest = False
            return
        async with res.engine.begin() as conn:
            ids = id_list((await conn.execute(queries.ERASE_LOCK_JOBS, {"token": token})).scalar_one())
            for statement in queries.ERASE_STATEMENTS:
                await conn.execute(statement, {"ids": ids})
            done: list[str] = (await conn.execute(queries.FINISH_ERASURES, {"token": token, "ids": ids})).scalar_one()
        erased = set(done)
        size = sum(b for j, b in zip(objects.job_ids, objects.job_bytes, strict=True) if j in erased)
        metrics.observe_erasure(len(done), size, len(keys))
        log.info("erasure.done", jobs=len(done), objects=len(keys), bytes=size)
