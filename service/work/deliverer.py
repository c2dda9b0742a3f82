"""terminal job → callback delivered: sign, POST, retry on a schedule, record every try.

A delivery row is created by ``jobs.transition`` in the same transaction that makes the
job terminal, so a crash cannot lose it; this duty claims due rows (``FOR UPDATE SKIP
LOCKED`` + a lease, like jobs) and sends them, each in its own task, so one slow
endpoint holds only its own row.

* The body is built once, on the first attempt of a series, and frozen in the row: every
  retry sends the same bytes under the same ``webhook-id``. Output URLs in it are
  presigned for ``CALLBACK_URL_SECONDS`` (S3's maximum, 7 days) so they outlive the
  whole retry schedule.
* Only the signature's timestamp is fresh on each attempt (receivers reject old ones).
* Any 2xx is success. 410 Gone stops at once. Otherwise the next attempt waits the next
  entry of CALLBACK_RETRY_SCHEDULE (with jitter, so a backend coming back up is not hit
  by every delivery in the same second), or longer if a 429/503 says Retry-After; after
  the last entry the delivery is ``failed``.
* Every attempt becomes a ``callback.attempt`` job event; the job row mirrors the
  delivery's state and attempt count.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import structlog
from opentelemetry.trace import SpanKind

from service.clients import callbacks
from service.clients.callbacks import Attempt
from service.db import callback_secrets, deliveries, jobs, leases
from service.db.callback_secrets import OwnerSecrets
from service.db.deliveries import AttemptRead, AttemptRow
from service.db.engine import raw_statement
from service.domain.records import JobRecord, OutputRecord
from service.domain.serialize import iso, job_dict
from service.domain.states import DeliveryStatus
from service.observability import logs, metrics
from service.observability.tracing import TRACEPARENT, current_traceparent, job_attributes, job_span
from service.resources import Resources
from service.work.runner import holder_for

log = structlog.get_logger(__name__)

CALLBACK_URL_SECONDS = 604800  # S3's longest presigned URL: 7 days
JITTER = 0.2  # each delay is scaled by a random factor in [1 - JITTER, 1 + JITTER]
RETRY_AFTER_CAP = 86400.0  # a Retry-After longer than a day is read as a day
RETRY_AFTER_STATUSES = frozenset({429, 503})


def next_delay(
    attempts_done: int,
    delays: Sequence[float],
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds until the next attempt after ``attempts_done`` failed ones; None when the
    schedule is used up.

    ``delays[k]`` is the wait before attempt ``k + 1`` (``delays[0]`` before the first),
    so a schedule of n entries allows n attempts. ``retry_after`` (from a 429/503) can
    only push an attempt later, never earlier, and is capped at ``RETRY_AFTER_CAP``.
    """
    if attempts_done >= len(delays):
        return None
    factor = (rng or random).uniform(1 - JITTER, 1 + JITTER)
    delay = delays[attempts_done] * factor
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
    return delay


def outcome_of(attempt: Attempt, attempts_done: int, delays: Sequence[float], rng: random.Random | None = None
               ) -> tuple[DeliveryStatus, float | None, str | None]:
    """(delivery status after this attempt, seconds to the next one, why it failed)."""
    if attempt.ok:
        return DeliveryStatus.DELIVERED, None, None
    if attempt.status_code == 410:
        return DeliveryStatus.FAILED, None, "the endpoint answered 410 Gone: no more attempts"
    retry_after = attempt.retry_after if attempt.status_code in RETRY_AFTER_STATUSES else None
    delay = next_delay(attempts_done, delays, retry_after=retry_after, rng=rng)
    if delay is None:
        return DeliveryStatus.FAILED, None, f"no 2xx after {attempts_done} attempts (the retry schedule is used up)"
    return DeliveryStatus.PENDING, delay, None


class Deliverer:
    name = "deliver"
    table = "deliveries"

    def __init__(self, res: Resources, rng: random.Random | None = None) -> None:
        self.res = res
        self.holder = holder_for(res, self.name)
        self.concurrency = res.settings.callback_concurrency
        self._rng = rng or random.Random()

    async def claim(self, limit: int) -> list[str]:
        return await leases.claim_deliveries(self.res.engine, limit, holder=self.holder,
                                             lease=self.res.settings.lease_seconds)

    async def run(self, delivery_id: str) -> None:
        res = self.res
        prepared = await self._prepare(delivery_id)
        if prepared is None:
            return
        row, body, secrets = prepared
        # The attempt is a span of the job's trace; its context is the callback's
        # traceparent, so the backend's own tracing continues from it.
        attributes = {**job_attributes(row.job_id, row.owner), "delivery.id": row.id,
                      "callback.event_type": row.event_type, "callback.attempt": row.attempts + 1,
                      "server.address": urlsplit(row.url).hostname or ""}
        with job_span(res.tracing, "callback.attempt", row.traceparent, kind=SpanKind.CLIENT,
                      attributes=attributes) as span:
            attempt = await self._attempt(row, body.encode("utf-8"), secrets.signing)
            if attempt.status_code is not None:
                span.set_attribute("http.response.status_code", attempt.status_code)
            span.set_attribute("callback.outcome", await self._record(row, attempt, res.settings.retry_delays))

    async def _prepare(self, delivery_id: str) -> tuple[AttemptRow, str, OwnerSecrets] | None:
        """The delivery, its body (frozen now on a first attempt) and the secrets that sign
        it; None when there is nothing to send now. Statements that each commit by
        themselves: one round trip for the row, the secrets and (before a body is frozen)
        the job the body is built from; one more on a first attempt, to freeze it."""
        res, worker, delays = self.res, self.holder, self.res.settings.retry_delays
        async with raw_statement(res.engine) as raw:
            read = await deliveries.for_attempt(raw, delivery_id)
            if read is None:
                return None
            row = read.row
            if row.status != DeliveryStatus.PENDING or row.locked_by != worker:
                return None
            logs.bind_job(row.job_id, row.task_id)
            deferring = row.attempts == 0 and delays[0] > 0
            body = row.body or (None if deferring else await self._freeze(raw, read))
        if deferring:  # a schedule whose first entry waits (a transaction of its own)
            async with res.engine.begin() as conn:
                if await deliveries.defer_first_attempt(conn, row.id, worker, delays[0]):
                    return None
            if not body:
                async with raw_statement(res.engine) as raw:
                    body = await self._freeze(raw, read)
        if body is None:
            return None  # our lease was taken over while we built the body
        # Signed with the job owner's own secret (and, during a rotation's overlap, the
        # previous one too), so no owner's secret verifies another owner's callbacks.
        if row.has_secrets:
            secrets = callback_secrets.opened(row.secret, row.previous_secret, row.previous_live,
                                              row.previous_expires_at, res.sealer, res.callback_secret)
        else:  # the owner's first callback: its secret is made now
            async with res.engine.begin() as conn:
                secrets = await callback_secrets.current(conn, row.owner, res.sealer, res.callback_secret)
        return row, body, secrets

    async def _freeze(self, conn: asyncpg.Connection, read: AttemptRead) -> str | None:
        """Build the event body from the job as the delivery's read saw it (the job as it
        ended, or later) and store it (committed before the first attempt), so every retry
        of this series sends the same bytes."""
        res, row = self.res, read.row

        def presign(key: str) -> str:
            return res.storage.presign(key, CALLBACK_URL_SECONDS)

        body = event_body(row, read.job, read.outputs, presign)
        return body if await deliveries.freeze_body(conn, row.id, self.holder, body) else None

    async def _attempt(self, row: AttemptRow, body: bytes, signing: list[str]) -> Attempt:
        res = self.res
        headers = callbacks.signed_headers(signing, row.id, int(time.time()), body)
        traceparent = current_traceparent()  # the attempt's span (none for a job without a trace)
        if traceparent:
            headers[TRACEPARENT] = traceparent
        # The URL was checked at creation; the egress layer checks the address again as
        # it connects (DNS may have changed since), and connects only to what it checked.
        return await callbacks.send(res.egress.http, row.url, body, headers, res.settings.callback_timeout_seconds)

    async def _record(self, row: AttemptRow, attempt: Attempt, delays: Sequence[float]) -> str:
        """Record the attempt; returns its outcome (delivered, retrying, failed, lease_lost)."""
        res, worker = self.res, self.holder
        number = row.attempts + 1
        status, delay, failure = outcome_of(attempt, number, delays, self._rng)
        detail: dict[str, Any] = {
            "delivery_id": row.id,
            "event_type": row.event_type,
            "attempt": number,
            "status_code": attempt.status_code,
            "latency_ms": attempt.latency_ms,
            "error": attempt.error,
            "answer": attempt.answer,
            "outcome": "retrying" if status == DeliveryStatus.PENDING else status.value,
            "next_attempt_in": round(delay, 3) if delay is not None else None,
        }
        if attempt.retry_after is not None:
            detail["retry_after"] = attempt.retry_after
        closing = _closing_event(row, status, number, failure, attempt)
        async with raw_statement(res.engine) as raw:
            recorded = await deliveries.record_live(
                raw, row.id, row.job_id, worker, number=number, status=status, status_code=attempt.status_code,
                error=attempt.error, delay=delay, detail=detail, closing=closing)
        if recorded.deleted:
            moved = await self._record_deleted(row, attempt, number, status, delay, detail, closing)
        else:
            moved = recorded.moved
        if not moved:
            detail["outcome"] = "lease_lost"
        metrics.callback_attempt(detail["outcome"])
        log.info("callback.attempt", delivery_id=row.id, job_id=row.job_id, attempt=number,
                 http_status=attempt.status_code, latency_ms=attempt.latency_ms, outcome=detail["outcome"])
        return str(detail["outcome"])

    async def _record_deleted(self, row: AttemptRow, attempt: Attempt, number: int, status: DeliveryStatus,
                              delay: float | None, detail: dict[str, Any],
                              closing: tuple[str, dict[str, Any]] | None) -> bool:
        """Record an attempt of a deleted job's delivery: as RECORD_ATTEMPT does, and, once
        no callback of the job is pending, forget its callback URLs, looked at after the
        job's lock is taken. False when our lease lapsed (the attempt is logged)."""
        async with self.res.engine.begin() as conn:
            # Lock order (service/db/queries.py): the job first, then its delivery.
            await jobs.lock_job_id(conn, row.job_id)
            moved = await deliveries.record_attempt(conn, row.id, self.holder, number=number, status=status,
                                                    status_code=attempt.status_code, error=attempt.error, delay=delay)
            await jobs.add_event(conn, row.job_id, "callback.attempt",
                                 detail if moved else {**detail, "outcome": "lease_lost"})
            if not moved:
                return False
            await deliveries.mirror_on_job(conn, row.job_id, status, number)
            if status != DeliveryStatus.PENDING:
                await deliveries.forget_urls_if_deleted(conn, row.job_id)
            if closing is not None:
                await jobs.add_event(conn, row.job_id, *closing)
        return True


def event_body(row: AttemptRow, job: JobRecord, outputs: list[OutputRecord], presign: Callable[[str], str]) -> str:
    """The callback's body: the delivery's event with the job as the API shows it."""
    event = {"type": row.event_type, "timestamp": iso(row.created_at), "data": job_dict(job, outputs, presign)}
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def _closing_event(row: AttemptRow, status: DeliveryStatus, number: int, failure: str | None,
                   attempt: Attempt) -> tuple[str, dict[str, Any]] | None:
    """The event that ends a delivery's series (None while it goes on)."""
    if status == DeliveryStatus.DELIVERED:
        return "callback.delivered", {"delivery_id": row.id, "event_type": row.event_type, "attempts": number}
    if status == DeliveryStatus.FAILED:
        return "callback.failed", {"delivery_id": row.id, "event_type": row.event_type, "attempts": number,
                                   "reason": failure, "last_error": attempt.error}
    return None
