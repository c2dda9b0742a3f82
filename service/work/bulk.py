"""Runs a bulk action (``POST /v1/jobs/bulk``, the history page's bulk form,
``wavespeed-jobs bulk``): the matching, then the action batch by batch, each batch its
own transaction and its own turn of the process's pacer (service/domain/pacing.py), so no
row lock is held for longer than one batch and the API keeps answering while 10,000 jobs
are canceled. What a batch does, and the bound on the matching, are service/db/bulk.py's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from contextlib import AbstractAsyncContextManager

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db import bulk
from service.db.bulk import BulkRequest, BulkResult
from service.db.engine import one_statement
from service.domain.pacing import Pacer, Turn, spread_factor
from service.observability.tracing import Tracing, format_traceparent


def _transaction(engine: AsyncEngine) -> AbstractAsyncContextManager[AsyncConnection]:
    return engine.begin()


async def run_bulk(engine: AsyncEngine, owner: str, request: BulkRequest, batch_size: int, pacer: Pacer,
                   pause_factor: float | None = None, target_seconds: float = 0.0,
                   tracing: Tracing | None = None) -> BulkResult:
    """Match, check the bound, then act batch by batch, each batch its own transaction
    paced by ``pacer``: it rests up to ``pause_factor`` times what the batch took, as much
    as still lets the bulk end ``target_seconds`` after it began (``spread_factor``), so
    the API keeps most of the database and of its process; the answer of POST /v1/jobs/bulk.
    A retried job's trace begins at a ``job.admit`` span of ``tracing``, a child of the
    bulk's own context."""
    tracing = tracing or Tracing.off()
    started = dt.datetime.now(dt.UTC)
    began = time.monotonic()
    most = pacer.factor if pause_factor is None else pause_factor
    # The matching is the bulk's first batch: it holds Postgres for as long as one (~10 ms
    # for 10,000 ids) and right before the first action batch it made the bulk's start the
    # slowest moment of the API's probe in most rounds (bench_lifecycle bulk).
    # Each batch enters the pacer at factor 1 (at most 1): after another batch (a duty's,
    # in a process that also runs them) it waits that batch's duration, not up to 20 times
    # it; the rests that spread the bulk are its own, sized after each of its batches
    # (turn.factor), and time lost waiting for turns only shortens them.
    enter = min(1.0, most)
    affected, worked, batches = 0, 0.0, 1

    def pace(turn: Turn, done: int) -> None:
        """The rest after the ``done``-th batch (the matching is the first), by the target."""
        nonlocal worked
        now = time.monotonic()
        worked += now - turn.started
        turn.factor = spread_factor(most, target_seconds, now - began, worked, done, batches - done)

    # A dry run (the history page's preview) is only the matching: it answers at once
    # instead of queueing for a turn behind a duty's batch (an erasure's S3 call).
    matching: AbstractAsyncContextManager[Turn] = (
        contextlib.nullcontext(Turn(enter, rest=False, started=began)) if request.dry_run
        else pacer.batch(enter, who=owner))
    async with matching as turn, engine.begin() as conn:
        ids = await bulk.match(conn, owner, request.filter)
        batches += -(-len(ids) // batch_size)
        turn.rest = batches > 1
        pace(turn, 1)
    if not request.dry_run:
        # A cancel is one statement (FINISH_MANY), atomic by itself: on an autocommit
        # connection it is one round trip instead of three (BEGIN, it, COMMIT), each of
        # which costs serve's event loop a turn while API requests wait.
        connect = one_statement if request.action == "cancel" else _transaction
        for done in range(2, batches + 1):
            # No rest after the last batch: nothing of this bulk follows it, and the rest
            # would only hold back the caller's answer (up to 20 x ~45 ms for a batch of 1,000).
            part = ids[(done - 2) * batch_size : (done - 1) * batch_size]
            admits = [tracing.started("job.admit", {"job.owner": owner, "job.retry_of": old})
                      for old in part] if request.action == "retry" else []
            async with pacer.batch(enter, rest_after=done < batches, who=owner) as turn, connect(engine) as conn:
                traces = [format_traceparent(span.get_span_context()) for span in admits]
                affected += await bulk.act(conn, request.action, owner, part, traces)
                pace(turn, done)
            for span in admits:
                span.end()
    return {"object": "bulk_result", "action": request.action, "matched": len(ids), "affected": affected,
            "dry_run": request.dry_run, "started_at": started.isoformat().replace("+00:00", "Z")}
