"""The ledger trigger releases a reservation with a statement of its own, not a call.

``jobs_ledger`` (revision 0010) ended every job with ``PERFORM ledger_release(id)``:
a SQL function, planned again on every call (PL/pgSQL keeps its own statements' plans
for the session; a SQL function called from them keeps nothing). A bulk cancel of 500
jobs spent 162-236 ms of its 245-409 ms UPDATE in that trigger; with the same INSERT
written in the PL/pgSQL body (its plan cached) the trigger took 44-60 ms and the whole
UPDATE 131-146 ms (EXPLAIN ANALYZE, load average ~17, alternating). The API shares the
database with bulk actions (goal: API p99 within 20 % of idle during a bulk cancel),
so what each canceled job costs there matters.

Same rows, same idempotence (``ON CONFLICT (job_id, kind) DO NOTHING``); the spend part
is 0010's unchanged. ``ledger_release`` stays for its other caller (queries.sql).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

JOBS_LEDGER = """
CREATE OR REPLACE FUNCTION jobs_ledger() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_job_id text := CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.status = 'completed' THEN
        INSERT INTO ledger (owner, job_id, kind, amount_usd, images, model, reserved_at)
        SELECT NEW.owner, NEW.id, 'spend', coalesce(NEW.cost_usd, r.amount_usd, 0),
               (SELECT count(*) FROM job_outputs o WHERE o.job_id = NEW.id
                  AND o.index < coalesce(r.images, (NEW.input ->> 'num_images')::integer, 1)),
               NEW.model, coalesce(r.reserved_at, NEW.created_at)
        FROM (SELECT 1) AS one
        LEFT JOIN ledger r ON r.job_id = NEW.id AND r.kind = 'reserve'
        ON CONFLICT (job_id, kind) DO NOTHING;
    END IF;
    -- ledger_release's statement, inline so that its plan is cached.
    INSERT INTO ledger (owner, job_id, kind, amount_usd, images, model, reserved_at)
    SELECT owner, job_id, 'release', amount_usd, images, model, reserved_at
    FROM ledger WHERE job_id = v_job_id AND kind = 'reserve'
    ON CONFLICT (job_id, kind) DO NOTHING;
    RETURN NULL;
END
$$
"""

# Revision 0010's function, exactly (copied: a revision imports no other).
JOBS_LEDGER_0010 = """
CREATE OR REPLACE FUNCTION jobs_ledger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.status = 'completed' THEN
        INSERT INTO ledger (owner, job_id, kind, amount_usd, images, model, reserved_at)
        SELECT NEW.owner, NEW.id, 'spend', coalesce(NEW.cost_usd, r.amount_usd, 0),
               (SELECT count(*) FROM job_outputs o WHERE o.job_id = NEW.id
                  AND o.index < coalesce(r.images, (NEW.input ->> 'num_images')::integer, 1)),
               NEW.model, coalesce(r.reserved_at, NEW.created_at)
        FROM (SELECT 1) AS one
        LEFT JOIN ledger r ON r.job_id = NEW.id AND r.kind = 'reserve'
        ON CONFLICT (job_id, kind) DO NOTHING;
    END IF;
    PERFORM ledger_release(CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END);
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.execute(JOBS_LEDGER)


def downgrade() -> None:
    op.execute(JOBS_LEDGER_0010)
