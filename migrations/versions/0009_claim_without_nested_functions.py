"""The submit claim without nested SQL functions: every statement it runs is planned once
per session, and a free provider slot is found by one anti-join.

Revision 0006's ``claim_submits`` called ``provider_free_slot``, which called
``job_in_flight`` once per slot it passed over, and ``submit_heads``/``owner_in_flight``.
SQL functions are planned again on every call (PL/pgSQL keeps its own statements'
plans for the session, SQL functions called from them keep nothing past the
transaction), so each claim planned several statements and ran one small executor per
busy slot: up to ``PROVIDER_MAX_IN_FLIGHT`` of them when every slot was busy. That was
the tail of the claim (bench_fairness: p99 above 5 ms with 100,000 queued).
Here the same decisions are statements written inside the PL/pgSQL bodies: the free
slot is one index walk over ``provider_slots`` with a primary-key probe of ``jobs`` per
busy slot inside the same executor, and the heads probe is the plan PL/pgSQL caches.

The helper functions keep their names and meaning (the fairness tag and the
benchmark's plan use them), rewritten the same way.

Revision ID: 0009
Revises: 0006
Create Date: 2026-12-02
"""

from alembic import op

revision = "0009"
down_revision = "0006"
branch_labels = None
depends_on = None

OWNER_CAP_LOCK = 0x7773_6A03  # the same per-owner lock as revision 0006
# In flight = sent (or being sent) and not yet heard to be finished (revision 0006).
IN_FLIGHT = "j.submit_sent_at IS NOT NULL AND j.status IN ('queued', 'submitted', 'processing')"
FREE_SLOT = f"""
    SELECT s.slot FROM provider_slots s
    WHERE s.slot < {{max}}
      AND (s.job_id IS NULL OR NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = s.job_id AND {IN_FLIGHT}))
    ORDER BY s.slot LIMIT 1
    FOR UPDATE OF s SKIP LOCKED
"""
FREE_TOKEN = """
    SELECT t.token FROM provider_rate_tokens t
    WHERE t.used_at <= now() - interval '60 seconds' AND t.token < {max}
    ORDER BY t.used_at LIMIT 1
    FOR UPDATE OF t SKIP LOCKED
"""
OWNER_IN_FLIGHT = f"""
    SELECT count(*)::integer FROM provider_slots s JOIN jobs j ON j.id = s.job_id
    WHERE s.owner = {{owner}} AND s.slot < {{max}} AND {IN_FLIGHT}
"""


def _claim() -> str:
    heads = OWNER_IN_FLIGHT.format(owner="o.name", max="p_max_in_flight")
    cap = OWNER_IN_FLIGHT.format(owner="v_owner", max="p_max_in_flight")
    return f"""
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
            v_slot := NULL;
            {FREE_SLOT.format(max="p_max_in_flight").strip()} INTO v_slot;
            EXIT WHEN v_slot IS NULL;
            v_token := NULL;
            {FREE_TOKEN.format(max="p_max_per_minute").strip()} INTO v_token;
            EXIT WHEN v_token IS NULL;
            v_job := NULL;
            WHILE v_job IS NULL LOOP
                -- The best head among owners that may send: most urgent priority, then
                -- weighted turn; one LIMIT 1 probe of jobs_fair_queue per owner.
                SELECT o.name, h.priority, o.max_in_flight INTO v_owner, v_priority, v_cap
                FROM owners o
                CROSS JOIN LATERAL (
                    SELECT j.id, j.priority, j.vtag FROM jobs j
                    WHERE j.owner = o.name AND j.status = 'queued' AND j.submit_sent_at IS NULL
                      AND j.run_after <= now() AND (j.locked_until IS NULL OR j.locked_until < now())
                      AND (j.start_deadline_at IS NULL OR j.start_deadline_at > now())
                    ORDER BY j.priority, j.vtag, j.id
                    LIMIT 1) AS h
                WHERE NOT o.paused AND o.name <> ALL (v_skip)
                  AND (o.max_in_flight IS NULL OR ({heads.strip()}) < o.max_in_flight)
                ORDER BY h.priority, h.vtag, h.id
                LIMIT 1;
                EXIT WHEN NOT FOUND;
                IF v_cap IS NOT NULL THEN
                    -- Claimers in other processes may be filling this owner's cap right
                    -- now: count under a per-owner lock that is only tried.
                    IF NOT pg_try_advisory_xact_lock({OWNER_CAP_LOCK}, hashtext(v_owner))
                       OR ({cap.strip()}) >= v_cap THEN
                        v_skip := v_skip || v_owner;
                        CONTINUE;
                    END IF;
                END IF;
                -- The chosen owner's first claimable job, marked as being sent in the same
                -- statement (queries.MARK_SUBMIT_SENT's meaning): the slot counts it as in
                -- flight from this commit on.
                UPDATE jobs SET submit_sent_at = now(), updated_at = now(), attempts = attempts + 1,
                                locked_until = now() + make_interval(secs => p_lease), locked_by = p_worker
                WHERE id = (
                    SELECT j.id FROM jobs j
                    WHERE j.owner = v_owner AND j.priority = v_priority AND j.status = 'queued'
                      AND j.submit_sent_at IS NULL AND j.run_after <= now()
                      AND (j.locked_until IS NULL OR j.locked_until < now())
                      AND (j.start_deadline_at IS NULL OR j.start_deadline_at > now())
                    ORDER BY j.vtag, j.id LIMIT 1
                    FOR UPDATE SKIP LOCKED)
                RETURNING id INTO v_job;
                IF v_job IS NULL THEN
                    v_skip := v_skip || v_owner;  -- every head is being taken by others
                END IF;
            END LOOP;
            EXIT WHEN v_job IS NULL;
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


def _take() -> str:
    return f"""
    CREATE OR REPLACE FUNCTION take_provider_slot(p_job_id text, p_worker text, p_max_in_flight integer,
                                                  p_max_per_minute integer)
    RETURNS text LANGUAGE plpgsql AS $$
    DECLARE
        v_slot integer; v_token integer; v_owner text;
    BEGIN
        {FREE_SLOT.format(max="p_max_in_flight").strip()} INTO v_slot;
        IF v_slot IS NULL THEN RETURN 'throttled'; END IF;
        {FREE_TOKEN.format(max="p_max_per_minute").strip()} INTO v_token;
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


def _helpers() -> list[str]:
    """The helpers revision 0006 made, same names and answers, without nesting."""
    return [
        f"""
        CREATE OR REPLACE FUNCTION provider_free_slot(p_max integer) RETURNS integer
        LANGUAGE sql AS $$ {FREE_SLOT.format(max="p_max")} $$
        """,
        f"""
        CREATE OR REPLACE FUNCTION owner_in_flight(p_owner text, p_max integer) RETURNS integer
        LANGUAGE sql STABLE AS $$ {OWNER_IN_FLIGHT.format(owner="p_owner", max="p_max")} $$
        """,
    ]


def upgrade() -> None:
    for statement in (*_helpers(), _claim(), _take()):
        op.execute(statement)


def _claim_functions_0006() -> None:
    """Revision 0006's claim and helpers, exactly as it created them (copied: a revision
    imports no other)."""
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


def downgrade() -> None:
    _claim_functions_0006()
