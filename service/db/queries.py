"""The SQL that decides correctness, in one place. Each statement says why it is safe.

Postgres is the queue: a job row is due when ``run_after <= now()`` and nobody holds its
lease. Workers claim with ``FOR UPDATE SKIP LOCKED`` (so N processes never pick the
same row) and take a short lease (``locked_until``) instead of holding a transaction
across network calls; a worker that dies simply lets its lease lapse and another takes
over. Every write a worker makes afterwards is fenced on ``locked_by`` so a worker whose
lease was taken over can no longer change the row. ``locked_by`` names the process *and
the duty* that claimed the row (service/work/runner.py ``holder_for``): a duty moves only
rows claimed for it, never one another duty of the same process has claimed since.

LOCK ORDER. Every transaction that locks rows of more than one table (or more than one
row of a table) takes them in this order, so no two can wait on each other in a cycle:

1. ``jobs``, several rows in id order (``APPLY_NEWS``, ``RENEW_LEASES["jobs"]``);
2. ``deliveries``, several rows in id order (``RENEW_LEASES["deliveries"]``);
3. the rest, which are only appended to or belong to the job already locked
   (``job_events``, ``webhook_events``, ``job_outputs``, the tables kept by triggers).

Transactions that write more than one table, and how they keep the order:

- provider news (``APPLY_NEWS``, service/db/news.py): one statement locks the batch's jobs
  in id order before judging them, then appends events, outputs and deliveries;
- ``jobs.transition`` (storer, submitter, reconciler, cancel, time-outs): the guarded
  UPDATE of the job comes first, then its event, its delivery (``queue_callback``);
- the deliverer recording an attempt (service/work/deliverer.py ``_record``) and the
  redeliver route lock the job (``jobs.lock_job_id`` / ``get_job(lock=True)``) before
  they update the delivery and mirror its state on the job;
- lease renewal and release (service/work/runner.py) are one table per transaction.
  (Renewal once updated jobs then deliveries in one transaction while the deliverer
  locked a delivery then its job: Postgres aborted one with a deadlock and a callback
  was sent twice.)
- claims take no wait at all: ``FOR UPDATE SKIP LOCKED`` (the submit claim's provider
  slots and tokens too, service/work/throttle.py);
- admission (service/db/admission.py) locks the owner's row, one of "the rest", and
  only inserts the new job, a row nobody else can hold; the ledger is appended to.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sqlalchemy import TextClause, text

from service.domain.states import DeliveryStatus, JobStatus

_IDENTIFIER = re.compile(r"[a-z_]+")


def sql_values(values: Iterable[str]) -> str:
    """Status values as SQL literals, rendered once at import time from states.py (a
    literal, unlike a bind parameter, lets the planner use the partial indexes whose
    predicates name a status). Only plain lowercase names pass, so nothing is injected."""
    items = [str(v) for v in values]
    if not items or not all(_IDENTIFIER.fullmatch(v) for v in items):
        raise ValueError(f"not a status set: {items!r}")
    return ", ".join(f"'{v}'" for v in items)


# --- Leases: ONE template for every duty table (jobs, deliveries, erasures).
# Why: SKIP LOCKED lets concurrent claimers pass over rows another claimer is taking
# right now; the lease makes the claim outlive this short transaction, and ``locked_by``
# (the duty's holder, or the eraser's batch token) is what every later write is fenced on.
def claim(table: str, *, due: str, order: str, key: str = "id", count_attempt: bool = True) -> TextClause:
    """The claim of the duty whose rows of ``table`` are ``due`` (a condition on the row),
    oldest ``order`` first. Parameters: ``:holder``, ``:lease`` (s), ``:limit``; answers
    the claimed keys as ``id``. ``count_attempt``: the duty counts its tries in
    ``attempts``."""
    attempts = ", attempts = attempts + 1" if count_attempt else ""
    return text(f"""
    UPDATE {table} SET locked_until = now() + make_interval(secs => :lease), locked_by = :holder{attempts}
    WHERE {key} IN (
        SELECT {key} FROM {table}
        WHERE {due} AND (locked_until IS NULL OR locked_until < now())
        ORDER BY {order}
        LIMIT :limit
        FOR UPDATE SKIP LOCKED)
    RETURNING {key} AS id
    """)


def _renew(table: str) -> TextClause:
    # Why: a long download or a slow provider must not let the lease lapse under a live
    # worker; renewing is fenced on each row's holder so a worker that already lost the
    # lease learns it. Many rows in one statement: locked in id order (the lock order).
    return text(f"""
    UPDATE {table} SET locked_until = now() + make_interval(secs => :lease)
    WHERE id IN (SELECT {table}.id FROM {table}
                 JOIN unnest(CAST(:ids AS text[]), CAST(:holders AS text[])) AS held(id, holder)
                   ON {table}.id = held.id AND {table}.locked_by = held.holder
                 ORDER BY {table}.id FOR UPDATE OF {table})
    RETURNING id
    """)


def _release(table: str) -> TextClause:
    # Why: on graceful shutdown, claimed work is handed back at once rather than after
    # the lease runs out. ``keep``: rows whose task still runs (it outlived its
    # cancellation) keep their lease, so no other worker takes them while it may write.
    return text(f"UPDATE {table} SET locked_until = NULL, locked_by = NULL "
                "WHERE locked_by = ANY(:holders) AND id <> ALL(:keep)")


# The tables whose leases the runner renews and releases, in the lock order (one
# transaction per table). Erasures are not here: their lease is generous instead of
# renewed, and a lapse only costs a second, harmless erasure (service/work/eraser.py).
LEASED_TABLES = ("jobs", "deliveries")
RENEW_LEASES: dict[str, TextClause] = {t: _renew(t) for t in LEASED_TABLES}
RELEASE_LEASES: dict[str, TextClause] = {t: _release(t) for t in LEASED_TABLES}

_QUEUED = sql_values([JobStatus.QUEUED])

# The claims, one per duty. Jobs in ``:statuses`` (storer, reconciler).
CLAIM_JOBS = claim("jobs", due="status = ANY(:statuses) AND run_after <= now()", order="run_after")
# Why: a queued job with its submit marker set and its lease lapsed was being sent by a
# worker that died: it is recovered (its task looked for), never sent again blindly.
# Fresh queued jobs are claimed in fair order by claim_submits (service/work/throttle.py).
CLAIM_LOST_SENDS = claim(
    "jobs", due=f"status = {_QUEUED} AND submit_sent_at IS NOT NULL AND run_after <= now()", order="run_after")
# Why: the partial index jobs_start_deadline holds only queued jobs that have a start
# deadline; a job whose send has begun (submit marker set) is past the point of no return.
CLAIM_EXPIRED_STARTS = claim(
    "jobs", due=f"status = {_QUEUED} AND start_deadline_at <= now() AND submit_sent_at IS NULL",
    order="start_deadline_at", count_attempt=False)
# Why: deliveries are claimed like jobs, so one slow endpoint only holds its own row.
CLAIM_DELIVERIES = claim(
    "deliveries", due=f"status = {sql_values([DeliveryStatus.PENDING])} AND next_attempt_at <= now()",
    order="next_attempt_at", count_attempt=False)
# Why: erasures are claimed in batches (one DeleteObjects call serves up to 1,000 keys)
# under a token unique per batch (the holder), so every later statement works on exactly
# the rows this batch holds.
CLAIM_ERASURES = claim("erasures", key="job_id", due="run_after <= now()", order="run_after")

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

# --- Provider news (service/db/news.py), raw asyncpg SQL ($n params): the ONE statement
# by which a webhook or a result the reconciler fetched changes jobs. It takes a batch
# (group commit: the receiver writes every webhook that arrived together in one
# transaction) as parallel arrays, one element per item, and answers one row per item.
# Parameters (arrays): $1 job id, $2 webhook-id (NULL: a reconciler result, no webhook
# log), $3 task id (NULL when the body has none), $4 raw body (JSON text), $5 provider
# status, $6 inference ms, $7 has_nsfw_contents (JSON text), $8 output URLs (JSON array
# text), $9 target status (NULL: none), $10 statuses the target may be reached from
# (comma-separated), $11 target is terminal, $12 error, $13 delivery id, $14 callback
# event type, $15 source ("webhook"/"reconcile"), $16 delay before the target is due,
# $17 the webhook.received detail (JSON text); $18 terminal statuses (a plain array).
#
# Why each part is safe:
# - job: every job of the batch is locked, in id order (the order every multi-job lock
#   in this file uses), before its news is judged; the batch never holds one job twice
#   (the writer keeps items for the same job apart), since a row may change only once
#   per statement.
# - hook: the webhook-id is the provider's event identity; ON CONFLICT makes a
#   redelivered event (committed earlier, or while we waited) a "duplicate" that changes
#   nothing but the job's event log. A verified event for an unknown job is logged too;
#   one for a deleted job without its body (its erased data must not come back).
# - c: the verdict on each item, from the locked row: unknown job, duplicate, another
#   task (a webhook must name the job's task; a task id another job owns is never
#   adopted), late (job terminal), stale (the provider said more already), or apply.
# - upd: provider fields and the guarded forward-only transition (could_move: the target
#   is reachable from the locked status, states.allowed_from) in one UPDATE per job.
# - events: ordered per item: webhook.received, then task adoption/mismatch, then the
#   status change. delivery: a terminal move queues its callback in this transaction,
#   so a crash cannot lose it.
APPLY_NEWS = """
WITH n AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::integer[],
                         $7::text[], $8::text[], $9::text[], $10::text[], $11::boolean[], $12::text[],
                         $13::text[], $14::text[], $15::text[], $16::float8[], $17::text[])
        WITH ORDINALITY AS n(job_id, webhook_id, task_id, body, pstatus, inference_ms, nsfw, outputs, target,
                             allowed, terminal, error, delivery_id, event_type, source, delay, detail, ord)
), job AS (
    SELECT id, status, provider_task_id, provider_status, callback_url, deleted_at
    FROM jobs WHERE id = ANY($1::text[])
    ORDER BY id
    FOR UPDATE
), hook AS (
    INSERT INTO webhook_events (webhook_id, job_id, task_id, body, outcome)
    SELECT n.webhook_id, job.id, n.task_id,
           CASE WHEN job.deleted_at IS NULL THEN n.body::jsonb ELSE '{}'::jsonb END,
           CASE WHEN job.id IS NULL THEN 'unknown_job' ELSE 'received' END
    FROM n LEFT JOIN job ON job.id = n.job_id
    WHERE n.webhook_id IS NOT NULL
    ORDER BY n.ord
    ON CONFLICT (webhook_id) DO NOTHING
    RETURNING webhook_id
), c AS (
    SELECT n.*, job.status AS was, job.callback_url,
           job.provider_task_id IS NULL AND n.task_id IS NOT NULL AS adopting,
           coalesce(n.target IS NOT NULL AND job.status = ANY(string_to_array(n.allowed, ',')), false)
               AS could_move,
           CASE
               WHEN job.id IS NULL THEN 'unknown_job'
               WHEN n.webhook_id IS NOT NULL
                    AND NOT EXISTS (SELECT 1 FROM hook WHERE hook.webhook_id = n.webhook_id) THEN 'duplicate'
               WHEN n.task_id IS NOT NULL AND job.provider_task_id IS NOT NULL
                    AND n.task_id <> job.provider_task_id THEN 'task_mismatch'
               WHEN n.task_id IS NULL AND n.webhook_id IS NOT NULL THEN 'task_mismatch'
               WHEN job.status = ANY($18::text[]) THEN 'late'
               WHEN job.provider_task_id IS NULL AND n.task_id IS NOT NULL
                    AND EXISTS (SELECT 1 FROM jobs o WHERE o.provider_task_id = n.task_id) THEN 'task_taken'
               WHEN job.provider_status IN ('completed', 'failed')
                    OR (CASE n.pstatus WHEN 'processing' THEN 1 WHEN 'completed' THEN 2 WHEN 'failed' THEN 2 ELSE 0 END)
                     < (CASE job.provider_status WHEN 'processing' THEN 1 WHEN 'completed' THEN 2
                                                 WHEN 'failed' THEN 2 ELSE 0 END) THEN 'unchanged'
               ELSE 'apply'
           END AS verdict
    FROM n LEFT JOIN job ON job.id = n.job_id
), upd AS (
    UPDATE jobs AS j SET
        last_news_at = now(),
        updated_at = now(),
        provider_task_id = coalesce(j.provider_task_id, c.task_id),
        provider_status = coalesce(c.pstatus, j.provider_status),
        inference_ms = coalesce(c.inference_ms, j.inference_ms),
        has_nsfw_contents = coalesce(c.nsfw::jsonb, j.has_nsfw_contents),
        submitted_at = coalesce(j.submitted_at, now()),
        status = CASE WHEN c.could_move THEN c.target ELSE j.status END,
        locked_until = CASE WHEN c.could_move THEN NULL ELSE j.locked_until END,
        locked_by = CASE WHEN c.could_move THEN NULL ELSE j.locked_by END,
        run_after = CASE WHEN NOT c.could_move THEN j.run_after WHEN c.terminal THEN NULL
                         ELSE now() + make_interval(secs => c.delay) END,
        completed_at = CASE WHEN c.could_move AND c.terminal THEN now() ELSE j.completed_at END,
        attempts = CASE WHEN c.could_move AND NOT c.terminal THEN 0 ELSE j.attempts END,
        error = CASE WHEN c.could_move AND c.error IS NOT NULL THEN c.error ELSE j.error END,
        callback_status = CASE WHEN c.could_move AND c.terminal AND j.callback_url IS NOT NULL
                               THEN 'pending' ELSE j.callback_status END,
        callback_attempts = CASE WHEN c.could_move AND c.terminal AND j.callback_url IS NOT NULL
                                 THEN 0 ELSE j.callback_attempts END
    FROM c
    WHERE c.verdict = 'apply' AND j.id = c.job_id
), outs AS (
    INSERT INTO job_outputs (job_id, index, source_url)
    SELECT c.job_id, o.ord - 1, o.url
    FROM c, jsonb_array_elements_text(c.outputs::jsonb) WITH ORDINALITY AS o(url, ord)
    WHERE c.verdict = 'apply' AND c.target = 'storing'
    ON CONFLICT DO NOTHING
), events AS (
    INSERT INTO job_events (job_id, type, detail)
    SELECT e.job_id, e.type, e.detail FROM (
        SELECT c.ord, 1 AS step, c.job_id, 'webhook.received' AS type,
               c.detail::jsonb || jsonb_build_object('duplicate', c.verdict = 'duplicate') AS detail
        FROM c WHERE c.webhook_id IS NOT NULL AND c.verdict <> 'unknown_job'
        UNION ALL
        SELECT c.ord, 2, c.job_id, 'provider.task_mismatch',
               jsonb_build_object('task_id', c.task_id, 'source', c.source)
               || CASE WHEN c.verdict = 'task_taken' THEN '{"reason": "another job has this task"}'::jsonb
                       WHEN c.task_id IS NULL THEN '{"reason": "the body names no task"}'::jsonb
                       ELSE '{}'::jsonb END
        FROM c WHERE c.verdict IN ('task_mismatch', 'task_taken')
        UNION ALL
        SELECT c.ord, 3, c.job_id, 'provider.task_adopted', jsonb_build_object('task_id', c.task_id, 'source', c.source)
        FROM c WHERE c.verdict = 'apply' AND c.adopting
        UNION ALL
        SELECT c.ord, 4, c.job_id, 'status.changed',
               jsonb_build_object('from', c.was, 'to', c.target, 'reason', c.source)
               || CASE WHEN c.error IS NOT NULL THEN jsonb_build_object('error', c.error) ELSE '{}'::jsonb END
        FROM c WHERE c.verdict = 'apply' AND c.could_move
    ) AS e ORDER BY e.ord, e.step
), delivery AS (
    INSERT INTO deliveries (id, job_id, event_type, url, body, status, next_attempt_at)
    SELECT c.delivery_id, c.job_id, c.event_type, c.callback_url, '', 'pending', now()
    FROM c WHERE c.verdict = 'apply' AND c.could_move AND c.terminal AND c.callback_url IS NOT NULL
)
SELECT c.ord, c.verdict, c.verdict = 'apply' AND c.could_move AS moved,
       c.callback_url IS NOT NULL AS has_callback
FROM c ORDER BY c.ord
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
# simply taken by a later sweep. The owner's retention_days wins over the default
# (OUTPUT_RETENTION_DAYS); with neither, make_interval gives NULL and the job is kept.
RETENTION_BATCH = text(
    """
    SELECT j.id FROM jobs j LEFT JOIN owners o ON o.name = j.owner
    WHERE j.deleted_at IS NULL AND j.completed_at IS NOT NULL
      AND j.completed_at < now() - make_interval(days => :shortest)
      AND j.completed_at < now() - make_interval(days => coalesce(o.retention_days, CAST(:days AS integer)))
      AND j.status = ANY(:terminal)
    ORDER BY j.completed_at
    LIMIT :limit
    FOR UPDATE OF j SKIP LOCKED
    """
)

# The shortest retention anyone has: the sweep's index walk starts no later than that.
SHORTEST_RETENTION = text(
    "SELECT least(CAST(:days AS integer), (SELECT min(retention_days) FROM owners)) AS days"
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
