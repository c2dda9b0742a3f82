"""submitted/processing without news for too long: ask the provider ourselves.

* A job with a task id: query its result; a finished result goes through
  ``jobs.apply_prediction``, exactly the path a webhook takes.
* A job whose submit answer was lost (no task id): look for its task in the provider's
  predictions list (same model, same input, created around our send time, not owned by
  another job). Exactly one candidate is adopted; none or several → wait for the job's
  own webhook, and fail with a clear error once SUBMIT_LOST_DEADLINE_SECONDS pass.
* A job past its deadline becomes ``timed_out`` (after one last look at its result).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import structlog
from sqlalchemy import select

from service import jobs, logs
from service.errors import Conflict, ProviderError
from service.resources import Resources
from service.schemas import upstream_body
from service.states import JobStatus
from service.work.runner import claim_jobs
from service.work.submitter import backoff

log = structlog.get_logger(__name__)

SEARCH_WINDOW = dt.timedelta(minutes=5)
LIST_PAGES = 5


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def matches(job: Any, item: dict[str, Any]) -> bool:
    """Could ``item`` (a prediction from the provider's list) be the task of ``job``?"""
    if item.get("model") not in (None, job.model):
        return False
    created = _parse_time(item.get("created_at"))
    sent = job.submit_sent_at
    if created is None or sent is None or not (sent - SEARCH_WINDOW <= created <= sent + SEARCH_WINDOW):
        return False
    item_input = item.get("input")
    if isinstance(item_input, dict):
        expected = upstream_body(job.input)
        # A random seed (-1) may come back as the seed the provider picked.
        ignore = {"enable_sync_mode", "enable_base64_output"} | ({"seed"} if expected.get("seed") == -1 else set())
        return all(item_input.get(k) == v for k, v in expected.items() if k not in ignore)
    # The documented list shows no input: time and model alone are too weak to adopt on.
    return False


class Reconciler:
    name = "reconcile"
    table = "jobs"
    concurrency = 8

    def __init__(self, res: Resources) -> None:
        self.res = res

    async def claim(self, limit: int) -> list[str]:
        return await claim_jobs(self.res, [JobStatus.SUBMITTED.value, JobStatus.PROCESSING.value], limit)

    def _next_check(self, attempts: int) -> float:
        base = self.res.settings.reconcile_after_seconds
        return min(base * 2.0 ** min(max(attempts - 1, 0), 4), 900.0)

    async def run(self, job_id: str) -> None:
        res, worker = self.res, self.res.worker_id
        async with res.engine.connect() as conn:
            job = await jobs.get_job(conn, job_id)
        logs.bind_job(job_id, job.provider_task_id)
        if job.status not in (JobStatus.SUBMITTED, JobStatus.PROCESSING) or job.locked_by != worker:
            return
        now = dt.datetime.now(dt.UTC)
        deadline = job.deadline_at or (job.created_at + dt.timedelta(seconds=res.settings.job_deadline_seconds))
        try:
            if job.provider_task_id is None:
                prediction = await self._find_lost_task(job)
                if prediction is None:
                    lost_for = now - (job.submit_sent_at or job.created_at)
                    if lost_for.total_seconds() > res.settings.submit_lost_deadline_seconds:
                        async with res.engine.begin() as conn:
                            await jobs.fail(
                                conn, job,
                                "the submit answer was lost and no matching task was found at the provider; "
                                "the job was not sent again to avoid paying twice",
                                reason="reconcile.lost_submit", worker=worker,
                            )
                        return
            else:
                prediction = await res.wavespeed.result(job.provider_task_id)
        except ProviderError as exc:
            log.warning("reconcile.provider_error", job_id=job_id, task_id=job.provider_task_id,
                        http_status=exc.http_status)
            prediction = None
            if now < deadline:
                async with res.engine.begin() as conn:
                    await jobs.add_event(conn, job_id, "reconcile.provider_error",
                                         {"http_status": exc.http_status, "error": exc.message[:300]})
                    await jobs.reschedule(conn, job_id, worker, backoff(job.attempts, base=5.0, cap=300.0))
                return

        async with res.engine.begin() as conn:
            locked = await jobs.lock_job(conn, job_id)
            if locked is None or locked.locked_by != worker:
                return
            outcome = "unchanged"
            if prediction is not None:
                try:
                    outcome = await jobs.apply_prediction(
                        conn, locked, prediction, source="reconcile",
                        reconcile_after=res.settings.reconcile_after_seconds,
                    )
                except Conflict:
                    outcome = "task_mismatch"
                await jobs.add_event(conn, job_id, "reconcile.checked",
                                     {"provider_status": prediction.get("status"), "outcome": outcome})
            if outcome == "advanced":
                return
            if now >= deadline:
                await jobs.transition(conn, locked, JobStatus.TIMED_OUT, reason="deadline", worker=worker,
                                      values={"error": "the provider did not finish the job before its deadline"})
                log.warning("job.timed_out", job_id=job_id, task_id=locked.provider_task_id)
                return
            await jobs.reschedule(conn, job_id, worker, self._next_check(locked.attempts))

    async def _find_lost_task(self, job: Any) -> dict[str, Any] | None:
        """Search the provider's recent predictions for this job's task."""
        sent = job.submit_sent_at or job.created_at
        after = (sent - SEARCH_WINDOW).isoformat()
        candidates: list[dict[str, Any]] = []
        for page in range(1, LIST_PAGES + 1):
            data = await self.res.wavespeed.predictions(page=page, page_size=100, model=job.model, created_after=after)
            items = data.get("items") or []
            candidates += [i for i in items if isinstance(i, dict) and isinstance(i.get("id"), str) and matches(job, i)]
            if len(items) < 100:
                break
        if not candidates:
            return None
        async with self.res.engine.connect() as conn:
            owned = {
                r.provider_task_id
                for r in await conn.execute(
                    select(jobs.jobs_t.c.provider_task_id).where(
                        jobs.jobs_t.c.provider_task_id.in_([c["id"] for c in candidates])
                    )
                )
            }
        free = [c for c in candidates if c["id"] not in owned]
        if len(free) != 1:
            # Two identical jobs sent in the same minutes cannot be told apart: wait for
            # the webhook (it names the job in its URL) rather than guess.
            return None
        return free[0]
