"""queued → submitted: send the job to the provider, exactly once.

The submit is not idempotent upstream. Before sending we commit ``submit_sent_at``; if
the answer is lost (timeout, dropped connection, or we crash), the job moves on to
``submitted`` without a task id and is recovered through its own webhook URL or the
provider's predictions list (service/work/reconciler.py) — never by sending again.
"""

from __future__ import annotations

from typing import Any

import structlog

from service.db import jobs, leases, submits
from service.db.engine import raw_statement
from service.domain.errors import ProviderError
from service.domain.records import JobRecord
from service.domain.schemas import upstream_body
from service.domain.states import JobStatus
from service.observability import logs, metrics
from service.observability.tracing import current_traceparent, job_attributes, job_span
from service.resources import Resources
from service.work.runner import holder_for
from service.work.submit_rules import (
    Accepted,
    AnswerLost,
    Rejected,
    RetryLater,
    after_marking,
    next_step,
    outcome_of_answer,
    outcome_of_error,
)

log = structlog.get_logger(__name__)

THROTTLE_RECHECK_SECONDS = 1.0  # a job waiting for the provider's limits looks again this soon


class Submitter:
    name = "submit"
    table = "jobs"
    # The duties that finish what a submit starts: while their work in this process is
    # past SUBMIT_DOWNSTREAM_LIMIT the runner gives the submitter fewer slots
    # (service/work/backpressure.py), so a job whose webhook came is not kept waiting
    # behind new submits.
    downstream = ("store", "deliver")

    def __init__(self, res: Resources, *, holder: str | None = None) -> None:
        """``holder``: the claim the caller holds, when another duty sends a job it
        claimed itself (the reconciler's verified re-send)."""
        self.res = res
        self.holder = holder or holder_for(res, self.name)
        self.concurrency = res.settings.submit_concurrency
        self.downstream_limit = res.settings.submit_downstream_limit
        self._capacity_ready = False
        # Jobs this process's claim marked as being sent: to be POSTed now. A marked job
        # not in here was marked by a worker that died, and is recovered instead.
        self._marked: set[str] = set()

    def webhook_url(self, job_id: str) -> str:
        return f"{self.res.settings.public_base_url}/webhooks/wavespeed/{job_id}"

    async def release_unsent(self) -> None:
        """On a graceful stop (Runner): the jobs this process's claim marked as being sent
        whose run never began go back to the queue unmarked (submits.unmark_unsent).
        ``run`` takes a job out of ``_marked`` before its first await, so each one left
        here was never POSTed; a job whose run began keeps its marker (it may be sent)."""
        if not self._marked:
            return
        await submits.unmark_unsent(self.res.engine, self._marked, self.holder)
        self._marked.clear()

    async def claim(self, limit: int) -> list[str]:
        """Queued jobs whose send began under a worker that died (recovered, never sent
        blindly), then fresh ones in fair order, each holding a provider slot
        (service/db/submits.py) and already marked as being sent."""
        res = self.res
        settings = res.settings
        if not self._capacity_ready:
            async with res.engine.begin() as conn:
                await submits.ensure_capacity(conn, max_in_flight=settings.provider_max_in_flight,
                                               max_per_minute=settings.provider_max_per_minute)
            self._capacity_ready = True
        # Sends begun under a worker that died: recovered (their task looked for), never re-sent blindly.
        lost = await leases.claim_lost_sends(res.engine, limit, holder=self.holder, lease=settings.lease_seconds)
        if len(lost) >= limit:
            return lost
        fresh = await submits.claim_submits(
            res.engine, self.holder, lease=settings.lease_seconds, limit=limit - len(lost),
            max_in_flight=settings.provider_max_in_flight, max_per_minute=settings.provider_max_per_minute,
        )
        self._marked.update(fresh)
        return lost + fresh

    async def _answer_lost(self, job_id: str, why: str) -> None:
        settings = self.res.settings
        async with self.res.engine.begin() as conn:
            job = await jobs.lock_job(conn, job_id)
            if job is None:
                return
            await jobs.add_event(conn, job_id, "submit.answer_lost", {"why": why})
            # Give the task's own webhook a chance before searching the provider's list.
            recover_in = min(settings.reconcile_after_seconds, 30.0)
            moved = await jobs.transition(
                conn, job, JobStatus.SUBMITTED, reason="submit.answer_lost", worker=self.holder,
                run_after_seconds=recover_in,
                values=jobs.sent_now(settings.job_deadline_seconds),
            )
            if not moved:  # already submitted (a verified re-send): the reconciler looks again
                await jobs.reschedule(conn, job_id, self.holder, recover_in)
        log.warning("submit.answer_lost", job_id=job_id, why=why)

    async def run(self, job_id: str) -> None:
        fresh = job_id in self._marked
        self._marked.discard(job_id)
        async with raw_statement(self.res.engine) as raw:  # one read: no BEGIN/ROLLBACK round trips
            job, _ = await jobs.held_job_with_outputs(raw, job_id)
        step = next_step(job, self.holder, marked_by_this_claim=fresh)
        if step == "post":
            await self._post(job)
        elif step == "recover":
            # A previous attempt sent the request and then died or lost the answer.
            await self._answer_lost(job_id, "a previous submit attempt did not record its answer")
        elif step == "send":
            await self.send(job)

    async def send(self, job: JobRecord) -> None:
        """Take a provider slot for a job already chosen, mark it as being sent, POST it
        and record the outcome. The caller holds the job's lease. Used by the reconciler
        for a submitted job whose task the provider verifiably never created."""
        res, worker, job_id = self.res, self.holder, job.id
        async with res.engine.begin() as conn:
            then = after_marking(await submits.mark_submit_sent(
                conn, job_id, worker,
                max_in_flight=res.settings.provider_max_in_flight,
                max_per_minute=res.settings.provider_max_per_minute,
            ))
            if then == "wait":
                await jobs.reschedule(conn, job_id, worker, THROTTLE_RECHECK_SECONDS, was_attempt=False)
        if then == "post":
            await self._post(job)

    async def _post(self, job: JobRecord) -> None:
        """POST a job marked as being sent, and record the outcome: the ``job.submit`` span
        of the job's trace, the request itself its ``provider.submit`` child (whose
        context goes upstream as ``traceparent``)."""
        attributes = {**job_attributes(job.id, job.owner, job.model, job.status), "job.attempt": job.attempts}
        with job_span(self.res.tracing, "job.submit", job.traceparent, attributes=attributes) as span:
            try:
                prediction = await self._send(job)
            except ProviderError as exc:
                outcome = outcome_of_error(exc, job.attempts)
                span.set_attribute("submit.outcome", type(outcome).__name__)
                if isinstance(outcome, AnswerLost):
                    await self._answer_lost(job.id, outcome.why)
                else:
                    await self._refused(job, outcome)
                return
            span.set_attribute("submit.outcome", "Accepted")
            await self._accepted(job, outcome_of_answer(prediction))

    async def _send(self, job: JobRecord) -> dict[str, Any]:
        with self.res.tracing.span("provider.submit", attributes={"http.request.method": "POST"}) as span:
            try:
                prediction = await self.res.wavespeed.submit(job.model, upstream_body(job.input),
                                                             self.webhook_url(job.id), current_traceparent())
            except ProviderError as exc:
                if exc.http_status is not None:
                    span.set_attribute("http.response.status_code", exc.http_status)
                raise
            span.set_attributes({"http.response.status_code": 200, "provider.task_id": str(prediction.get("id"))})
            return prediction

    async def _refused(self, job: JobRecord, outcome: Rejected | RetryLater) -> None:
        """The provider said no (or could not be reached): no task exists."""
        worker = self.holder
        async with self.res.engine.begin() as conn:
            # The request never created a task, so sending again later is safe.
            await jobs.clear_submit_marker(conn, job.id, worker)
            if isinstance(outcome, Rejected):
                await jobs.fail(conn, job, f"the provider rejected the job: {outcome.message}",
                                reason="submit.rejected", worker=worker)
                log.info("submit.rejected", job_id=job.id, http_status=outcome.http_status)
                return
            await jobs.add_event(conn, job.id, "submit.retry", {"http_status": outcome.http_status,
                                                                "error": outcome.message,
                                                                "retry_in": round(outcome.delay, 2)})
            await jobs.reschedule(conn, job.id, worker, outcome.delay, was_attempt=outcome.counts_as_attempt)
        log.info("submit.retry", job_id=job.id, http_status=outcome.http_status, delay=round(outcome.delay, 2))

    async def _accepted(self, job: JobRecord, accepted: Accepted) -> None:
        settings = self.res.settings
        task_id = accepted.task_id
        logs.bind_job(job.id, task_id)
        async with raw_statement(self.res.engine) as raw:
            moved = await submits.accepted(raw, job, self.holder, task_id, accepted.provider_status,
                                           reconcile_after=settings.reconcile_after_seconds,
                                           deadline=settings.job_deadline_seconds)
        if not moved:
            async with self.res.engine.begin() as conn:
                # The webhook beat the answer and already moved the job on, or this was a
                # re-send of a submitted job: keep its task id, and (re-send) hand it back.
                await jobs.keep_task_id(conn, job.id, task_id, accepted.provider_status)
                await jobs.reschedule(conn, job.id, self.holder, settings.reconcile_after_seconds)
                await jobs.add_event(conn, job.id, "submit.accepted", {"task_id": task_id})
        metrics.observe_submit(job.model, job.created_at)
        log.info("submit.accepted", job_id=job.id, task_id=task_id)
