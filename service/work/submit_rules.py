"""The submitter's decisions, on typed records and the provider's answers alone: what to
do with a claimed job, and what a submit's outcome means for it. service/work/submitter.py
does the I/O around them; tests/unit/test_submit_rules.py checks each one in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from service.domain.errors import ProviderError, SubmitOutcomeUnknown
from service.domain.records import JobRecord
from service.domain.states import JobStatus
from service.work.backoff import backoff

SUBMIT_BACKOFF_CAP = 120.0  # a provider outage is retried at least every two minutes

Step = Literal["skip", "post", "recover", "send"]


def next_step(job: JobRecord, holder: str, *, marked_by_this_claim: bool) -> Step:
    """What to do with a job this duty claimed, now that it is read back.

    skip: it moved on, or another claim holds it now (a webhook won the race).
    post: this process's claim marked it as being sent; the POST is still to go.
    recover: it was marked by an attempt that died or lost the answer: the task may
             exist, so it is never sent blindly (the reconciler looks for it).
    send: never marked: take a slot, mark it, then POST.
    """
    if job.status != JobStatus.QUEUED or job.locked_by != holder:
        return "skip"
    if job.submit_sent_at is not None:
        return "post" if marked_by_this_claim else "recover"
    return "send"


def after_marking(verdict: Literal["marked", "throttled", "gone"]) -> Literal["post", "wait", "drop"]:
    """After asking for a provider slot and rate token for one job: POST it, wait for
    capacity (the account's limits are reached: queue rather than collect 429s), or drop
    it (no longer ours to send)."""
    if verdict == "marked":
        return "post"
    return "wait" if verdict == "throttled" else "drop"


@dataclass(frozen=True)
class Accepted:
    """The provider created the task."""

    task_id: str
    # The task's status in the answer (usually "created"); None when the answer had none,
    # and the webhook or the reconciler brings it.
    provider_status: str | None


@dataclass(frozen=True)
class AnswerLost:
    """The request went out and its answer never came: the task may exist."""

    why: str


@dataclass(frozen=True)
class Rejected:
    """The provider refused the request itself (a 4xx other than 429): the job fails."""

    message: str  # the provider's words, quoted in the job's error
    http_status: int | None


@dataclass(frozen=True)
class RetryLater:
    """No task was created and asking again may work (429, 5xx, unreachable)."""

    delay: float
    # A refusal that says when to come back (429 + Retry-After) is waiting our turn,
    # not a failed try: it must not grow the backoff of later 5xx retries.
    counts_as_attempt: bool
    message: str
    http_status: int | None


Outcome = Accepted | AnswerLost | Rejected | RetryLater


def outcome_of_answer(prediction: dict[str, Any]) -> Accepted:
    """A 200 with a task (the client has checked the id is a string)."""
    status = prediction.get("status")
    return Accepted(task_id=prediction["id"], provider_status=status if isinstance(status, str) else None)


def outcome_of_error(exc: ProviderError, attempts: int) -> AnswerLost | Rejected | RetryLater:
    """What a failed submit means, from the client's error and the job's attempts so far."""
    if isinstance(exc, SubmitOutcomeUnknown):
        return AnswerLost(why=exc.message)
    if exc.is_permanent:
        return Rejected(message=exc.message, http_status=exc.http_status)
    told_when = exc.retry_after is not None
    delay = exc.retry_after if exc.retry_after is not None else backoff(attempts, cap=SUBMIT_BACKOFF_CAP)
    return RetryLater(delay=delay, counts_as_attempt=not told_when, message=exc.message, http_status=exc.http_status)
