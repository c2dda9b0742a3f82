"""Data lifecycle: deletion as a duty row, tombstones, retention, retries.

- ``jobs.deleted_at`` / ``deleted_reason``: a deleted job stays as a tombstone (status,
  times, cost); the API shows it without input, metadata or outputs from the moment
  ``deleted_at`` is set.
- ``erasures``: one row per job whose data must still be erased (S3 objects, input,
  metadata, webhook and callback bodies, event details). It is inserted in the same
  transaction that sets ``deleted_at`` and removed in the same transaction that erases
  the rows, so a job is never left half erased with no duty due (service/work/eraser.py).
- ``jobs_retention``: the retention sweep walks terminal, undeleted jobs by completion.
- ``jobs.retry_of``: a bulk retry's new job names the job it retries.

Revision ID: 0007
Revises: 0004
Create Date: 2026-12-02
"""

from alembic import op

revision = "0007"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE jobs ADD COLUMN deleted_at timestamptz, ADD COLUMN deleted_reason text,"
               " ADD COLUMN retry_of text")
    op.execute(
        """
        CREATE TABLE erasures (
            job_id       text PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
            reason       text NOT NULL,
            requested_at timestamptz NOT NULL DEFAULT now(),
            run_after    timestamptz NOT NULL DEFAULT now(),
            attempts     integer NOT NULL DEFAULT 0,
            locked_until timestamptz,
            locked_by    text,
            last_error   text
        )
        """
    )
    op.execute("CREATE INDEX erasures_due ON erasures (run_after)")
    op.execute("CREATE INDEX erasures_locked_by ON erasures (locked_by) WHERE locked_by IS NOT NULL")
    op.execute("CREATE INDEX jobs_retention ON jobs (completed_at)"
               " WHERE deleted_at IS NULL AND completed_at IS NOT NULL")
    op.execute("CREATE INDEX jobs_retry_of ON jobs (retry_of) WHERE retry_of IS NOT NULL")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS jobs_retry_of")
    op.execute("DROP INDEX IF EXISTS jobs_retention")
    op.execute("DROP TABLE IF EXISTS erasures")
    op.execute("ALTER TABLE jobs DROP COLUMN IF EXISTS retry_of, DROP COLUMN IF EXISTS deleted_reason,"
               " DROP COLUMN IF EXISTS deleted_at")
