"""Initial schema: jobs, outputs, webhook and job events, deliveries, API keys, secrets.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATUSES = "'queued','submitted','processing','storing','completed','failed','canceled','timed_out'"


def upgrade() -> None:
    op.execute(
        f"""
        CREATE TABLE jobs (
            id                text PRIMARY KEY,
            owner             text NOT NULL,
            model             text NOT NULL,
            status            text NOT NULL DEFAULT 'queued' CHECK (status IN ({STATUSES})),
            input             jsonb NOT NULL,
            metadata          jsonb NOT NULL DEFAULT '{{}}'::jsonb,
            callback_url      text,
            idempotency_key   text,
            request_hash      text,
            provider_task_id  text UNIQUE,
            provider_status   text,
            error             text,
            has_nsfw_contents jsonb,
            inference_ms      integer,
            cost_usd          numeric(12, 4),
            run_after         timestamptz,
            attempts          integer NOT NULL DEFAULT 0,
            locked_until      timestamptz,
            locked_by         text,
            submit_sent_at    timestamptz,
            deadline_at       timestamptz,
            last_news_at      timestamptz,
            callback_status   text,
            callback_attempts integer NOT NULL DEFAULT 0,
            created_at        timestamptz NOT NULL DEFAULT now(),
            updated_at        timestamptz NOT NULL DEFAULT now(),
            submitted_at      timestamptz,
            completed_at      timestamptz
        )
        """
    )
    # Idempotency-Key is scoped to the API key's owner.
    op.execute(
        "CREATE UNIQUE INDEX jobs_owner_idempotency ON jobs (owner, idempotency_key) "
        "WHERE idempotency_key IS NOT NULL"
    )
    # History: newest first per owner, with the id as the keyset tie-breaker.
    op.execute("CREATE INDEX jobs_owner_created ON jobs (owner, created_at DESC, id DESC)")
    op.execute("CREATE INDEX jobs_owner_status_created ON jobs (owner, status, created_at DESC, id DESC)")
    op.execute("CREATE INDEX jobs_owner_model_created ON jobs (owner, model, created_at DESC, id DESC)")
    op.execute("CREATE INDEX jobs_metadata ON jobs USING gin (metadata jsonb_path_ops)")
    # Work due: only active jobs carry run_after, so this index stays small.
    op.execute("CREATE INDEX jobs_due ON jobs (status, run_after) WHERE run_after IS NOT NULL")
    # The provider throttle of this revision counts recent submits.
    op.execute("CREATE INDEX jobs_submit_sent ON jobs (submit_sent_at) WHERE submit_sent_at IS NOT NULL")

    op.execute(
        """
        CREATE TABLE job_outputs (
            job_id        text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            index         integer NOT NULL,
            source_url    text NOT NULL,
            key           text,
            content_type  text,
            size_bytes    bigint,
            sha256        text,
            thumbnail_key text,
            stored_at     timestamptz,
            PRIMARY KEY (job_id, index)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE webhook_events (
            id          bigserial PRIMARY KEY,
            webhook_id  text NOT NULL UNIQUE,
            job_id      text,
            task_id     text,
            received_at timestamptz NOT NULL DEFAULT now(),
            body        jsonb NOT NULL,
            outcome     text NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX webhook_events_job ON webhook_events (job_id)")
    op.execute(
        """
        CREATE TABLE job_events (
            id     bigserial PRIMARY KEY,
            job_id text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            at     timestamptz NOT NULL DEFAULT clock_timestamp(),
            type   text NOT NULL,
            detail jsonb NOT NULL DEFAULT '{}'::jsonb
        )
        """
    )
    op.execute("CREATE INDEX job_events_job ON job_events (job_id, id)")
    op.execute(
        """
        CREATE TABLE deliveries (
            id               text PRIMARY KEY,
            job_id           text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            event_type       text NOT NULL,
            url              text NOT NULL,
            body             text NOT NULL,
            status           text NOT NULL DEFAULT 'pending'
                             CHECK (status IN ('pending','delivered','failed')),
            attempts         integer NOT NULL DEFAULT 0,
            next_attempt_at  timestamptz,
            locked_until     timestamptz,
            locked_by        text,
            last_status_code integer,
            last_error       text,
            created_at       timestamptz NOT NULL DEFAULT now(),
            delivered_at     timestamptz
        )
        """
    )
    op.execute("CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending'")
    op.execute("CREATE INDEX deliveries_job ON deliveries (job_id, created_at)")
    op.execute(
        """
        CREATE TABLE api_keys (
            id         bigserial PRIMARY KEY,
            owner      text NOT NULL,
            key_hash   text NOT NULL UNIQUE,
            prefix     text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            revoked_at timestamptz
        )
        """
    )
    op.execute(
        """
        CREATE TABLE service_secrets (
            name       text PRIMARY KEY,
            value      text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    for table in ("service_secrets", "api_keys", "deliveries", "job_events", "webhook_events", "job_outputs", "jobs"):
        op.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
