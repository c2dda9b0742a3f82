"""The SQL that decides correctness, in one place. Each statement says why it is safe.

Postgres is the queue: a job row is due when ``run_after <= now()`` and nobody holds its
lease. Workers claim with ``FOR UPDATE SKIP LOCKED`` (so N processes never pick the
same row) and take a short lease (``locked_until``) instead of holding a transaction
across network calls; a worker that dies simply lets its lease lapse and another takes
over. Every write a worker makes afterwards is fenced on ``locked_by`` so a worker whose
lease was taken over can no longer change the row.
"""

from __future__ import annotations

from sqlalchemy import text

# Why: SKIP LOCKED lets concurrent claimers pass over rows another claimer is taking
# right now; the lease makes the claim outlive this short transaction.
CLAIM_JOBS = text(
    """
    UPDATE jobs SET locked_until = now() + make_interval(secs => :lease),
                    locked_by = :worker, attempts = attempts + 1
    WHERE id IN (
        SELECT id FROM jobs
        WHERE status = ANY(:statuses) AND run_after <= now()
          AND (locked_until IS NULL OR locked_until < now())
        ORDER BY run_after
        LIMIT :limit
        FOR UPDATE SKIP LOCKED)
    RETURNING id
    """
)

# Why: a long download or a slow provider must not let the lease lapse under a live
# worker; renewing is fenced so a worker that already lost the lease learns it.
RENEW_JOB_LEASE = text(
    """
    UPDATE jobs SET locked_until = now() + make_interval(secs => :lease)
    WHERE id = ANY(:ids) AND locked_by = :worker
    RETURNING id
    """
)

# Why: on graceful shutdown, claimed work is handed back at once rather than after
# the lease runs out.
RELEASE_WORKER_JOBS = text(
    "UPDATE jobs SET locked_until = NULL, locked_by = NULL WHERE locked_by = :worker"
)

# Why: the submit is not idempotent upstream, so we record that it is about to go out
# *before* sending it, in a committed row. If we crash or lose the answer, the next
# claimer sees submit_sent_at and recovers the task instead of sending again.
MARK_SUBMIT_SENT = text(
    """
    UPDATE jobs SET submit_sent_at = now(), updated_at = now()
    WHERE id = :id AND locked_by = :worker AND status = 'queued' AND submit_sent_at IS NULL
    RETURNING id
    """
)

# Why: the webhook-id is the provider's event identity; ON CONFLICT makes a redelivered
# event a no-op for everything but the job's event log.
INSERT_WEBHOOK_EVENT = text(
    """
    INSERT INTO webhook_events (webhook_id, job_id, task_id, body, outcome)
    VALUES (:webhook_id, :job_id, :task_id, CAST(:body AS jsonb), :outcome)
    ON CONFLICT (webhook_id) DO NOTHING
    RETURNING id
    """
)

# Why: deliveries are claimed like jobs, so one slow endpoint only holds its own row.
CLAIM_DELIVERIES = text(
    """
    UPDATE deliveries SET locked_until = now() + make_interval(secs => :lease), locked_by = :worker
    WHERE id IN (
        SELECT id FROM deliveries
        WHERE status = 'pending' AND next_attempt_at <= now()
          AND (locked_until IS NULL OR locked_until < now())
        ORDER BY next_attempt_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED)
    RETURNING id
    """
)

RENEW_DELIVERY_LEASE = text(
    """
    UPDATE deliveries SET locked_until = now() + make_interval(secs => :lease)
    WHERE id = ANY(:ids) AND locked_by = :worker
    RETURNING id
    """
)

RELEASE_WORKER_DELIVERIES = text(
    "UPDATE deliveries SET locked_until = NULL, locked_by = NULL WHERE locked_by = :worker"
)

NOTIFY = text("SELECT pg_notify(:channel, :payload)")

# LISTEN/NOTIFY channels: work became due / a job became terminal.
CHANNEL_WORK = "wsj_work"
CHANNEL_DONE = "wsj_done"
