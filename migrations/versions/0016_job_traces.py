"""Every job keeps its trace: ``jobs.traceparent``, the W3C trace context of its admission span.

Work done for a job later, in any process (the upstream submit, the webhook, each output
copy, each callback attempt, a reconciliation, an erasure), is a span whose parent is
this context, so one job is one trace (service/observability/tracing.py). ``admit_job``
takes it as a new last argument and writes it with the job; jobs made before this
revision have none (their answer's ``trace_id`` is null).

The column is added without a default: no table rewrite, no scan. The new argument
defaults to NULL, so a process of the previous release still running during an upgrade
keeps admitting jobs (without a trace) with its 16 arguments.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-08
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

OLD_SIGNATURE = ("text, text, text, jsonb, jsonb, text, text, text, integer, integer, "
                 "numeric, integer, integer, timestamptz, timestamptz, text")

ADMIT_JOB = """
CREATE FUNCTION admit_job(
    p_id text, p_owner text, p_model text, p_input jsonb, p_metadata jsonb, p_callback_url text,
    p_idempotency_key text, p_request_hash text, p_priority integer, p_start_timeout_seconds integer,
    p_estimate numeric, p_images integer, p_provider_max_in_flight integer,
    p_month_start timestamptz, p_month_end timestamptz, p_channel text, p_traceparent text DEFAULT NULL)
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
                      run_after, priority, vtag, start_timeout_seconds, start_deadline_at, traceparent)
    VALUES (p_id, p_owner, p_model, p_input, p_metadata, p_callback_url, p_idempotency_key, p_request_hash,
            'queued', now(), p_priority,
            owner_next_vtag(p_owner, p_priority, v_owner.weight, p_provider_max_in_flight),
            p_start_timeout_seconds, now() + make_interval(secs => p_start_timeout_seconds), p_traceparent)
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

ADMIT_JOB_0010 = """
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


def upgrade() -> None:
    op.execute("ALTER TABLE jobs ADD COLUMN traceparent text")
    op.execute(f"DROP FUNCTION admit_job({OLD_SIGNATURE})")
    op.execute(ADMIT_JOB)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION admit_job({OLD_SIGNATURE}, text)")
    op.execute(ADMIT_JOB_0010)
    op.execute("ALTER TABLE jobs DROP COLUMN traceparent")
