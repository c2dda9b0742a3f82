"""Owners as tenants: the owners table, richer API keys, the money ledger, job priority and
start timeout, and the provider throttle as slots claimed with SKIP LOCKED.

* ``owners`` (keyed by the name api_keys.owner and jobs.owner hold), backfilled from both.
* ``api_keys`` gains a public id (``key_…``), a label, an expiry and ``last_used_at``.
* ``ledger``: append-only reservations, spends and releases. Every figure of money
  (GET /v1/owner, /v1/usage, the history page, /metrics) is a sum of it. A reservation
  is written with the job (service/db/ledger.py); the release and the spend are written
  by the trigger ``jobs_ledger`` in the very UPDATE that ends the job, so every path
  that ends a job (transition(), provider news in batches (APPLY_NEWS), anything
  written later) settles the money in the same transaction. ``ledger_release(job_id)``
  is the one statement for "release this job's reservation" (idempotent).
* ``jobs.priority`` (0–9), ``jobs.vtag`` (the job's place in its owner's weighted turn,
  given at admission: service/db/fairness.py), ``jobs.start_deadline_at``.
* ``provider_slots`` (one row per task allowed in flight) and ``provider_rate_tokens``
  (one row per submit allowed per minute): a submit takes a free one of each with
  ``FOR UPDATE SKIP LOCKED`` (``claim_submits``), so concurrent claimers never wait on
  one lock. A slot is free when the job it last held is no longer in flight: nothing on
  the hot path of a job's later transitions has to free it.

Revision ID: 0006
Revises: 0008
Create Date: 2026-12-02
"""

from typing import Any

from alembic import op

revision = "0006"
down_revision = "0008"
branch_labels = None
depends_on = None

ACTIVE = "'queued','submitted','processing','storing'"
TERMINAL = "'completed','failed','canceled','timed_out'"
OWNER_CAP_LOCK = 0x7773_6A03  # "wsj" owner max_in_flight (throttle used ...01, count fold ...02)


def _owners_and_keys() -> None:
    op.execute(
        """
        CREATE TABLE owners (
            name               text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 200),
            monthly_budget_usd numeric(14, 4) CHECK (monthly_budget_usd >= 0),
            max_in_flight      integer CHECK (max_in_flight >= 1),
            weight             integer NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 1000),
            paused             boolean NOT NULL DEFAULT false,
            retention_days     integer CHECK (retention_days >= 1),
            created_at         timestamptz NOT NULL DEFAULT now(),
            updated_at         timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # Distinct owners of jobs by a loose index scan (one probe per owner), not a read of
    # every job.
    op.execute(
        """
        INSERT INTO owners (name)
        SELECT owner FROM api_keys
        UNION
        SELECT owner FROM (
            WITH RECURSIVE o(owner) AS (
                SELECT min(owner) FROM jobs
                UNION ALL
                SELECT (SELECT min(owner) FROM jobs WHERE owner > o.owner) FROM o WHERE o.owner IS NOT NULL)
            SELECT owner FROM o WHERE owner IS NOT NULL) AS j
        ON CONFLICT DO NOTHING
        """
    )
    op.execute(
        """
        ALTER TABLE api_keys
            ADD COLUMN public_id    text,
            ADD COLUMN label        text,
            ADD COLUMN expires_at   timestamptz,
            ADD COLUMN last_used_at timestamptz
        """
    )
    op.execute("UPDATE api_keys SET public_id = 'key_' || substr(md5(random()::text || id::text), 1, 24)")
    op.execute("ALTER TABLE api_keys ALTER COLUMN public_id SET NOT NULL")
    op.execute("CREATE UNIQUE INDEX api_keys_public_id ON api_keys (public_id)")
    op.execute("CREATE INDEX api_keys_owner ON api_keys (owner, created_at)")


def _jobs_columns() -> None:
    op.execute(
        """
        ALTER TABLE jobs
            ADD COLUMN priority              smallint NOT NULL DEFAULT 5,
            ADD COLUMN vtag                  double precision NOT NULL DEFAULT 0,
            ADD COLUMN start_timeout_seconds integer,
            ADD COLUMN start_deadline_at     timestamptz
        """
    )
    # NOT VALID: enforced for every new or changed row without rereading the history.
    op.execute("ALTER TABLE jobs ADD CONSTRAINT jobs_priority_range CHECK (priority BETWEEN 0 AND 9) NOT VALID")
    # The fair-share claim: per owner, its most urgent waiting job in turn order. Only
    # queued jobs not yet being sent are in it, so it is as small as the backlog.
    op.execute(
        "CREATE INDEX jobs_fair_queue ON jobs (owner, priority, vtag, id) "
        "WHERE status = 'queued' AND submit_sent_at IS NULL"
    )
    # Queued jobs whose send began and whose worker died: recovered, never re-sent blindly.
    op.execute(
        "CREATE INDEX jobs_queued_sent ON jobs (run_after) WHERE status = 'queued' AND submit_sent_at IS NOT NULL"
    )
    op.execute(
        "CREATE INDEX jobs_start_deadline ON jobs (start_deadline_at) "
        "WHERE status = 'queued' AND start_deadline_at IS NOT NULL"
    )


def _ledger() -> None:
    op.execute(
        """
        CREATE TABLE ledger (
            id          bigserial PRIMARY KEY,
            owner       text NOT NULL,
            job_id      text NOT NULL,
            kind        text NOT NULL CHECK (kind IN ('reserve', 'spend', 'release')),
            amount_usd  numeric(14, 4) NOT NULL CHECK (amount_usd >= 0),
            images      integer NOT NULL,
            model       text NOT NULL,
            reserved_at timestamptz NOT NULL,
            at          timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # A job is reserved, spent and released at most once each: a replayed end changes nothing.
    op.execute("CREATE UNIQUE INDEX ledger_job_kind ON ledger (job_id, kind)")
    # Spend in a period (the month's spend, /v1/usage), read from the index alone.
    op.execute(
        "CREATE INDEX ledger_owner_spend ON ledger (owner, at) INCLUDE (amount_usd, images, model) "
        "WHERE kind = 'spend'"
    )
    # Outstanding reservations: reserve − release since the owner's oldest active job
    # (service/db/ledger.py explains why that bound is exact).
    op.execute(
        "CREATE INDEX ledger_owner_reserved ON ledger (owner, reserved_at) INCLUDE (kind, amount_usd) "
        "WHERE kind IN ('reserve', 'release')"
    )
    op.execute(
        """
        CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the ledger is append-only';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ledger "
        "FOR EACH ROW EXECUTE FUNCTION ledger_append_only()"
    )
    # The one statement that releases a job's reservation (idempotent; nothing to release
    # for a job admitted before the ledger existed).
    op.execute(
        """
        CREATE FUNCTION ledger_release(p_job_id text) RETURNS void LANGUAGE sql AS $$
            INSERT INTO ledger (owner, job_id, kind, amount_usd, images, model, reserved_at)
            SELECT owner, job_id, 'release', amount_usd, images, model, reserved_at
            FROM ledger WHERE job_id = p_job_id AND kind = 'reserve'
            ON CONFLICT (job_id, kind) DO NOTHING
        $$
        """
    )
    ledger_trigger_function(op)
    op.execute(
        f"""
        CREATE TRIGGER jobs_ledger AFTER UPDATE OF status ON jobs FOR EACH ROW
        WHEN (OLD.status IN ({ACTIVE}) AND NEW.status IN ({TERMINAL}))
        EXECUTE FUNCTION jobs_ledger()
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER jobs_ledger_delete AFTER DELETE ON jobs FOR EACH ROW
        WHEN (OLD.status IN ({ACTIVE}))
        EXECUTE FUNCTION jobs_ledger()
        """
    )


def ledger_trigger_function(op: Any) -> None:
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


def _throttle() -> None:
    op.execute("CREATE TABLE provider_slots (slot integer PRIMARY KEY, job_id text, owner text)")
    op.execute(
        """
        CREATE TABLE provider_rate_tokens (
            token   integer PRIMARY KEY,
            used_at timestamptz NOT NULL DEFAULT '-infinity',
            job_id  text,
            owner   text
        )
        """
    )
    op.execute("CREATE INDEX provider_rate_tokens_used ON provider_rate_tokens (used_at)")
    # In flight = sent (or being sent) and not yet heard to be finished: what the
    # provider counts against the account's concurrency.
    op.execute(
        """
        CREATE FUNCTION job_in_flight(p_job_id text) RETURNS boolean LANGUAGE sql STABLE AS $$
            SELECT EXISTS (SELECT 1 FROM jobs WHERE id = p_job_id AND submit_sent_at IS NOT NULL
                           AND status IN ('queued', 'submitted', 'processing'))
        $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION provider_free_token(p_max integer) RETURNS integer LANGUAGE sql AS $$
            SELECT token FROM provider_rate_tokens
            WHERE used_at <= now() - interval '60 seconds' AND token < p_max
            ORDER BY used_at LIMIT 1
            FOR UPDATE SKIP LOCKED
        $$
        """
    )
    claim_functions(op)


def claim_functions(op: Any) -> None:
    op.execute(
        """
        CREATE OR REPLACE FUNCTION provider_free_slot(p_max integer) RETURNS integer LANGUAGE sql AS $$
            SELECT slot FROM provider_slots
            WHERE slot < p_max AND (job_id IS NULL OR NOT job_in_flight(job_id))
            ORDER BY slot LIMIT 1
            FOR UPDATE SKIP LOCKED
        $$
        """
    )
    op.execute(
        """
        CREATE OR REPLACE FUNCTION owner_in_flight(p_owner text, p_max integer) RETURNS integer
        LANGUAGE sql STABLE AS $$
            SELECT count(*)::integer FROM provider_slots
            WHERE owner = p_owner AND slot < p_max AND job_in_flight(job_id)
        $$
        """
    )
    # The claimable head of every owner that may send now, best first: the most urgent
    # priority, then the owners' weighted turn (vtag), one index probe per owner.
    op.execute(
        """
        CREATE OR REPLACE FUNCTION submit_heads(p_max integer, p_skip text[])
        RETURNS TABLE (owner text, priority smallint, vtag double precision, id text, max_in_flight integer)
        LANGUAGE sql STABLE AS $$
            SELECT o.name, h.priority, h.vtag, h.id, o.max_in_flight
            FROM owners o
            CROSS JOIN LATERAL (
                SELECT j.id, j.priority, j.vtag FROM jobs j
                WHERE j.owner = o.name AND j.status = 'queued' AND j.submit_sent_at IS NULL
                  AND j.run_after <= now() AND (j.locked_until IS NULL OR j.locked_until < now())
                  AND (j.start_deadline_at IS NULL OR j.start_deadline_at > now())
                ORDER BY j.priority, j.vtag, j.id
                LIMIT 1) AS h
            WHERE NOT o.paused AND o.name <> ALL (p_skip)
              AND (o.max_in_flight IS NULL OR owner_in_flight(o.name, p_max) < o.max_in_flight)
            ORDER BY h.priority, h.vtag, h.id
        $$
        """
    )
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION claim_submits(p_worker text, p_lease double precision, p_limit integer,
                                      p_max_in_flight integer, p_max_per_minute integer)
        RETURNS SETOF text LANGUAGE plpgsql AS $$
        DECLARE
            v_slot integer; v_token integer; v_job text;
            v_owner text; v_priority smallint; v_cap integer;
            v_skip text[] := '{{}}';
            v_taken integer := 0;
        BEGIN
            WHILE v_taken < p_limit LOOP
                v_slot := provider_free_slot(p_max_in_flight);
                EXIT WHEN v_slot IS NULL;
                v_token := provider_free_token(p_max_per_minute);
                EXIT WHEN v_token IS NULL;
                v_job := NULL;
                WHILE v_job IS NULL LOOP
                    SELECT h.owner, h.priority, h.max_in_flight INTO v_owner, v_priority, v_cap
                    FROM submit_heads(p_max_in_flight, v_skip) AS h LIMIT 1;
                    EXIT WHEN NOT FOUND;
                    IF v_cap IS NOT NULL THEN
                        -- Claimers in other processes may be filling this owner's cap
                        -- right now: count under a per-owner lock that is only tried.
                        IF NOT pg_try_advisory_xact_lock({OWNER_CAP_LOCK}, hashtext(v_owner))
                           OR owner_in_flight(v_owner, p_max_in_flight) >= v_cap THEN
                            v_skip := v_skip || v_owner;
                            CONTINUE;
                        END IF;
                    END IF;
                    SELECT j.id INTO v_job FROM jobs j
                    WHERE j.owner = v_owner AND j.priority = v_priority AND j.status = 'queued'
                      AND j.submit_sent_at IS NULL AND j.run_after <= now()
                      AND (j.locked_until IS NULL OR j.locked_until < now())
                      AND (j.start_deadline_at IS NULL OR j.start_deadline_at > now())
                    ORDER BY j.vtag, j.id LIMIT 1
                    FOR UPDATE SKIP LOCKED;
                    IF v_job IS NULL THEN
                        v_skip := v_skip || v_owner;  -- every head is being taken by others
                    END IF;
                END LOOP;
                EXIT WHEN v_job IS NULL;
                -- The submit marker (queries.MARK_SUBMIT_SENT's meaning) is set here, so
                -- the slot counts the job as in flight from this commit on.
                UPDATE jobs SET submit_sent_at = now(), updated_at = now(), attempts = attempts + 1,
                                locked_until = now() + make_interval(secs => p_lease), locked_by = p_worker
                WHERE id = v_job;
                UPDATE provider_slots SET job_id = v_job, owner = v_owner WHERE slot = v_slot;
                UPDATE provider_rate_tokens SET used_at = now(), job_id = v_job, owner = v_owner
                WHERE token = v_token;
                v_taken := v_taken + 1;
                RETURN NEXT v_job;
            END LOOP;
            RETURN;
        END
        $$
        """
    )
    # A job already chosen (the reconciler's verified re-send) takes a slot and a token.
    op.execute(
        """
        CREATE OR REPLACE FUNCTION take_provider_slot(p_job_id text, p_worker text, p_max_in_flight integer,
                                           p_max_per_minute integer)
        RETURNS text LANGUAGE plpgsql AS $$
        DECLARE
            v_slot integer; v_token integer; v_owner text;
        BEGIN
            v_slot := provider_free_slot(p_max_in_flight);
            IF v_slot IS NULL THEN RETURN 'throttled'; END IF;
            v_token := provider_free_token(p_max_per_minute);
            IF v_token IS NULL THEN RETURN 'throttled'; END IF;
            UPDATE jobs SET submit_sent_at = now(), updated_at = now()
            WHERE id = p_job_id AND locked_by = p_worker AND submit_sent_at IS NULL
              AND (status = 'queued' OR (status = 'submitted' AND provider_task_id IS NULL))
            RETURNING owner INTO v_owner;
            IF v_owner IS NULL THEN RETURN 'gone'; END IF;
            UPDATE provider_slots SET job_id = p_job_id, owner = v_owner WHERE slot = v_slot;
            UPDATE provider_rate_tokens SET used_at = now(), job_id = p_job_id, owner = v_owner
            WHERE token = v_token;
            RETURN 'marked';
        END
        $$
        """
    )


def upgrade() -> None:
    _owners_and_keys()
    _jobs_columns()
    _ledger()
    _throttle()


def downgrade() -> None:
    for function in ("take_provider_slot(text, text, integer, integer)",
                     "claim_submits(text, double precision, integer, integer, integer)",
                     "submit_heads(integer, text[])", "owner_in_flight(text, integer)",
                     "provider_free_token(integer)", "provider_free_slot(integer)", "job_in_flight(text)"):
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
    op.execute("DROP TABLE IF EXISTS provider_rate_tokens, provider_slots")
    op.execute("DROP TRIGGER IF EXISTS jobs_ledger_delete ON jobs")
    op.execute("DROP TRIGGER IF EXISTS jobs_ledger ON jobs")
    op.execute("DROP FUNCTION IF EXISTS jobs_ledger()")
    op.execute("DROP FUNCTION IF EXISTS ledger_release(text)")
    op.execute("DROP TABLE IF EXISTS ledger")
    op.execute("DROP FUNCTION IF EXISTS ledger_append_only()")
    for index in ("jobs_start_deadline", "jobs_queued_sent", "jobs_fair_queue"):
        op.execute(f"DROP INDEX IF EXISTS {index}")
    op.execute(
        "ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_priority_range, DROP COLUMN IF EXISTS priority, "
        "DROP COLUMN IF EXISTS vtag, DROP COLUMN IF EXISTS start_timeout_seconds, "
        "DROP COLUMN IF EXISTS start_deadline_at"
    )
    op.execute("DROP INDEX IF EXISTS api_keys_owner")
    op.execute("DROP INDEX IF EXISTS api_keys_public_id")
    op.execute(
        "ALTER TABLE api_keys DROP COLUMN IF EXISTS public_id, DROP COLUMN IF EXISTS label, "
        "DROP COLUMN IF EXISTS expires_at, DROP COLUMN IF EXISTS last_used_at"
    )
    op.execute("DROP TABLE IF EXISTS owners")
