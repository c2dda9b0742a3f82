"""The SQL that decides correctness, in one place. Each statement says why it is safe.

Postgres is the queue: a job row is due when ``run_after <= now()`` and nobody holds its
lease. Workers claim with ``FOR UPDATE SKIP LOCKED`` (so N processes never pick the
same row) and take a short lease (``locked_until``) instead of holding a transaction
across network calls; a worker that dies simply lets its lease lapse and another takes
over. Every write a worker makes afterwards is fenced on ``locked_by`` so a worker whose
lease was taken over can no longer change the row. ``locked_by`` names the process *and
the duty* that claimed the row (service/work/runner.py ``holder_for``): a duty moves only
rows claimed for it, never one another duty of the same process has claimed since.
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
    FROM unnest(CAST(:ids AS text[]), CAST(:holders AS text[])) AS held(id, holder)
    WHERE jobs.id = held.id AND jobs.locked_by = held.holder
    RETURNING jobs.id
    """
)

# Why: on graceful shutdown, claimed work is handed back at once rather than after
# the lease runs out.
RELEASE_WORKER_JOBS = text(
    "UPDATE jobs SET locked_until = NULL, locked_by = NULL WHERE locked_by = ANY(:holders)"
)

# Why: the submit is not idempotent upstream, so we record that it is about to go out
# *before* sending it, in a committed row. If we crash or lose the answer, the next
# claimer sees submit_sent_at and recovers the task instead of sending again. (A
# submitted job without a task id gets here again only once the reconciler has verified
# that the provider never created its task, and cleared submit_sent_at.)
MARK_SUBMIT_SENT = text(
    """
    UPDATE jobs SET submit_sent_at = now(), updated_at = now()
    WHERE id = :id AND locked_by = :worker AND submit_sent_at IS NULL
      AND (status = 'queued' OR (status = 'submitted' AND provider_task_id IS NULL))
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
    FROM unnest(CAST(:ids AS text[]), CAST(:holders AS text[])) AS held(id, holder)
    WHERE deliveries.id = held.id AND deliveries.locked_by = held.holder
    RETURNING deliveries.id
    """
)

RELEASE_WORKER_DELIVERIES = text(
    "UPDATE deliveries SET locked_until = NULL, locked_by = NULL WHERE locked_by = ANY(:holders)"
)

# --- The receiver's fast path (service/webhook_store.py), raw asyncpg SQL ($n params):
# it must do exactly what service/api/webhooks.py `record` + jobs.apply_prediction do for
# the cases it covers; tests/integration/test_receiver_fast_path.py compares both paths.
# One statement, so one transaction. Parameters:
#  $1 job id, $2 webhook-id, $3 task id, $4 raw body (JSON text),
#  $5/$6 detail of the "webhook.received" event when new / when a duplicate,
#  $7 provider status, $8 inference ms, $9 has_nsfw_contents (JSON text),
#  $10 target status, $11 statuses the target may be reached from, $12 target is terminal,
#  $13 error (or NULL), $14 output URLs, $15 delivery id, $16 callback event type,
#  $17 reason, $18 terminal statuses.
#
# Why each part is safe:
# - job: the row lock serialises news about one job, as lock_job does. `applies` is the
#   fast path's whole eligibility test; when the job is missing, or the webhook is new
#   and the job is outside that test, nothing below writes anything (every write reads
#   `job` and `applies`/`seen`), so the general path can start afresh.
# - seen: a webhook-id committed before this statement began is a duplicate, whatever
#   the job's state (the general path also checks duplicates before anything else). One
#   committed while we waited for the lock is caught by ON CONFLICT in `hook` instead.
# - news: one UPDATE does both of apply_prediction's updates (provider fields, then the
#   guarded transition): a row may be updated only once per statement. Every transition
#   column is guarded by the same `moves` flag, computed from the locked row.
# - events: one INSERT, ordered, so "webhook.received" gets the lower id as it does when
#   the general path writes it first.
RECORD_FINAL_NEWS = """
WITH job AS (
    SELECT id, status, callback_url,
           coalesce(provider_task_id = $3 AND status <> ALL($18::text[])
                    AND (provider_status IS NULL OR provider_status <> ALL(ARRAY['completed', 'failed'])),
                    false) AS applies
    FROM jobs WHERE id = $1
    FOR UPDATE
), seen AS (
    SELECT EXISTS (SELECT 1 FROM webhook_events WHERE webhook_id = $2) AS dup
), hook AS (
    INSERT INTO webhook_events (webhook_id, job_id, task_id, body, outcome)
    SELECT $2, job.id, $3, $4::jsonb, 'received' FROM job, seen WHERE job.applies AND NOT seen.dup
    ON CONFLICT (webhook_id) DO NOTHING
    RETURNING id
), news AS (
    UPDATE jobs AS j SET
        last_news_at = now(),
        updated_at = now(),
        provider_status = $7,
        inference_ms = coalesce($8::integer, j.inference_ms),
        has_nsfw_contents = coalesce($9::jsonb, j.has_nsfw_contents),
        submitted_at = coalesce(j.submitted_at, now()),
        status = CASE WHEN m.moves THEN $10 ELSE j.status END,
        locked_until = CASE WHEN m.moves THEN NULL ELSE j.locked_until END,
        locked_by = CASE WHEN m.moves THEN NULL ELSE j.locked_by END,
        run_after = CASE WHEN NOT m.moves THEN j.run_after WHEN $12 THEN NULL ELSE now() END,
        completed_at = CASE WHEN m.moves AND $12 THEN now() ELSE j.completed_at END,
        attempts = CASE WHEN m.moves AND NOT $12 THEN 0 ELSE j.attempts END,
        error = CASE WHEN m.moves AND $13::text IS NOT NULL THEN $13 ELSE j.error END,
        callback_status = CASE WHEN m.moves AND $12 AND j.callback_url IS NOT NULL
                               THEN 'pending' ELSE j.callback_status END,
        callback_attempts = CASE WHEN m.moves AND $12 AND j.callback_url IS NOT NULL
                                 THEN 0 ELSE j.callback_attempts END
    FROM (SELECT job.id, job.status = ANY($11::text[]) AS moves FROM job WHERE EXISTS (SELECT 1 FROM hook)) AS m
    WHERE j.id = m.id
    RETURNING m.moves, j.callback_url
), outputs AS (
    INSERT INTO job_outputs (job_id, index, source_url)
    SELECT job.id, o.ord - 1, o.url
    FROM job, unnest($14::text[]) WITH ORDINALITY AS o(url, ord)
    WHERE EXISTS (SELECT 1 FROM hook)
    ON CONFLICT DO NOTHING
), events AS (
    INSERT INTO job_events (job_id, type, detail)
    SELECT e.job_id, e.type, e.detail FROM (
        SELECT 1 AS ord, job.id AS job_id, 'webhook.received' AS type,
               CASE WHEN EXISTS (SELECT 1 FROM hook) THEN $5::jsonb ELSE $6::jsonb END AS detail
        FROM job, seen WHERE job.applies OR seen.dup
        UNION ALL
        SELECT 2, job.id, 'status.changed',
               jsonb_build_object('from', job.status, 'to', $10::text, 'reason', $17::text)
               || CASE WHEN $13::text <> '' THEN jsonb_build_object('error', $13::text) ELSE '{}'::jsonb END
        FROM job, news WHERE news.moves
    ) AS e ORDER BY e.ord
), delivery AS (
    INSERT INTO deliveries (id, job_id, event_type, url, body, status, next_attempt_at)
    SELECT $15, job.id, $16, news.callback_url, '', 'pending', now()
    FROM job, news WHERE news.moves AND $12 AND news.callback_url IS NOT NULL
)
SELECT job.applies OR seen.dup AS handled,
       EXISTS (SELECT 1 FROM hook) AS fresh,
       coalesce((SELECT moves FROM news), false) AS moved,
       coalesce((SELECT callback_url IS NOT NULL FROM news), false) AS has_callback
FROM job, seen
"""

# Why one statement: unnest + pg_notify sends any number of wake-ups in one transaction
# (Postgres drops repeats within it), so under load one serialised NOTIFY commit serves
# many webhooks. A transaction that only notifies writes no WAL of its own, so its commit
# does not wait for a flush either.
NOTIFY_MANY = "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS t(c, p)"

NOTIFY = text("SELECT pg_notify(:channel, :payload)")

# --- Data lifecycle (service/work/eraser.py, service/work/retention.py, service/db/bulk.py)

# Why: the tombstone mark and the erasure duty row are written by one statement, so a
# deleted job always has its erasure due until the erasure itself removes the row. Only
# terminal jobs are marked (callers cancel first, in the same transaction); the owner is
# in the query (NULL only for the retention sweep, which works across owners).
MARK_DELETED = text(
    """
    WITH marked AS (
        UPDATE jobs SET deleted_at = now(), deleted_reason = :reason, updated_at = now()
        WHERE id = ANY(:ids) AND deleted_at IS NULL AND status = ANY(:terminal)
          AND (CAST(:owner AS text) IS NULL OR owner = :owner)
        RETURNING id),
    logged AS (
        INSERT INTO job_events (job_id, type, detail)
        SELECT id, 'job.deleted', jsonb_build_object('reason', CAST(:reason AS text)) FROM marked)
    INSERT INTO erasures (job_id, reason) SELECT id, :reason FROM marked
    ON CONFLICT (job_id) DO NOTHING
    RETURNING job_id
    """
)

# Why: retention picks its batch on the partial index jobs_retention (terminal, not yet
# deleted, oldest first); SKIP LOCKED so a job a worker or the API holds right now is
# simply taken by a later sweep. The owner's retention_days wins over the default when
# an owners table provides one (see service/work/retention.py).
RETENTION_BATCH = text(
    """
    SELECT id FROM jobs
    WHERE deleted_at IS NULL AND completed_at IS NOT NULL
      AND completed_at < now() - make_interval(days => :days)
      AND status = ANY(:terminal)
    ORDER BY completed_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)

# Why: erasures are claimed in batches (one DeleteObjects call serves up to 1,000 keys);
# the claim token is unique per batch, so every later statement works on exactly the
# rows this batch holds, and a lapsed lease only means a second, harmless erasure.
CLAIM_ERASURES = text(
    """
    UPDATE erasures SET locked_until = now() + make_interval(secs => :lease),
                        locked_by = :token, attempts = attempts + 1
    WHERE job_id IN (
        SELECT job_id FROM erasures
        WHERE run_after <= now() AND (locked_until IS NULL OR locked_until < now())
        ORDER BY run_after
        LIMIT :limit
        FOR UPDATE SKIP LOCKED)
    RETURNING job_id
    """
)

ERASURE_OBJECTS = text(
    """
    SELECT o.job_id, o.key, o.thumbnail_key, coalesce(o.size_bytes, 0) AS size_bytes
    FROM erasures e JOIN job_outputs o ON o.job_id = e.job_id
    WHERE e.locked_by = :token
    """
)

# Why: the erasure of a batch is one transaction that takes row locks in the documented
# order (jobs, then deliveries, then the rest) and ends by removing the duty rows: the
# data is either all erased with no duty left, or untouched with the duty still due.
ERASE_LOCK_JOBS = text(
    """
    SELECT j.id FROM jobs j JOIN erasures e ON e.job_id = j.id
    WHERE e.locked_by = :token ORDER BY j.id FOR UPDATE OF j
    """
)
ERASE_STATEMENTS = (
    text("""UPDATE jobs SET input = '{}'::jsonb, metadata = '{}'::jsonb, idempotency_key = NULL,
                request_hash = NULL, has_nsfw_contents = NULL, updated_at = now()
            WHERE id = ANY(:ids)"""),
    text("UPDATE deliveries SET body = '' WHERE job_id = ANY(:ids) AND body <> ''"),
    text("DELETE FROM job_outputs WHERE job_id = ANY(:ids)"),
    text("UPDATE webhook_events SET body = '{}'::jsonb WHERE job_id = ANY(:ids) AND body <> '{}'::jsonb"),
    # Event details may hold a prompt, a key or an output URL: only a status change's
    # from/to/reason survive.
    text("""UPDATE job_events SET detail = CASE WHEN type = 'status.changed'
                THEN jsonb_strip_nulls(jsonb_build_object('from', detail->'from', 'to', detail->'to',
                                                          'reason', detail->'reason'))
                ELSE '{}'::jsonb END
            WHERE job_id = ANY(:ids) AND detail <> '{}'::jsonb"""),
)
FINISH_ERASURES = text(
    """
    WITH done AS (DELETE FROM erasures WHERE locked_by = :token AND job_id = ANY(:ids) RETURNING job_id, reason)
    INSERT INTO job_events (job_id, type, detail)
    SELECT job_id, 'job.erased', jsonb_build_object('reason', reason) FROM done
    RETURNING job_id
    """
)

# Why: a batch that failed (S3 down) is handed back with a delay, fenced on its token.
RETRY_ERASURES = text(
    """
    UPDATE erasures SET locked_until = NULL, locked_by = NULL, last_error = :error,
                        run_after = now() + make_interval(secs => :delay)
    WHERE locked_by = :token
    """
)

# LISTEN/NOTIFY channels: work became due / a job became terminal / a job's status
# changed (streams: the payload is the job id).
CHANNEL_WORK = "wsj_work"
CHANNEL_DONE = "wsj_done"
CHANNEL_JOB = "wsj_job"
