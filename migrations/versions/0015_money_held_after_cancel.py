"""Money after a cancel: a job canceled or timed out after its task was sent upstream
keeps its reservation while the provider may still make the task.

The provider bills a task it made whatever became of the job, so an owner whose jobs
were canceled after the submit could grow the provider's bill without limit (submit,
cancel, again), its budget untouched. Now:

* ``ledger_holds``: one row per such job (its reservation, its send and its deadline);
  ``jobs_ledger`` writes it instead of the release when the job ends that way;
* ``ledger_settle_held``: a late result (the job's own task completing or failing after
  the job ended) spends the images made at the price reserved, shows it as the job's
  ``cost_usd`` and releases the reservation; at the deadline the hold is released
  (service/work/holds.py);
* ``owner_money``: a held reservation counts as reserved (the horizon of the sum starts
  at the owner's oldest held reservation too).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

LEDGER_HOLDS = """
CREATE TABLE ledger_holds (
    job_id      text PRIMARY KEY,
    owner       text NOT NULL,
    reserved_at timestamptz NOT NULL,
    sent_at     timestamptz NOT NULL,
    deadline_at timestamptz,
    held_at     timestamptz NOT NULL DEFAULT now()
)
"""

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
    ELSIF TG_OP = 'UPDATE' AND NEW.submit_sent_at IS NOT NULL AND NEW.status IN ('canceled', 'timed_out')
          AND (NEW.deadline_at IS NULL OR NEW.deadline_at > now()) THEN
        INSERT INTO ledger_holds (job_id, owner, reserved_at, sent_at, deadline_at)
        SELECT job_id, owner, reserved_at, NEW.submit_sent_at, NEW.deadline_at
        FROM ledger WHERE job_id = NEW.id AND kind = 'reserve'
        ON CONFLICT (job_id) DO NOTHING;
        IF FOUND THEN
            RETURN NULL;
        END IF;
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

LEDGER_SETTLE_HELD = """
CREATE OR REPLACE FUNCTION ledger_settle_held(p_job_ids text[], p_made integer[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_spent integer;
BEGIN
    -- The documented lock order: the jobs first, in id order; then what belongs to them.
    PERFORM 1 FROM jobs WHERE id = ANY(p_job_ids) ORDER BY id FOR UPDATE;
    WITH made AS (
        SELECT r.owner, r.job_id, r.model, r.reserved_at, least(m.made, r.images) AS images,
               r.amount_usd / greatest(r.images, 1) * least(m.made, r.images) AS cost
        FROM unnest(p_job_ids, coalesce(p_made, '{}'::integer[])) AS m(job_id, made)
        JOIN ledger r ON r.job_id = m.job_id AND r.kind = 'reserve'
        JOIN jobs j ON j.id = m.job_id
        WHERE m.made > 0 AND j.status IN ('canceled', 'timed_out', 'failed') AND j.submit_sent_at IS NOT NULL
    ), spent AS (
        INSERT INTO ledger (owner, job_id, kind, amount_usd, images, model, reserved_at)
        SELECT owner, job_id, 'spend', cost, images, model, reserved_at FROM made
        ON CONFLICT (job_id, kind) DO NOTHING
        RETURNING job_id, amount_usd, images
    ), costed AS (
        UPDATE jobs j SET cost_usd = s.amount_usd FROM spent s WHERE j.id = s.job_id
    ), logged AS (
        INSERT INTO job_events (job_id, type, detail)
        SELECT s.job_id, 'cost.charged',
               jsonb_build_object('cost_usd', s.amount_usd::text, 'images', s.images,
                                  'why', 'the provider made the task after the job had ended')
        FROM spent s
    )
    SELECT count(*) INTO v_spent FROM spent;
    INSERT INTO ledger (owner, job_id, kind, amount_usd, images, model, reserved_at)
    SELECT owner, job_id, 'release', amount_usd, images, model, reserved_at
    FROM ledger WHERE job_id = ANY(p_job_ids) AND kind = 'reserve'
    ON CONFLICT (job_id, kind) DO NOTHING;
    DELETE FROM ledger_holds WHERE job_id = ANY(p_job_ids);
    RETURN v_spent;
END
$$
"""

OWNER_MONEY = """
CREATE OR REPLACE FUNCTION owner_money(p_owner text, p_start timestamptz, p_end timestamptz)
RETURNS TABLE (spent numeric, reserved numeric) LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    WITH horizon AS (
        SELECT LEAST(
            (SELECT min(j.created_at) FROM jobs j WHERE j.owner = p_owner AND j.status = 'queued'),
            (SELECT min(j.created_at) FROM jobs j WHERE j.owner = p_owner AND j.status = 'submitted'),
            (SELECT min(j.created_at) FROM jobs j WHERE j.owner = p_owner AND j.status = 'processing'),
            (SELECT min(j.created_at) FROM jobs j WHERE j.owner = p_owner AND j.status = 'storing'),
            (SELECT min(h.reserved_at) FROM ledger_holds h WHERE h.owner = p_owner)) AS h
    )
    SELECT
        coalesce((SELECT sum(l.amount_usd) FROM ledger l
                  WHERE l.owner = p_owner AND l.kind = 'spend' AND l.at >= p_start AND l.at < p_end), 0),
        coalesce((SELECT sum(CASE l.kind WHEN 'reserve' THEN l.amount_usd ELSE -l.amount_usd END)
                  FROM ledger l, horizon
                  WHERE l.owner = p_owner AND l.kind IN ('reserve', 'release') AND l.reserved_at >= horizon.h), 0);
END
$$
"""

# Revision 0011's and 0010's functions, exactly (copied: a revision imports no other).
JOBS_LEDGER_0011 = """
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

OWNER_MONEY_0010 = """
CREATE OR REPLACE FUNCTION owner_money(p_owner text, p_start timestamptz, p_end timestamptz)
RETURNS TABLE (spent numeric, reserved numeric) LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    WITH horizon AS (
        SELECT LEAST(
            (SELECT min(j.created_at) FROM jobs j WHERE j.owner = p_owner AND j.status = 'queued'),
            (SELECT min(j.created_at) FROM jobs j WHERE j.owner = p_owner AND j.status = 'submitted'),
            (SELECT min(j.created_at) FROM jobs j WHERE j.owner = p_owner AND j.status = 'processing'),
            (SELECT min(j.created_at) FROM jobs j WHERE j.owner = p_owner AND j.status = 'storing')) AS h
    )
    SELECT
        coalesce((SELECT sum(l.amount_usd) FROM ledger l
                  WHERE l.owner = p_owner AND l.kind = 'spend' AND l.at >= p_start AND l.at < p_end), 0),
        coalesce((SELECT sum(CASE l.kind WHEN 'reserve' THEN l.amount_usd ELSE -l.amount_usd END)
                  FROM ledger l, horizon
                  WHERE l.owner = p_owner AND l.kind IN ('reserve', 'release') AND l.reserved_at >= horizon.h), 0);
END
$$
"""


def upgrade() -> None:
    op.execute(LEDGER_HOLDS)
    op.execute("CREATE INDEX ledger_holds_owner ON ledger_holds (owner, reserved_at)")
    op.execute(JOBS_LEDGER)
    op.execute(LEDGER_SETTLE_HELD)
    op.execute(OWNER_MONEY)


def downgrade() -> None:
    op.execute(OWNER_MONEY_0010)
    op.execute(JOBS_LEDGER_0011)
    op.execute("DROP FUNCTION ledger_settle_held(text[], integer[])")
    op.execute("DROP TABLE ledger_holds")
