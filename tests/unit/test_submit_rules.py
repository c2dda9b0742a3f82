"""The submitter's decisions on typed records (service/work/submit_rules.py): which
claimed job is sent, recovered or left alone, and what each kind of provider answer
does to the job. No database, no network."""

from __future__ import annotations

from typing import Any

import pytest

from service.domain.errors import ProviderError, SubmitOutcomeUnknown
from service.domain.states import JobStatus
from service.work.submit_rules import (
    SUBMIT_BACKOFF_CAP,
    Accepted,
    AnswerLost,
    Rejected,
    RetryLater,
    after_marking,
    next_step,
    outcome_of_answer,
    outcome_of_error,
)
from tests.unit.records_factory import T0, job

HOLDER = "host:1:abc/submit"


@pytest.mark.parametrize(("changes", "marked_by_this_claim", "step"), [
    ({}, False, "send"),  # never marked: take a slot, then POST
    ({}, True, "send"),
    ({"submit_sent_at": T0}, True, "post"),  # this claim marked it: the POST is still to go
    # Marked by an attempt that died or lost its answer: the task may exist, never resend blindly.
    ({"submit_sent_at": T0}, False, "recover"),
    ({"status": "submitted", "submit_sent_at": T0}, True, "skip"),  # a webhook moved it on meanwhile
    ({"status": "canceled"}, False, "skip"),
    ({"locked_by": "host:1:abc/store"}, False, "skip"),  # another duty's claim holds it now
    ({"locked_by": None}, False, "skip"),
])
def test_a_claimed_job_is_sent_recovered_or_left_alone(
    changes: dict[str, Any], marked_by_this_claim: bool, step: str
) -> None:
    record = job(**{"locked_by": HOLDER, **changes})
    assert next_step(record, HOLDER, marked_by_this_claim=marked_by_this_claim) == step


@pytest.mark.parametrize(("verdict", "then"), [("marked", "post"), ("throttled", "wait"), ("gone", "drop")])
def test_a_job_is_posted_only_once_it_holds_a_slot(verdict: Any, then: str) -> None:
    assert after_marking(verdict) == then


def test_an_accepted_submit_records_the_task_and_its_status() -> None:
    assert outcome_of_answer({"id": "task_9", "status": "created"}) == Accepted("task_9", "created")
    assert outcome_of_answer({"id": "task_9", "status": {"odd": 1}}) == Accepted("task_9", None)


def test_a_lost_answer_is_recovered_never_retried() -> None:
    outcome = outcome_of_error(SubmitOutcomeUnknown("submit sent but no answer (ReadTimeout)"), attempts=1)
    assert outcome == AnswerLost("submit sent but no answer (ReadTimeout)")


@pytest.mark.parametrize("status", [400, 401, 402, 404, 422])
def test_a_4xx_other_than_429_fails_the_job(status: int) -> None:
    outcome = outcome_of_error(ProviderError("HTTP 4xx: bad", http_status=status, retry_after=5), attempts=1)
    assert outcome == Rejected("HTTP 4xx: bad", status)


def test_a_429_with_retry_after_waits_that_long_without_counting_an_attempt() -> None:
    outcome = outcome_of_error(ProviderError("HTTP 429", http_status=429, retry_after=7.5), attempts=6)
    assert isinstance(outcome, RetryLater)
    assert (outcome.delay, outcome.counts_as_attempt, outcome.http_status) == (7.5, False, 429)


def test_a_retry_after_of_zero_is_honoured_not_replaced_by_backoff() -> None:
    outcome = outcome_of_error(ProviderError("HTTP 503", http_status=503, retry_after=0.0), attempts=9)
    assert isinstance(outcome, RetryLater)
    assert (outcome.delay, outcome.counts_as_attempt) == (0.0, False)


@pytest.mark.parametrize("status", [None, 429, 500, 502, 503])  # None: the provider could not be reached
def test_a_passing_failure_backs_off_by_attempt_and_counts_it(status: int | None) -> None:
    first = outcome_of_error(ProviderError("down", http_status=status), attempts=1)
    assert isinstance(first, RetryLater) and first.counts_as_attempt
    assert 1.0 <= first.delay <= 2.0  # attempt 1: up to the 2 s base, jitter keeps at least half
    fourth = outcome_of_error(ProviderError("down", http_status=status), attempts=4)
    assert isinstance(fourth, RetryLater) and 8.0 <= fourth.delay <= 16.0


def test_a_long_outage_is_retried_at_least_every_two_minutes() -> None:
    delays = [outcome_of_error(ProviderError("down", http_status=500), attempts=30) for _ in range(50)]
    assert all(isinstance(d, RetryLater) and SUBMIT_BACKOFF_CAP / 2 <= d.delay <= SUBMIT_BACKOFF_CAP for d in delays)


def test_a_job_in_another_status_than_queued_is_never_sent() -> None:
    for status in JobStatus:
        if status is not JobStatus.QUEUED:
            record = job(status=status.value, locked_by=HOLDER)
            assert next_step(record, HOLDER, marked_by_this_claim=True) == "skip", status
