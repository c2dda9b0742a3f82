"""The claim's "is this slot's job still in flight" is a primary-key probe, whatever
the planner thinks of the jobs table.

Revision 0009 wrote it as ``s.job_id IS NULL OR NOT EXISTS (… jobs j WHERE j.id =
s.job_id …)``. The OR keeps the EXISTS from becoming an anti-join, so the planner may
run it as a *hashed* subplan: one scan of every job ever sent (``jobs_submit_sent``)
to build the hash, in the claim of every slot. It chose that on the benchmark's
database, where few jobs had been sent (bench_fairness's plan at 1,000,100 queued); an
owner's in-flight count (for ``max_in_flight``) was planned as a nested loop over that
same index per slot. On a database with a long history either is a scan of the
history per claim. A scalar subquery cannot be hashed: written as one, the check is a
probe of ``jobs_pkey`` for each slot row the walk passes, and nothing else. (A slot
with no job answers NULL there, i.e. free, so the ``IS NULL`` arm is not needed.)

The bodies are revision 0009's with that one expression replaced: 0009's builders are
copied below and given either revision's fragments (a revision imports no other).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# Revision 0009's constants and fragments, with their {max} / {owner} placeholders.
OWNER_CAP_LOCK = 0x7773_6A03  # the same per-owner lock as revision 0006
IN_FLIGHT = "j.submit_sent_at IS NOT NULL AND j.status IN ('queued', 'submitted', 'processing')"
FREE_SLOT_0009 = f"""
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
OWNER_IN_FLIGHT_0009 = f"""
    SELECT count(*)::integer FROM provider_slots s JOIN jobs j ON j.id = s.job_id
    WHERE s.owner = {{owner}} AND s.slot < {{max}} AND {IN_FLIGHT}
"""

# The job of slot s is in flight: sent (or being sent) and not yet heard to be finished.
SLOT_BUSY = ("coalesce((SELECT j.submit_sent_at IS NOT NULL AND j.status IN ('queued', 'submitted', 'processing') "
             "FROM jobs j WHERE j.id = s.job_id), false)")
# This revision's fragments, the same placeholders.
FREE_SLOT = (
    "SELECT s.slot FROM provider_slots s\n"
    "    WHERE s.slot < {max} AND NOT " + SLOT_BUSY + "\n"
    "    ORDER BY s.slot LIMIT 1\n"
    "    FOR UPDATE OF s SKIP LOCKED\n"
)
OWNER_IN_FLIGHT = (
    "SELECT count(*)::integer FROM provider_slots s WHERE s.owner = {owner} AND s.slot < {max} AND " + SLOT_BUSY
)


# Revision 0009's builders, copied; the fragments are arguments.
def _claim(free_slot: str, owner_in_flight: str) -> str:
    heads = owner_in_flight.format(owner="o.name", max="p_max_in_flight")
    cap = owner_in_flight.format(owner="v_owner", max="p_max_in_flight")
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
            {free_slot.format(max="p_max_in_flight").strip()} INTO v_slot;
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


def _take(free_slot: str) -> str:
    return f"""
    CREATE OR REPLACE FUNCTION take_provider_slot(p_job_id text, p_worker text, p_max_in_flight integer,
                                                  p_max_per_minute integer)
    RETURNS text LANGUAGE plpgsql AS $$
    DECLARE
        v_slot integer; v_token integer; v_owner text;
    BEGIN
        {free_slot.format(max="p_max_in_flight").strip()} INTO v_slot;
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


def _helpers(free_slot: str, owner_in_flight: str) -> list[str]:
    """The helpers revision 0006 made, same names and answers, without nesting."""
    return [
        f"""
        CREATE OR REPLACE FUNCTION provider_free_slot(p_max integer) RETURNS integer
        LANGUAGE sql AS $$ {free_slot.format(max="p_max")} $$
        """,
        f"""
        CREATE OR REPLACE FUNCTION owner_in_flight(p_owner text, p_max integer) RETURNS integer
        LANGUAGE sql STABLE AS $$ {owner_in_flight.format(owner="p_owner", max="p_max")} $$
        """,
    ]


def _run(free_slot: str, owner_in_flight: str) -> None:
    for statement in (*_helpers(free_slot, owner_in_flight), _claim(free_slot, owner_in_flight), _take(free_slot)):
        op.execute(statement)


def upgrade() -> None:
    _run(FREE_SLOT, OWNER_IN_FLIGHT)


def downgrade() -> None:
    _run(FREE_SLOT_0009, OWNER_IN_FLIGHT_0009)
