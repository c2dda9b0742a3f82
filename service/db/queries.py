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
- ``jobs.transition`` (reconciler, cancel, time-outs, the storer's and submitter's rarer
  paths): the guarded UPDATE of the job comes first, then its event and delivery
  (``AFTER_MOVE``); the submitter's accepted answer (``SUBMIT_ACCEPTED``) and the storer's
  completion (``STORE_COMPLETE``) are the same in one statement, the job first;
- the deliverer recording an attempt (``RECORD_ATTEMPT``: one statement whose first part
  locks the job; for a deleted job, service/work/deliverer.py ``_record_deleted``) and
  the redeliver route lock the job (``jobs.lock_job_id`` / ``get_job(lock=True)``) before
  they update the delivery and mirror its state on the job (service/db/deliveries.py);
- bulk cancel and delete (``FINISH_MANY``, one statement, service/db/jobs.py
  ``finish_many``) and bulk redeliver (``REDELIVERABLE``) lock the
  batch's jobs in id order first, then append to the rest;
- an erasure batch (service/db/deletion.py ``erase_batch``) locks its jobs in id order
  (``ERASE_LOCK_JOBS``), then runs ``ERASE_STATEMENTS`` in table order (jobs,
  deliveries, then the rest) and removes its duty rows last (``FINISH_ERASURES``);
- lease renewal and release (service/db/leases.py, run by service/work/runner.py) are
  one table per transaction.
  (Renewal once updated jobs then deliveries in one transaction while the deliverer
  locked a delivery then its job: Postgres aborted one with a deadlock and a callback
  was sent twice.)
- claims take no wait at all: ``FOR UPDATE SKIP LOCKED`` (the submit claim's provider
  slots and tokens too, service/db/submits.py);
- admission (service/db/admission.py, ``ADMIT_JOB``) locks the owner's row, one of "the
  rest", and only inserts the new job, a row nobody else can hold; the ledger is
  appended to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import ColumnClause, TextClause, literal_column, text

from service.db import statements
from service.db.statements import sql_values
from service.domain.states import ACTIVE, DeliveryStatus, JobStatus


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

_ACTIVE = sql_values(sorted(ACTIVE))

# The claims, one per duty. Jobs in ``:statuses`` (storer, reconciler), all active: the
# literal list lets the planner prove that the partial index jobs_due (the active jobs)
# holds every row the claim may take, which a parameter alone cannot (revision 0017).
CLAIM_JOBS = claim("jobs", due=f"status = ANY(:statuses) AND status IN ({_ACTIVE}) AND run_after <= now()",
                   order="run_after")
# Why: a queued job with its submit marker set and its lease lapsed was being sent by a
# worker that died: it is recovered (its task looked for), never sent again blindly.
# Fresh queued jobs are claimed in fair order by claim_submits (service/db/submits.py).
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
# Erasures someone asked for before retention's backlog (revision 0013's index).
CLAIM_ERASURES = claim("erasures", key="job_id", due="run_after <= now()", order="(reason = 'retention'), run_after")

# --- The named statements of queries.sql. Each name is taken here exactly once; a name
# in the file that nobody takes, or taken but missing, fails at import.
_SQL = statements.load(Path(__file__).with_name("queries.sql"))

# Submits and provider news
MARK_SUBMIT_SENT = _SQL.text("MARK_SUBMIT_SENT")
UNMARK_UNSENT = _SQL.text("UNMARK_UNSENT")
INSERT_WEBHOOK_EVENT = _SQL.text("INSERT_WEBHOOK_EVENT")
APPLY_NEWS = _SQL.asyncpg("APPLY_NEWS")
NOTIFY_MANY = _SQL.asyncpg("NOTIFY_MANY")
NOTIFY = _SQL.text("NOTIFY")
# A terminal move queues a pending delivery: the job's side, for an UPDATE built with
# SQLAlchemy Core of ``jobs`` aliased ``j`` (service/db/jobs.py transition)
CALLBACK_STATUS_ENDED: ColumnClause[Any] = literal_column(_SQL.fragment("CALLBACK_STATUS_ENDED"))
CALLBACK_ATTEMPTS_ENDED: ColumnClause[Any] = literal_column(_SQL.fragment("CALLBACK_ATTEMPTS_ENDED"))
QUEUE_CALLBACK = _SQL.text("QUEUE_CALLBACK")
# One job's status change, after its guarded UPDATE (service/db/jobs.py transition)
AFTER_MOVE = _SQL.text("AFTER_MOVE")
# The submitter's accepted answer and the storer's completion (service/work/)
SUBMIT_ACCEPTED = _SQL.asyncpg("SUBMIT_ACCEPTED")
STORE_COMPLETE = _SQL.asyncpg("STORE_COMPLETE")
# Transitions of many jobs at once (service/db/jobs.py)
FINISH_MANY = _SQL.text("FINISH_MANY")
# Provider capacity and fair turns
ENSURE_SLOTS = _SQL.text("ENSURE_SLOTS")
ORPHANS_IN_FLIGHT = _SQL.text("ORPHANS_IN_FLIGHT")
ADOPT_FREE_SLOT = _SQL.text("ADOPT_FREE_SLOT")
BIND_SLOT = _SQL.text("BIND_SLOT")
ADOPT_LOCK = _SQL.text("ADOPT_LOCK")
ENSURE_TOKENS = _SQL.text("ENSURE_TOKENS")
CLAIM_SUBMITS = _SQL.text("CLAIM_SUBMITS")
TAKE_PROVIDER_SLOT = _SQL.text("TAKE_PROVIDER_SLOT")
NEXT_TAG = _SQL.text("NEXT_TAG")
RETRY_ESTIMATES = _SQL.text("RETRY_ESTIMATES")
RETRY_TAGS = _SQL.text("RETRY_TAGS")
# Money
BUDGET_FIGURES = _SQL.text("BUDGET_FIGURES")
ADMIT_JOB = _SQL.asyncpg("ADMIT_JOB")
ADMITTED_JOB = _SQL.asyncpg("ADMITTED_JOB")
RESERVE = _SQL.text("RESERVE")
RELEASE_RESERVATION = _SQL.text("RELEASE_RESERVATION")
SETTLE_HELD = _SQL.asyncpg("SETTLE_HELD")
RELEASE_HELD = _SQL.text("RELEASE_HELD")
EXPIRED_HOLDS = _SQL.text("EXPIRED_HOLDS")
USAGE: dict[str, TextClause] = {"day": _SQL.text("USAGE_BY_DAY"), "model": _SQL.text("USAGE_BY_MODEL")}
# Callbacks
DELIVERY_FOR_ATTEMPT = _SQL.asyncpg("DELIVERY_FOR_ATTEMPT")
FREEZE_BODY = _SQL.asyncpg("FREEZE_BODY")
RECORD_ATTEMPT = _SQL.asyncpg("RECORD_ATTEMPT")
DEFER_FIRST_ATTEMPT = _SQL.text("DEFER_FIRST_ATTEMPT")
REDELIVER = _SQL.text("REDELIVER")
# Bulk actions
RETRY_MANY = _SQL.text("RETRY_MANY")
REDELIVERABLE = _SQL.text("REDELIVERABLE")
# Data lifecycle
MARK_DELETED = _SQL.text("MARK_DELETED")
RETENTION_BATCH = _SQL.text("RETENTION_BATCH")
SHORTEST_RETENTION = _SQL.text("SHORTEST_RETENTION")
EXTEND_ERASURE_LEASE = _SQL.text("EXTEND_ERASURE_LEASE")
ERASURE_OBJECTS = _SQL.text("ERASURE_OBJECTS")
ERASE_LOCK_JOBS = _SQL.text("ERASE_LOCK_JOBS")
FORGET_CALLBACK_URLS = _SQL.text("FORGET_CALLBACK_URLS")
ERASE_STATEMENTS = (_SQL.text("ERASE_JOB_DATA"), FORGET_CALLBACK_URLS, *(_SQL.text(name) for name in (
    "ERASE_DELIVERY_BODIES", "ERASE_OUTPUTS", "ERASE_WEBHOOK_BODIES", "ERASE_EVENT_DETAILS")))
FINISH_ERASURES = _SQL.text("FINISH_ERASURES")
RETRY_ERASURES = _SQL.text("RETRY_ERASURES")
# Keys, pages, health
LOOKUP_KEY = _SQL.asyncpg("LOOKUP_KEY")
JOB_WITH_OUTPUTS = _SQL.asyncpg("JOB_WITH_OUTPUTS")
HELD_JOB_WITH_OUTPUTS = _SQL.asyncpg("HELD_JOB_WITH_OUTPUTS")
PING = _SQL.text("PING")
PAGE_SETTINGS = _SQL.text("PAGE_SETTINGS")
# Metrics
FOLD_COUNTS = _SQL.text("FOLD_COUNTS")
JOB_COUNTS = _SQL.text("JOB_COUNTS")
JOB_WORK = _SQL.text("JOB_WORK")
DELIVERY_WORK = _SQL.text("DELIVERY_WORK")
WAITING = _SQL.text("WAITING")
JIT_SETTING = _SQL.asyncpg("JIT_SETTING")
_SQL.all_taken()

# LISTEN/NOTIFY channels: work became due / a job became terminal / a job's status
# changed (streams: the payload is the job id).
CHANNEL_WORK = "wsj_work"
CHANNEL_DONE = "wsj_done"
CHANNEL_JOB = "wsj_job"
