"""submitted/processing without news for too long: ask the provider ourselves.

* A job with a task id: query its result; the result goes through ``news.apply``,
  exactly the path a webhook takes.
* A job whose submit answer was lost (no task id): look for its task in the provider's
  predictions list (same model, same input, created around our send time, not owned by
  another job). Exactly one candidate is adopted; none or several → wait for the job's
  own webhook. Once SUBMIT_LOST_DEADLINE_SECONDS pass: if the provider's list covered
  the whole window, showed every task's input and none matched, the task provably never
  existed (we died before the request left) and the job is sent now; otherwise it fails
  with a clear error rather than risk paying twice.
* A job past its deadline becomes ``timed_out`` (after one last look at its result).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db import jobs, news
from service.domain.errors import ProviderError
from service.domain.records import JobRecord
from service.domain.schemas import upstream_body
from service.domain.states import JobStatus
from service.observability import logs
from service.observability.tracing import job_attributes, job_span
from service.resources import Resources
from service.work.backoff import backoff
from service.work.runner import claim_jobs, holder_for
from service.work.submitter import Submitter

log = structlog.get_logger(__name__)

# A lost task was created between our "about to send" mark and the request's timeout;
# the margins cover clock skew between us and the provider. A narrow window keeps the
# listing short enough to be read completely even on a busy account.
SEARCH_BEFORE = dt.timedelta(minutes=1)
SEARCH_AFTER = dt.timedelta(minutes=3)
LIST_PAGES = 20
PAGE_SIZE = 100


def search_window(sent: dt.datetime, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The creation times to list for a send marked at ``sent``, read at ``now``.

    The window never reaches past ``now``: on a busy account tasks keep arriving, and a
    window open to the future grows between page reads (the newest come first, so later
    pages shift and repeat items), which leaves its total unreachable and the lost job
    failed at SUBMIT_LOST_DEADLINE_SECONDS although its task provably never existed
    (seen in the kill -9 fault scenario, whose deadline is 20 s). Closed at ``now``, the
    list is a fixed set. A lost task was created before we look (its request left before
    the sender died or timed out), so it is inside; a provider clock running ahead of ours
    by more than SUBMIT_LOST_DEADLINE_SECONDS - WAVESPEED_TIMEOUT_SECONDS could hide it
    only until the verdict, which with the defaults (600 s, 30 s) is far beyond the
    one-minute skew SEARCH_BEFORE already assumes."""
    return sent - SEARCH_BEFORE, min(sent + SEARCH_AFTER, now)


def list_complete(data: dict[str, Any], page_items: int, seen_ids: int) -> bool | None:
    """Whether the provider's list has been read to its end, judged only from the
    answer's own figures: True (proved complete), False (stop: it cannot be proved) or
    None (read the next page). A short page alone proves nothing: the documentation
    says "up to 100" per page, and a provider that caps lower would make every page
    look like the last one, "proving" a task absent that exists (paying twice)."""
    total = data.get("total")
    if isinstance(total, int) and not isinstance(total, bool):
        if seen_ids >= total:
            return True  # every task the provider counts has been seen (distinct ids)
        return None if page_items else False  # ran dry before the total: unproven
    echoed = data.get("page_size")
    if not isinstance(echoed, int) or isinstance(echoed, bool) or echoed != PAGE_SIZE:
        return False  # no figures to judge by, or it paged differently than asked
    return True if page_items < echoed else None


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def matches(job: JobRecord, item: dict[str, Any]) -> bool:
    """Could ``item`` (a prediction from the provider's list) be the task of ``job``?"""
    if item.get("model") not in (None, job.model):
        return False
    created = _parse_time(item.get("created_at"))
    sent = job.submit_sent_at
    if created is None or sent is None or not (sent - SEARCH_BEFORE <= created <= sent + SEARCH_AFTER):
        return False
    item_input = item.get("input")
    if isinstance(item_input, dict):
        expected = upstream_body(job.input)
        # A random seed (-1) may come back as the seed the provider picked.
        ignore = {"enable_sync_mode", "enable_base64_output"} | ({"seed"} if expected.get("seed") == -1 else set())
        return all(item_input.get(k) == v for k, v in expected.items() if k not in ignore)
    # The documented list shows no input: time and model alone are too weak to adopt on.
    return False


@dataclass(frozen=True)
class LostSearch:
    """What the provider's list says about a job whose submit answer was lost."""

    match: dict[str, Any] | None
    verified_absent: bool  # the whole window was listed, with inputs, and nothing matched


@dataclass
class ListReading:
    """The provider's list for one lost job, read page by page (no I/O here: the
    reconciler fetches each page and hands it in)."""

    job: JobRecord
    candidates: list[dict[str, Any]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    inputs_shown: bool = True
    complete: bool = False

    def read(self, data: dict[str, Any]) -> bool:
        """Take one page of the list; True when there is no point reading another."""
        items = [i for i in (data.get("items") or []) if isinstance(i, dict)]
        self.inputs_shown = self.inputs_shown and all(isinstance(i.get("input"), dict) for i in items)
        self.candidates += [i for i in items if isinstance(i.get("id"), str) and matches(self.job, i)]
        self.seen.update(i["id"] for i in items if isinstance(i.get("id"), str))
        verdict = list_complete(data, len(items), len(self.seen))
        if verdict is None:
            return False
        self.complete = verdict
        return True

    def verdict(self, owned: set[str]) -> LostSearch:
        """``owned``: the candidates' task ids some job already holds."""
        if not self.candidates:
            # Absence is proof only if we saw the whole window and could compare inputs.
            return LostSearch(match=None, verified_absent=self.complete and self.inputs_shown)
        free = [c for c in self.candidates if c["id"] not in owned]
        if len(free) != 1:
            # Two identical jobs sent in the same minutes cannot be told apart: wait for
            # the webhook (it names the job in its URL) rather than guess.
            return LostSearch(match=None, verified_absent=False)
        return LostSearch(match=free[0], verified_absent=False)


def lost_task_plan(search: LostSearch, lost_for: dt.timedelta, lost_deadline_seconds: float
                   ) -> Literal["adopt", "wait", "resend", "fail"]:
    """After searching for a lost submit's task: adopt the one match; before the
    deadline, wait (its own webhook may still come); after it, send again only if the
    provider's record proves the task was never created, else fail rather than risk
    paying twice."""
    if search.match is not None:
        return "adopt"
    if lost_for.total_seconds() <= lost_deadline_seconds:
        return "wait"
    return "resend" if search.verified_absent else "fail"


def next_check(reconcile_after: float, attempts: int) -> float:
    """When to ask again about a job still without news: doubling from
    RECONCILE_AFTER_SECONDS for the first five checks, never more than 15 minutes apart."""
    return min(reconcile_after * 2.0 ** min(max(attempts - 1, 0), 4), 900.0)


class Reconciler:
    name = "reconcile"
    table = "jobs"
    concurrency = 8

    def __init__(self, res: Resources) -> None:
        self.res = res
        self.holder = holder_for(res, self.name)

    async def claim(self, limit: int) -> list[str]:
        return await claim_jobs(self.res, [JobStatus.SUBMITTED.value, JobStatus.PROCESSING.value], limit,
                                holder=self.holder)

    async def run(self, job_id: str) -> None:
        res, worker = self.res, self.holder
        async with res.engine.connect() as conn:
            job = await jobs.get_job(conn, job_id)
        logs.bind_job(job_id, job.provider_task_id)
        if job.status not in (JobStatus.SUBMITTED, JobStatus.PROCESSING) or job.locked_by != worker:
            return
        attributes = {**job_attributes(job.id, job.owner, job.model, job.status), "job.attempt": job.attempts}
        with job_span(res.tracing, "job.reconcile", job.traceparent, attributes=attributes):
            await self._reconcile(job)

    async def _reconcile(self, job: JobRecord) -> None:
        """Ask the provider about a job without news, in its ``job.reconcile`` span."""
        res, worker, job_id = self.res, self.holder, job.id
        now = dt.datetime.now(dt.UTC)
        deadline = job.deadline_at or (job.created_at + dt.timedelta(seconds=res.settings.job_deadline_seconds))
        try:
            if job.provider_task_id is None:
                search = await self._find_lost_task(job)
                prediction = search.match
                plan = lost_task_plan(search, now - (job.submit_sent_at or job.created_at),
                                      res.settings.submit_lost_deadline_seconds)
                if plan in ("resend", "fail"):
                    await self._give_up_or_resend(job, resend=plan == "resend")
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

        applied = await self._settle(job_id, prediction, deadline, now)
        if applied is not None:
            # After the commit: this process's storer or deliverer starts on the job now,
            # not once the NOTIFY has come back through Postgres.
            for payload in news.work_wakes(applied):
                res.notifications.kick_for(payload)

    async def _settle(self, job_id: str, prediction: dict[str, Any] | None, deadline: dt.datetime,
                      now: dt.datetime) -> news.Result | None:
        """Apply what the provider said, or time the job out past its deadline, or look
        again later: one transaction, under the job's lock. Returns what was applied."""
        res, worker = self.res, self.holder
        async with res.engine.begin() as conn:
            locked = await jobs.lock_job(conn, job_id)
            if locked is None or locked.locked_by != worker:
                return None
            applied: news.Result | None = None
            outcome = "unchanged"
            if prediction is not None:
                applied = await self._apply(conn, job_id, prediction)
                outcome = applied.outcome
                await jobs.add_event(conn, job_id, "reconcile.checked",
                                     {"provider_status": prediction.get("status"), "outcome": outcome})
                trace.get_current_span().set_attribute("reconcile.outcome", outcome)
            if outcome == "advanced":
                return applied
            if now >= deadline:
                await jobs.transition(conn, locked, JobStatus.TIMED_OUT, reason="deadline", worker=worker,
                                      values={"error": "the provider did not finish the job before its deadline"})
                log.warning("job.timed_out", job_id=job_id, task_id=locked.provider_task_id)
                return applied
            await jobs.reschedule(conn, job_id, worker,
                                  next_check(res.settings.reconcile_after_seconds, locked.attempts))
            return applied

    async def _apply(self, conn: AsyncConnection, job_id: str, prediction: dict[str, Any]) -> news.Result:
        """The result goes through the one path for provider news, exactly as a webhook
        does, inside this transaction (which holds the job's row lock already)."""
        item = news.plan(job_id, prediction, source="reconcile",
                         reconcile_after=self.res.settings.reconcile_after_seconds)
        return await news.apply_one(conn, item)

    async def _give_up_or_resend(self, job: JobRecord, *, resend: bool) -> None:
        """The lost submit's deadline passed with no task found (lost_task_plan). With
        ``resend``, the provider's own record proves the task was never created (the
        request died with us before it went out): send the job now, which is not a blind
        re-send. Otherwise fail it rather than risk paying twice."""
        worker = self.holder
        async with self.res.engine.begin() as conn:
            if not resend:
                await jobs.fail(
                    conn, job,
                    "the submit answer was lost and no matching task was found at the provider; "
                    "the job was not sent again to avoid paying twice",
                    reason="reconcile.lost_submit", worker=worker,
                )
                return
            if not await jobs.clear_submit_marker(conn, job.id, worker, without_task=True):
                return
            await jobs.add_event(conn, job.id, "submit.resend", {
                "why": "the provider's complete list of tasks since the lost submit shows none for this job"})
        log.warning("submit.resend", job_id=job.id)
        async with self.res.engine.connect() as conn:
            fresh = await jobs.get_job(conn, job.id)
        await Submitter(self.res, holder=self.holder).send(fresh)

    async def _find_lost_task(self, job: JobRecord) -> LostSearch:
        """Search the provider's recent predictions for this job's task."""
        sent = job.submit_sent_at or job.created_at
        start, end = search_window(sent, dt.datetime.now(dt.UTC))
        after, before = start.isoformat(), end.isoformat()
        reading = ListReading(job)
        for page in range(1, LIST_PAGES + 1):
            data = await self.res.wavespeed.predictions(
                page=page, page_size=PAGE_SIZE, model=job.model, created_after=after, created_before=before
            )
            if reading.read(data):
                break
        owned: set[str] = set()
        if reading.candidates:
            async with self.res.engine.connect() as conn:
                owned = await jobs.owned_task_ids(conn, [c["id"] for c in reading.candidates])
        return reading.verdict(owned)
