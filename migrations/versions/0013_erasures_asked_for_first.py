"""Erasures someone asked for (``DELETE /v1/jobs/{id}``, a bulk delete) are claimed before
retention's.

The eraser claimed the oldest due erasure first (``erasures_due``, on ``run_after``), so a
job deleted during a retention backlog waited behind all of it; and retention now paces
itself to ~3 % of the time (``LIFECYCLE_PAUSE_FACTOR`` 30), so a backlog of 100,000 is
about 12 minutes of waiting. The claim now orders by ``(reason = 'retention'), run_after``
(service/db/queries.py ``CLAIM_ERASURES``), on this index instead of the old one (one
index either way: no more WAL per erasure row).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX erasures_due_first ON erasures ((reason = 'retention'), run_after)")
    op.execute("DROP INDEX erasures_due")


def downgrade() -> None:
    op.execute("CREATE INDEX erasures_due ON erasures (run_after)")
    op.execute("DROP INDEX erasures_due_first")
