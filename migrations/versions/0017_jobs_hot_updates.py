"""Fewer index entries per status change of a job, and room on its page for the updates
that need none.

- ``jobs_submit_sent`` goes. It served revision 0001's provider throttle (recent submits
  counted by time); since revision 0006 the throttle is provider_slots and rate tokens,
  and every in-flight check is a probe of ``jobs_pkey`` (revision 0012). No statement
  reads it, yet every UPDATE of a sent job that is not HOT (the move to submitted, to
  processing, to storing, to its end: four a job) wrote an entry into it.
- ``jobs`` gets fillfactor 90: a new row version can stay on its page (a HOT update: no
  entry in any of the table's indexes, of which a status change writes about nine) only
  if the page has room, and rows inserted into pages filled to 100 % leave none. The
  updates that touch no indexed column (a claim's or a renewal's lease and attempts, a
  callback's state mirrored on its job, news that moves nothing) find 10 % of the page
  free. Only pages written from now on are filled to 90 %: no rewrite, no lock held long.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX IF EXISTS jobs_submit_sent")
    op.execute("ALTER TABLE jobs SET (fillfactor = 90)")


def downgrade() -> None:
    op.execute("ALTER TABLE jobs RESET (fillfactor)")
    op.execute("CREATE INDEX jobs_submit_sent ON jobs (submit_sent_at) WHERE submit_sent_at IS NOT NULL")
