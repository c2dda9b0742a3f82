"""Admission as one statement: the owner's row is held for the server's work alone.

Before, a submit locked its owner's row and then made six more round trips from the
API process (idempotency lookup, turn, insert, budget figures, reservation, event)
and the COMMIT. Every submit of one owner waits for that row, so under a burst the
holder's round trips, each queued behind hundreds of other requests on the API's event
loop, were paid one owner-submit after another: answer p99 of 13–22 s for 500
concurrent submits (bench_budget).

``admit_job`` does the same steps in the same order inside the server, and is called
as a statement of its own outside any transaction block, so the server commits it
before answering: the row is held from the lock to the commit with no client round
trip in between. PL/pgSQL runs each statement with a new snapshot (READ COMMITTED), so
the figures read after the lock see every reservation committed by the submit that
held it before: the check cannot be raced past (no overshoot).

The money figures (``owner_money``) and the turn (``owner_next_vtag``) are functions
so that admission, the API's figures (service/db/ledger.py) and a bulk retry's turns
(service/db/fairness.py) read them from one definition.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# Spent this period and reserved now (service/db/ledger.py explains the horizon: the
# owner's oldest active job; four index probes of (owner, status, created_at)).
OWNER_MONEY = """
CREATE FUNCTION owner_money(p_owner text, p_start timestamptz, p_end timestamptz)
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

# A job's place in its owner's weighted turn (service/db/fairness.py): after the owner's
# last waiting tag at that priority, or at virtual time (the lowest head among owners
# that may send now), plus 1 / weight.
OWNER_NEXT_VTAG = """
CREATE FUNCTION owner_next_vtag(p_owner text, p_priority integer, p_weight integer, p_max_in_flight integer)
RETURNS double precision LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN greatest(
        (SELECT max(j.vtag) FROM jobs j
         WHERE j.owner = p_owner AND j.priority = p_priority AND j.status = 'queued'
           AND j.submit_sent_at IS NULL),
        (SELECT min(h.vtag) FROM owners o
         CROSS JOIN LATERAL (
             SELECT j.vtag FROM jobs j
             WHERE j.owner = o.name AND j.priority = p_priority AND j.status = 'queued'
               AND j.submit_sent_at IS NULL
             ORDER BY j.vtag LIMIT 1) AS h
         WHERE NOT o.paused
           AND (o.max_in_flight IS NULL OR owner_in_flight(o.name, p_max_in_flight) < o.max_in_flight)),
        0) + 1.0 / greatest(p_weight, 1);
END
$$
"""

ADMIT_JOB = """
CREATE FUNCTION admit_job(
    p_id text, p_owner text, p_model text, p_input jsonb, p_metadata jsonb, p_callback_url text,
    p_idempotency_key text, p_request_hash text, p_priority integer, p_start_timeout_seconds integer,
    p_estimate numeric, p_images integer, p_provider_max_in_flight integer,
    p_month_start timestamptz, p_month_end timestamptz, p_channel text)
RETURNS TABLE (verdict text, job_id text, budget numeric, spent numeric, reserved numeric)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_owner owners%ROWTYPE;
    v_first jobs%ROWTYPE;
    v_spent numeric := 0;
    v_reserved numeric := 0;
    v_created timestamptz;
BEGIN
    -- The owner's row, locked until this statement's transaction commits (created if a
    -- key made before owners existed names it).
    SELECT * INTO v_owner FROM owners WHERE name = p_owner FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO owners (name) VALUES (p_owner) ON CONFLICT DO NOTHING;
        SELECT * INTO STRICT v_owner FROM owners WHERE name = p_owner FOR UPDATE;
    END IF;
    -- An Idempotency-Key replay finds its first job before any money moves.
    IF p_idempotency_key IS NOT NULL THEN
        SELECT * INTO v_first FROM jobs WHERE owner = p_owner AND idempotency_key = p_idempotency_key;
        IF FOUND THEN
            RETURN QUERY SELECT CASE WHEN v_first.request_hash IS DISTINCT FROM p_request_hash
                                     THEN 'conflict' ELSE 'replay' END,
                                v_first.id, v_owner.monthly_budget_usd, NULL::numeric, NULL::numeric;
            RETURN;
        END IF;
    END IF;
    IF v_owner.monthly_budget_usd IS NOT NULL THEN
        SELECT m.spent, m.reserved INTO v_spent, v_reserved FROM owner_money(p_owner, p_month_start, p_month_end) m;
        IF p_estimate > v_owner.monthly_budget_usd - v_spent - v_reserved THEN
            RETURN QUERY SELECT 'budget_exceeded', NULL::text, v_owner.monthly_budget_usd, v_spent, v_reserved;
            RETURN;
        END IF;
    END IF;
    INSERT INTO jobs (id, owner, model, input, metadata, callback_url, idempotency_key, request_hash, status,
                      run_after, priority, vtag, start_timeout_seconds, start_deadline_at)
    VALUES (p_id, p_owner, p_model, p_input, p_metadata, p_callback_url, p_idempotency_key, p_request_hash,
            'queued', now(), p_priority,
            owner_next_vtag(p_owner, p_priority, v_owner.weight, p_provider_max_in_flight),
            p_start_timeout_seconds, now() + make_interval(secs => p_start_timeout_seconds))
    RETURNING created_at INTO v_created;
    INSERT INTO ledger (owner, job_id, kind, amount_usd, images, model, reserved_at)
    VALUES (p_owner, p_id, 'reserve', p_estimate, p_images, p_model, v_created)
    ON CONFLICT (job_id, kind) DO NOTHING;
    INSERT INTO job_events (job_id, type, detail) VALUES (p_id, 'job.created', jsonb_build_object('model', p_model));
    PERFORM pg_notify(p_channel, 'submit');
    RETURN QUERY SELECT 'created', p_id, v_owner.monthly_budget_usd, v_spent, v_reserved;
END
$$
"""


# A completion's spend counts the images the job asked for at most: a provider that
# returns more is neither stored nor paid for (service/work/storer.py caps cost_usd the
# same way), so the usage figures cannot show more images than were reserved.
JOBS_LEDGER = """
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
    for statement in (OWNER_MONEY, OWNER_NEXT_VTAG, ADMIT_JOB, JOBS_LEDGER):
        op.execute(statement)


def _jobs_ledger_0006() -> None:
    """Revision 0006's trigger function, exactly as it created it (copied: a revision
    imports no other)."""
    # A job's end settles its money in the same statement: completion spends the job's
    # cost_usd (set in that same UPDATE) for its stored outputs; every end releases.
    op.execute(
        """
        CREATE OR REPLACE FUNCTION jobs_ledger() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'UPDATE' AND NEW.status = 'completed' THEN
                INSERT INTO ledger (owner, job_id, kind, amount_usd, images, model, reserved_at)
                SELECT NEW.owner, NEW.id, 'spend', coalesce(NEW.cost_usd, r.amount_usd, 0),
                       (SELECT count(*) FROM job_outputs o WHERE o.job_id = NEW.id),
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
    )


def downgrade() -> None:
    _jobs_ledger_0006()
    op.execute("DROP FUNCTION IF EXISTS admit_job(text, text, text, jsonb, jsonb, text, text, text, integer, integer, "
               "numeric, integer, integer, timestamptz, timestamptz, text)")
    op.execute("DROP FUNCTION IF EXISTS owner_next_vtag(text, integer, integer, integer)")
    op.execute("DROP FUNCTION IF EXISTS owner_money(text, timestamptz, timestamptz)")
