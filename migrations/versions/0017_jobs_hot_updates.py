"""Fewer index entries per status change of a job, and room on its page for the updates
that need none.

- ``jobs_submit_sent`` goes. It served revision 0001's provider throttle (recent submits
  counted by time); since revision 0006 the throttle is provider_slots and rate tokens,
  and every in-flight check is a probe of ``jobs_pkey`` (revision 0012). No statement
  reads it, yet every UPDATE of a sent job that is not HOT (the move to submitted, to
  processing, to storing, to its end: four a job) wrote an entry into it.
- ``jobs_active`` (status, model of the active jobs: the live part of the metrics' job
  counts) and ``jobs_due`` (status, run_after of the jobs that carry a run_after: the
  active ones) held the same rows and took an entry each on every status change of an
  active job (five a job). One index now serves both: ``jobs_due`` on (status,
  run_after) with model included, over the active statuses. A claim states the active
  statuses beside its own (queries.CLAIM_JOBS), so the planner can prove it may use it.
- ``jobs_provider_task_id_key`` holds only the jobs that have a task id (a partial unique
  index instead of the UNIQUE constraint, which indexed every NULL): the job's insert and
  its submit claim, before the task exists, no longer write an entry into it. Every
  lookup by task id compares it with ``=``, which implies it is not NULL.
- ``jobs`` gets fillfactor 90: a new row version can stay on its page (a HOT update: no
  entry in any of the table's indexes, of which a status change writes about nine) only
  if the page has room, and rows inserted into pages filled to 100 % leave none. The
  updates that touch no indexed column (a claim's or a renewal's lease and attempts, a
  callback's state mirrored on its job, news that moves nothing) find 10 % of the page
  free. Only pages written from now on are filled to 90 %: no rewrite, no lock held long.

The new indexes are built by plain CREATE INDEX, as every earlier revision builds its
indexes: writes to jobs wait for the build (one scan of the table). A process of the
previous release still running claims storing and reconciled jobs without naming the
active statuses, so it cannot use the new jobs_due: its claims scan jobs (and answer the
same) until it is replaced (docs/deploy.md, a rolling upgrade).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

ACTIVE = "('queued', 'submitted', 'processing', 'storing')"


def upgrade() -> None:
    op.execute("DROP INDEX IF EXISTS jobs_submit_sent")
    op.execute(f"CREATE INDEX jobs_due_active ON jobs (status, run_after) INCLUDE (model) WHERE status IN {ACTIVE}")
    op.execute("DROP INDEX jobs_due")
    op.execute("DROP INDEX jobs_active")
    op.execute("ALTER INDEX jobs_due_active RENAME TO jobs_due")
    op.execute("CREATE UNIQUE INDEX jobs_provider_task_id ON jobs (provider_task_id) "
               "WHERE provider_task_id IS NOT NULL")
    op.execute("ALTER TABLE jobs DROP CONSTRAINT jobs_provider_task_id_key")
    op.execute("ALTER INDEX jobs_provider_task_id RENAME TO jobs_provider_task_id_key")
    op.execute("ALTER TABLE jobs SET (fillfactor = 90)")


def downgrade() -> None:
    op.execute("ALTER TABLE jobs RESET (fillfactor)")
    op.execute("DROP INDEX jobs_provider_task_id_key")
    op.execute("ALTER TABLE jobs ADD CONSTRAINT jobs_provider_task_id_key UNIQUE (provider_task_id)")
    op.execute("DROP INDEX jobs_due")
    op.execute("CREATE INDEX jobs_due ON jobs (status, run_after) WHERE run_after IS NOT NULL")
    op.execute(f"CREATE INDEX jobs_active ON jobs (status, model) WHERE status IN {ACTIVE}")
    op.execute("CREATE INDEX jobs_submit_sent ON jobs (submit_sent_at) WHERE submit_sent_at IS NOT NULL")
