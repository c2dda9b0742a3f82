"""The job state machine: every (current, target) pair against a table written out by
hand, so a change to ``can_transition`` has to change this table too."""

from __future__ import annotations

import itertools

import pytest

from service.domain.states import (
    ACTIVE,
    CALLBACK_EVENT,
    TERMINAL,
    JobStatus,
    allowed_from,
    can_transition,
    wavespeed_status,
)

Q, S, P, ST = JobStatus.QUEUED, JobStatus.SUBMITTED, JobStatus.PROCESSING, JobStatus.STORING
C, F, X, T = JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.TIMED_OUT

# Every allowed move; every pair not listed here must be refused.
ALLOWED: set[tuple[JobStatus, JobStatus]] = {
    # forward, skipping allowed (a webhook may announce completion of a "submitted" job)
    (Q, S), (Q, P), (Q, ST),
    (S, P), (S, ST),
    (P, ST),
    # completed only once every output is stored
    (ST, C),
    # any active state may end badly
    (Q, F), (Q, X), (Q, T),
    (S, F), (S, X), (S, T),
    (P, F), (P, X), (P, T),
    (ST, F), (ST, X), (ST, T),
}

ALL_PAIRS = list(itertools.product(JobStatus, JobStatus))


@pytest.mark.parametrize(("current", "target"), ALL_PAIRS, ids=[f"{a.value}->{b.value}" for a, b in ALL_PAIRS])
def test_can_transition_matches_the_table(current: JobStatus, target: JobStatus) -> None:
    assert can_transition(current, target) is ((current, target) in ALLOWED)


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_terminal_states_are_final(terminal: JobStatus) -> None:
    assert not any(can_transition(terminal, target) for target in JobStatus)


@pytest.mark.parametrize("current", [Q, S, P, C, F, X, T])
def test_completed_is_reachable_only_from_storing(current: JobStatus) -> None:
    assert not can_transition(current, C)


@pytest.mark.parametrize(("current", "target"), [(S, Q), (P, S), (P, Q), (ST, P), (ST, S), (ST, Q)])
def test_active_states_never_move_backwards(current: JobStatus, target: JobStatus) -> None:
    assert not can_transition(current, target)


@pytest.mark.parametrize("status", list(JobStatus))
def test_no_state_transitions_to_itself(status: JobStatus) -> None:
    assert not can_transition(status, status)


@pytest.mark.parametrize("target", list(JobStatus))
def test_allowed_from_feeds_the_sql_guard_with_exactly_the_table(target: JobStatus) -> None:
    expected = {current.value for current, t in ALLOWED if t is target}
    assert set(allowed_from(target)) == expected


def test_terminal_and_active_partition_the_statuses() -> None:
    assert TERMINAL | ACTIVE == set(JobStatus)
    assert not TERMINAL & ACTIVE
    assert TERMINAL == {C, F, X, T}


def test_every_terminal_state_has_its_callback_event() -> None:
    assert CALLBACK_EVENT == {
        C: "job.completed",
        F: "job.failed",
        X: "job.canceled",
        T: "job.timed_out",
    }


@pytest.mark.parametrize(
    ("status", "upstream"),
    [(Q, "created"), (S, "created"), (P, "processing"), (ST, "processing"),
     (C, "completed"), (F, "failed"), (X, "failed"), (T, "failed")],
)
def test_wavespeed_status_maps_onto_the_providers_four(status: JobStatus, upstream: str) -> None:
    assert wavespeed_status(status) == upstream
