"""A provider slot is taken by one claim only, and an owner's cap counted after its lock.

- **The slot.** The claim walked ``provider_slots`` for a slot whose job is not in flight
  and locked it with ``FOR UPDATE SKIP LOCKED``, all in one statement. When another
  claimer filled that slot and committed after the statement's snapshot was taken, the
  lock did not skip it (it was no longer locked): Postgres re-read the slot's newest row
  and checked the condition again, but the probe of ``jobs`` in that check still saw the
  statement's snapshot, where the other claimer's job was not yet sent. The slot was then
  taken twice, and two processes could have one task more in flight than
  ``PROVIDER_MAX_IN_FLIGHT``. ``provider_free_slot`` (now PL/pgSQL) judges a locked slot
  again in a statement of its own, whose snapshot holds that commit, and passes over a
  slot found busy; ``claim_submits`` and ``take_provider_slot`` take their slot through it.
- **The owner's cap.** ``claim_submits`` tried the owner's advisory lock and counted its
  tasks in flight in one statement, so the count's snapshot was taken before the lock:
  the previous holder's commit could fall between the two and be missed. The count is now
  a statement after the lock's.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-08
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

NEW_PROVIDER_FREE_SLOT = """
CREATE OR REPLACE FUNCTION provider_free_slot(p_max integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_slot integer;
    v_passed integer[] := '{}';
BEGIN
    LOOP
        v_slot := NULL;
        SELECT s.slot FROM provider_slots s
        WHERE s.slot < p_max AND s.slot <> ALL (v_passed) AND NOT coalesce((SELECT j.submit_sent_at IS NOT NULL
            AND j.status IN ('queued', 'submitted', 'processing') FROM jobs j WHERE j.id = s.job_id), false)
        ORDER BY s.slot LIMIT 1
        FOR UPDATE OF s SKIP LOCKED INTO v_slot;
        IF v_slot IS NULL OR NOT (SELECT coalesce((SELECT j.submit_sent_at IS NOT NULL
            AND j.status IN ('queued', 'submitted', 'processing') FROM jobs j WHERE j.id = s.job_id), false)
                FROM provider_slots s WHERE s.slot = v_slot) THEN
            RETURN v_slot;
        END IF;
        v_passed := v_passed || v_slot;  -- filled meanwhile; our lock keeps SKIP LOCKED from passing it
    END LOOP;
END
$$
"""

# Revision 0012's, restored by the downgrade.
OLD_PROVIDER_FREE_SLOT = """
CREATE OR REPLACE FUNCTION provider_free_slot(p_max integer) RETURNS integer LANGUAGE sql AS $$
    SELECT s.slot FROM provider_slots s
    WHERE s.slot < p_max AND NOT coalesce((SELECT j.submit_sent_at IS NOT NULL
        AND j.status IN ('queued', 'submitted', 'processing') FROM jobs j WHERE j.id = s.job_id), false)
    ORDER BY s.slot LIMIT 1
    FOR UPDATE OF s SKIP LOCKED
$$
"""

# claim_submits and take_provider_slot as this revision leaves them but for the parts
# below (@SLOT@: the slot taken; @CAP@: an owner's cap checked), this revision's and 0012's.
CLAIM_SUBMITS = """
CREATE OR REPLACE FUNCTION claim_submits(p_worker text, p_lease double precision, p_limit integer,
                                         p_max_in_flight integer, p_max_per_minute integer)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    v_slot integer; v_token integer; v_job text;
    v_owner text; v_priority smallint; v_cap integer;
    v_skip text[] := '{}';
    v_taken integer := 0;
BEGIN
    WHILE v_taken < p_limit LOOP
@SLOT@        v_token := NULL;
        SELECT t.token FROM provider_rate_tokens t
        WHERE t.used_at <= now() - interval '60 seconds' AND t.token < p_max_per_minute
        ORDER BY t.used_at LIMIT 1
        FOR UPDATE OF t SKIP LOCKED INTO v_token;
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
              AND (o.max_in_flight IS NULL OR (SELECT count(*)::integer FROM provider_slots s WHERE s.owner = o.name
                  AND s.slot < p_max_in_flight AND coalesce((SELECT j.submit_sent_at IS NOT NULL
                      AND j.status IN ('queued', 'submitted', 'processing') FROM jobs j
                          WHERE j.id = s.job_id), false)) < o.max_in_flight)
            ORDER BY h.priority, h.vtag, h.id
            LIMIT 1;
            EXIT WHEN NOT FOUND;
@CAP@            -- The chosen owner's first claimable job, marked as being sent in the same
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

TAKE_PROVIDER_SLOT = """
CREATE OR REPLACE FUNCTION take_provider_slot(p_job_id text, p_worker text, p_max_in_flight integer,
                                              p_max_per_minute integer)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_slot integer; v_token integer; v_owner text;
BEGIN
@SLOT@    IF v_slot IS NULL THEN RETURN 'throttled'; END IF;
    SELECT t.token FROM provider_rate_tokens t
    WHERE t.used_at <= now() - interval '60 seconds' AND t.token < p_max_per_minute
    ORDER BY t.used_at LIMIT 1
    FOR UPDATE OF t SKIP LOCKED INTO v_token;
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

CLAIM_SLOT = """
        v_slot := provider_free_slot(p_max_in_flight);
        EXIT WHEN v_slot IS NULL;
"""

CLAIM_SLOT_0012 = """
        v_slot := NULL;
        SELECT s.slot FROM provider_slots s
        WHERE s.slot < p_max_in_flight AND NOT coalesce((SELECT j.submit_sent_at IS NOT NULL
            AND j.status IN ('queued', 'submitted', 'processing') FROM jobs j WHERE j.id = s.job_id), false)
        ORDER BY s.slot LIMIT 1
        FOR UPDATE OF s SKIP LOCKED INTO v_slot;
        EXIT WHEN v_slot IS NULL;
"""

CLAIM_CAP = """
            IF v_cap IS NOT NULL THEN
                -- Claimers in other processes may be filling this owner's cap right
                -- now: count under a per-owner lock that is only tried. The count is a
                -- statement after the lock's: its snapshot then holds what the lock's
                -- last holder committed (in one statement the snapshot came first).
                IF NOT pg_try_advisory_xact_lock(2004052483, hashtext(v_owner)) THEN
                    v_skip := v_skip || v_owner;
                    CONTINUE;
                END IF;
                IF (SELECT count(*)::integer FROM provider_slots s WHERE s.owner = v_owner
                    AND s.slot < p_max_in_flight AND coalesce((SELECT j.submit_sent_at IS NOT NULL
                        AND j.status IN ('queued', 'submitted', 'processing') FROM jobs j
                            WHERE j.id = s.job_id), false)) >= v_cap THEN
                    v_skip := v_skip || v_owner;
                    CONTINUE;
                END IF;
            END IF;
"""

CLAIM_CAP_0012 = """
            IF v_cap IS NOT NULL THEN
                -- Claimers in other processes may be filling this owner's cap right
                -- now: count under a per-owner lock that is only tried.
                IF NOT pg_try_advisory_xact_lock(2004052483, hashtext(v_owner))
                   OR (SELECT count(*)::integer FROM provider_slots s WHERE s.owner = v_owner
                       AND s.slot < p_max_in_flight AND coalesce((SELECT j.submit_sent_at IS NOT NULL
                           AND j.status IN ('queued', 'submitted', 'processing') FROM jobs j
                               WHERE j.id = s.job_id), false)) >= v_cap THEN
                    v_skip := v_skip || v_owner;
                    CONTINUE;
                END IF;
            END IF;
"""

TAKE_SLOT = """
    v_slot := provider_free_slot(p_max_in_flight);
"""

TAKE_SLOT_0012 = """
    SELECT s.slot FROM provider_slots s
    WHERE s.slot < p_max_in_flight AND NOT coalesce((SELECT j.submit_sent_at IS NOT NULL
        AND j.status IN ('queued', 'submitted', 'processing') FROM jobs j WHERE j.id = s.job_id), false)
    ORDER BY s.slot LIMIT 1
    FOR UPDATE OF s SKIP LOCKED INTO v_slot;
"""


def _functions(free_slot: str, claim_slot: str, claim_cap: str, take_slot: str) -> list[str]:
    claim = CLAIM_SUBMITS.replace("@SLOT@", claim_slot).replace("@CAP@", claim_cap)
    return [free_slot, claim, TAKE_PROVIDER_SLOT.replace("@SLOT@", take_slot)]


def upgrade() -> None:
    # The slot function first: the claim and the re-send call it.
    for statement in _functions(NEW_PROVIDER_FREE_SLOT, CLAIM_SLOT, CLAIM_CAP, TAKE_SLOT):
        op.execute(statement)


def downgrade() -> None:
    # Revision 0012's bodies, which walk the slots inline, before the slot function
    # returns to SQL (CREATE OR REPLACE may change a function's language).
    free, claim, take = _functions(OLD_PROVIDER_FREE_SLOT, CLAIM_SLOT_0012, CLAIM_CAP_0012, TAKE_SLOT_0012)
    for statement in (claim, take, free):
        op.execute(statement)
