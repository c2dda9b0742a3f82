"""The job state machine: statuses and the one rule for moving between them.

queued → submitted → processing → storing → completed, and from any non-terminal state
failed, canceled or timed_out. Moves only go forward, so a late, duplicate or
out-of-order event can never undo progress. The guarded UPDATE in
service/db/jobs.py (``transition``) applies this rule as ``status = ANY(:allowed_from)``,
with ``allowed_from`` computed here.
"""

from __future__ import annotations

import enum
from typing import Literal


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    SUBMITTED = "submitted"
    PROCESSING = "processing"
    STORING = "storing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    TIMED_OUT = "timed_out"


class DeliveryStatus(enum.StrEnum):
    """A callback delivery's status (``deliveries.status``; ``jobs.callback_status``
    mirrors the latest delivery's)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


ORDER: dict[JobStatus, int] = {
    JobStatus.QUEUED: 0,
    JobStatus.SUBMITTED: 1,
    JobStatus.PROCESSING: 2,
    JobStatus.STORING: 3,
}

TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.TIMED_OUT}
)
ACTIVE: frozenset[JobStatus] = frozenset(ORDER)

# The event type a backend receives when a job ends in each terminal state.
CALLBACK_EVENT: dict[JobStatus, str] = {
    JobStatus.COMPLETED: "job.completed",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELED: "job.canceled",
    JobStatus.TIMED_OUT: "job.timed_out",
}


def can_transition(current: JobStatus, target: JobStatus) -> bool:
    """True when ``current → target`` moves forward.

    Terminal states are final. ``completed`` is reached only from ``storing`` (every
    output must be in S3 first). Any active state may end as failed, canceled or timed
    out. Among active states only strictly forward moves are allowed (skipping is fine:
    a webhook may announce completion of a job we still think is ``submitted``).
    """
    if current in TERMINAL:
        return False
    if target is JobStatus.COMPLETED:
        return current is JobStatus.STORING
    if target in TERMINAL:
        return True
    return ORDER[target] > ORDER[current]


def allowed_from(target: JobStatus) -> list[str]:
    """Every status from which ``target`` may be reached (feeds the SQL guard)."""
    return [s.value for s in JobStatus if can_transition(s, target)]


WavespeedStatus = Literal["created", "processing", "completed", "failed"]


def wavespeed_status(status: JobStatus) -> WavespeedStatus:
    """Our status as one of WaveSpeed's four (for the compatible facade)."""
    if status in (JobStatus.QUEUED, JobStatus.SUBMITTED):
        return "created"
    if status in (JobStatus.PROCESSING, JobStatus.STORING):
        return "processing"
    if status is JobStatus.COMPLETED:
        return "completed"
    return "failed"
