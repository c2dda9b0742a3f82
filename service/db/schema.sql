-- The current definition of every SQL function and trigger of the database, in one place.
--
-- Tables, indexes and data come from the Alembic revisions in migrations/versions/ (the
-- history: each revision keeps the text it ran, forever). This file is what those
-- revisions arrive at for the database's own logic, so that its live body can be read
-- without finding the revision that last replaced it.
-- tests/integration/test_schema_definitions.py migrates a fresh database to head and
-- compares every function (pg_get_functiondef) and trigger (pg_get_triggerdef) of the
-- public schema with this file, so the two cannot disagree.
--
-- Changing a function or a trigger: write a new revision that runs the new text (copied
-- into it: a revision never imports another file, this one included), and change it here.
-- The bodies are compared with their whitespace collapsed, comments inside them included.
-- The functions are in dependency order (an SQL function's body is checked at creation).


-- === History filters (job_metadata, kept beside jobs by triggers)

-- Every writer of jobs keeps job_metadata in step in its own transaction without knowing
-- it exists: an insert adds a job's string keys, a status change updates them.
CREATE OR REPLACE FUNCTION jobs_sync_metadata() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.metadata = OLD.metadata AND NEW.owner = OLD.owner AND NEW.created_at = OLD.created_at THEN
            -- A status change, the only kind the service makes after the insert.
            UPDATE job_metadata SET status = NEW.status WHERE job_id = NEW.id;
            RETURN NULL;
        END IF;
        DELETE FROM job_metadata WHERE job_id = OLD.id;
    END IF;
    INSERT INTO job_metadata (job_id, key, value, owner, created_at, status)
    SELECT NEW.id, e.key, e.value #>> '{}', NEW.owner, NEW.created_at, NEW.status
    FROM jsonb_each(NEW.metadata) e
    WHERE jsonb_typeof(e.value) = 'string';
    RETURN NULL;
END
$$;

-- The WHEN clauses keep the common cases free: a job without metadata never enters the
-- function, and updates that touch none of these columns do not fire at all.
CREATE TRIGGER jobs_metadata_insert AFTER INSERT ON jobs
FOR EACH ROW WHEN (NEW.metadata <> '{}'::jsonb) EXECUTE FUNCTION jobs_sync_metadata();

CREATE TRIGGER jobs_metadata_update AFTER UPDATE OF metadata, owner, created_at, status ON jobs
FOR EACH ROW WHEN ((OLD.metadata <> '{}'::jsonb OR NEW.metadata <> '{}'::jsonb)
                   AND (OLD.metadata, OLD.owner, OLD.created_at, OLD.status)
                       IS DISTINCT FROM (NEW.metadata, NEW.owner, NEW.created_at, NEW.status))
EXECUTE FUNCTION jobs_sync_metadata();


-- === Job counts (/metrics) without a row written per status change

-- A job that becomes terminal is stamped with its transaction's start, in the row the
-- move already writes; fold_job_counts counts it once, later.
CREATE OR REPLACE FUNCTION jobs_stamp_terminal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.terminal_at := now();  -- this transaction's start: see fold_job_counts
    RETURN NEW;
END
$$;

CREATE TRIGGER jobs_terminal_insert BEFORE INSERT ON jobs
FOR EACH ROW WHEN (NEW.status IN ('completed', 'failed', 'canceled', 'timed_out'))
EXECUTE FUNCTION jobs_stamp_terminal();

CREATE TRIGGER jobs_terminal_update BEFORE UPDATE OF status ON jobs
FOR EACH ROW WHEN (NEW.status IN ('completed', 'failed', 'canceled', 'timed_out')
                   AND OLD.status NOT IN ('completed', 'failed', 'canceled', 'timed_out'))
EXECUTE FUNCTION jobs_stamp_terminal();

-- A folded job that changes or goes leaves job_counts (and is counted under its new key
-- if still terminal). The mark's row lock waits for a fold in progress.
CREATE OR REPLACE FUNCTION jobs_unfold() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    mark timestamptz;
BEGIN
    SELECT counted_until INTO mark FROM job_counts_mark FOR SHARE;
    IF OLD.terminal_at IS NOT NULL AND OLD.terminal_at >= mark THEN
        RETURN NULL;  -- not folded yet: the live count sees the change
    END IF;
    UPDATE job_counts SET n = n - 1 WHERE status = OLD.status AND model = OLD.model;
    IF TG_OP = 'UPDATE' AND NEW.status IN ('completed', 'failed', 'canceled', 'timed_out') THEN
        INSERT INTO job_counts VALUES (NEW.status, NEW.model, 1)
        ON CONFLICT (status, model) DO UPDATE SET n = job_counts.n + 1;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_unfold_update AFTER UPDATE OF status, model ON jobs
FOR EACH ROW WHEN (OLD.status IN ('completed', 'failed', 'canceled', 'timed_out')
                   AND (OLD.status, OLD.model) IS DISTINCT FROM (NEW.status, NEW.model))
EXECUTE FUNCTION jobs_unfold();

CREATE TRIGGER jobs_unfold_delete AFTER DELETE ON jobs
FOR EACH ROW WHEN (OLD.status IN ('completed', 'failed', 'canceled', 'timed_out'))
EXECUTE FUNCTION jobs_unfold();

-- Moves the mark up to the start of the oldest transaction still running (less a margin)
-- and adds the jobs stamped below it. Folds are serialised by an advisory lock that is
-- only tried (0x77736A02: "wsj" count fold); each statement of the body takes a fresh
-- snapshot (READ COMMITTED), so the count sees every delete that held the mark.
CREATE OR REPLACE FUNCTION fold_job_counts(margin interval DEFAULT '5 seconds') RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    old_mark timestamptz;
    new_mark timestamptz;
BEGIN
    IF NOT pg_try_advisory_xact_lock(2004052482) THEN
        RETURN false;
    END IF;
    SELECT counted_until INTO old_mark FROM job_counts_mark FOR UPDATE;
    -- Any transaction that can still stamp terminal_at started before it commits;
    -- the margin covers a backend between taking its start time and showing it.
    SELECT least(statement_timestamp(), min(xact_start)) - margin INTO new_mark
    FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL;
    IF new_mark <= old_mark THEN
        RETURN true;
    END IF;
    INSERT INTO job_counts (status, model, n)
    SELECT status, model, count(*) FROM jobs
    WHERE terminal_at >= old_mark AND terminal_at < new_mark AND status IN ('completed', 'failed', 'canceled', 'timed_out')
    GROUP BY status, model
    ON CONFLICT (status, model) DO UPDATE SET n = job_counts.n + EXCLUDED.n;
    UPDATE job_counts_mark SET counted_until = new_mark;
    RETURN true;
END
$$;


-- === Money: the append-only ledger (service/db/ledger.py)

CREATE OR REPLACE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only';
END
$$;

CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ledger
FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

-- The one statement that releases a job's reservation (idempotent; nothing to release for
-- a job admitted before the ledger existed). jobs_ledger runs the same INSERT inline.
CREATE OR REPLACE FUNCTION ledger_release(p_job_id text) RETURNS void LANGUAGE sql AS $$
    INSERT INTO ledger (owner, job_id, kind, amount_usd, images, model, reserved_at)
    SELECT owner, job_id, 'release', amount_usd, images, model, reserved_at
    FROM ledger WHERE job_id = p_job_id AND kind = 'reserve'
    ON CONFLICT (job_id, kind) DO NOTHING
$$;

-- A job's end settles its money in the very UPDATE that ends it, whatever path wrote it:
-- a completion spends its cost_usd for at most the images it asked for; every end (and
-- the deletion of an active job) releases the reservation, except one: a job canceled or
-- timed out after its task was sent upstream, before the task's deadline, may still be
-- made (and billed) by the provider, so its reservation is held in ledger_holds until
-- the task ends (ledger_settle_held) or its deadline passes (service/work/holds.py).
-- The release is a statement of the body, not a call of ledger_release, so that its
-- plan is cached for the session.
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
$$;

CREATE TRIGGER jobs_ledger AFTER UPDATE OF status ON jobs FOR EACH ROW
WHEN (OLD.status IN ('queued', 'submitted', 'processing', 'storing')
      AND NEW.status IN ('completed', 'failed', 'canceled', 'timed_out'))
EXECUTE FUNCTION jobs_ledger();

CREATE TRIGGER jobs_ledger_delete AFTER DELETE ON jobs FOR EACH ROW
WHEN (OLD.status IN ('queued', 'submitted', 'processing', 'storing'))
EXECUTE FUNCTION jobs_ledger();



-- A held reservation settled, or a late result of a job that ended without completing
-- after its task was sent (service/db/ledger.py): p_made[i] images the provider made for
-- job p_job_ids[i] (0 or NULL: none; the task failed, or nothing was heard of it by its
-- deadline). Images made are spent once, at the price reserved per image, for at most
-- the images reserved, and shown as the job's cost_usd (its status stays); then the
-- reservation is released and the hold ends. Idempotent. Returns how many jobs spent.
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
$$;

-- === The provider throttle: slots and rate tokens taken with SKIP LOCKED

-- In flight = sent (or being sent) and not yet heard to be finished: what the provider
-- counts against the account's concurrency. The claim below writes this condition inline
-- as a primary-key probe; the function stays for readers of one job.
CREATE OR REPLACE FUNCTION job_in_flight(p_job_id text) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM jobs WHERE id = p_job_id AND submit_sent_at IS NOT NULL
                   AND status IN ('queued', 'submitted', 'processing'))
$$;

CREATE OR REPLACE FUNCTION provider_free_token(p_max integer) RETURNS integer LANGUAGE sql AS $$
    SELECT token FROM provider_rate_tokens
    WHERE used_at <= now() - interval '60 seconds' AND token < p_max
    ORDER BY used_at LIMIT 1
    FOR UPDATE SKIP LOCKED
$$;

-- A free slot, locked: one whose last job is no longer in flight, found by a walk of
-- provider_slots with one probe of jobs_pkey per busy slot (a scalar subquery cannot be
-- planned as a hashed scan of every job ever sent). The walk judges a slot with the
-- snapshot its statement began with; when another claimer fills the slot and commits
-- after that, the lock waits for nothing and re-reads the slot's newest row, but the
-- probe of jobs in that re-check still sees the old snapshot, where the new job is not
-- yet sent: the slot would be taken twice. So a locked slot is judged again in a
-- statement of its own (a fresh snapshot, after that commit) and passed over if busy.
-- claim_submits and take_provider_slot take their slot here.
CREATE OR REPLACE FUNCTION provider_free_slot(p_max integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_slot integer;
    v_passed integer[] := '{}';
BEGIN
    LOOP
        v_slot := NULL;
        SELECT s.slot FROM provider_slots s
        WHERE s.slot < p_max AND s.slot <> ALL (v_passed) AND NOT coalesce((SELECT j.submit_sent_at IS NOT NULL AND j.status IN ('queued', 'submitted', 'processing') FROM jobs j WHERE j.id = s.job_id), false)
        ORDER BY s.slot LIMIT 1
        FOR UPDATE OF s SKIP LOCKED INTO v_slot;
        IF v_slot IS NULL OR NOT (SELECT coalesce((SELECT j.submit_sent_at IS NOT NULL AND j.status IN ('queued', 'submitted', 'processing') FROM jobs j WHERE j.id = s.job_id), false) FROM provider_slots s WHERE s.slot = v_slot) THEN
            RETURN v_slot;
        END IF;
        v_passed := v_passed || v_slot;  -- filled meanwhile; our lock keeps SKIP LOCKED from passing it
    END LOOP;
END
$$;

-- An owner's tasks in flight, for its max_in_flight (the same probe per slot).
CREATE OR REPLACE FUNCTION owner_in_flight(p_owner text, p_max integer) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT count(*)::integer FROM provider_slots s WHERE s.owner = p_owner AND s.slot < p_max AND coalesce((SELECT j.submit_sent_at IS NOT NULL AND j.status IN ('queued', 'submitted', 'processing') FROM jobs j WHERE j.id = s.job_id), false)
$$;

-- The claimable head of every owner that may send now, best first: the most urgent
-- priority, then the owners' weighted turn (vtag), one index probe per owner.
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
$$;

-- The fair submit claim (service/db/submits.py): up to p_limit jobs, each with a free
-- slot and a rate token, in priority then weighted-turn order across owners, each owner
-- within its max_in_flight. Every decision is a statement of this PL/pgSQL body or of
-- provider_free_slot's (their plans cached for the session), none a call of the SQL
-- functions above (planned on every call).
-- Owner caps are counted under a tried per-owner lock (0x77736A03: "wsj" owner cap).
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
        v_slot := provider_free_slot(p_max_in_flight);
        EXIT WHEN v_slot IS NULL;
        v_token := NULL;
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
              AND (o.max_in_flight IS NULL OR (SELECT count(*)::integer FROM provider_slots s WHERE s.owner = o.name AND s.slot < p_max_in_flight AND coalesce((SELECT j.submit_sent_at IS NOT NULL AND j.status IN ('queued', 'submitted', 'processing') FROM jobs j WHERE j.id = s.job_id), false)) < o.max_in_flight)
            ORDER BY h.priority, h.vtag, h.id
            LIMIT 1;
            EXIT WHEN NOT FOUND;
            IF v_cap IS NOT NULL THEN
                -- Claimers in other processes may be filling this owner's cap right
                -- now: count under a per-owner lock that is only tried. The count is a
                -- statement after the lock's: its snapshot then holds what the lock's
                -- last holder committed (in one statement the snapshot came first).
                IF NOT pg_try_advisory_xact_lock(2004052483, hashtext(v_owner)) THEN
                    v_skip := v_skip || v_owner;
                    CONTINUE;
                END IF;
                IF (SELECT count(*)::integer FROM provider_slots s WHERE s.owner = v_owner AND s.slot < p_max_in_flight AND coalesce((SELECT j.submit_sent_at IS NOT NULL AND j.status IN ('queued', 'submitted', 'processing') FROM jobs j WHERE j.id = s.job_id), false)) >= v_cap THEN
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
$$;

-- A job already chosen (the reconciler's verified re-send) takes a slot and a token:
-- 'marked', 'throttled' (none free) or 'gone' (no longer ours to send).
CREATE OR REPLACE FUNCTION take_provider_slot(p_job_id text, p_worker text, p_max_in_flight integer,
                                              p_max_per_minute integer)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_slot integer; v_token integer; v_owner text;
BEGIN
    v_slot := provider_free_slot(p_max_in_flight);
    IF v_slot IS NULL THEN RETURN 'throttled'; END IF;
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
$$;


-- === Admission (service/db/admission.py): one statement, committed before the answer

-- Spent this period and reserved now (service/db/ledger.py explains the horizon: the
-- owner's oldest active job or held reservation; four index probes of (owner, status,
-- created_at) and one of ledger_holds (owner, reserved_at)).
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
$$;

-- A job's place in its owner's weighted turn (service/db/fairness.py): after the owner's
-- last waiting tag at that priority, or at virtual time (the lowest head among owners
-- that may send now), plus 1 / weight.
CREATE OR REPLACE FUNCTION owner_next_vtag(p_owner text, p_priority integer, p_weight integer,
                                           p_max_in_flight integer)
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
$$;

-- A submit's every step in the server, in order: lock the owner's row, find an
-- Idempotency-Key replay, check the budget, insert the job with its turn, reserve its
-- money, append its event, wake the submitter. Called outside a transaction block, so the
-- owner's row is held from the lock to the commit with no client round trip between;
-- each statement's fresh snapshot sees every reservation committed before the lock.
-- Verdicts: 'created', 'replay', 'conflict', 'budget_exceeded'. The job keeps its trace
-- context (p_traceparent: its admission span, service/observability/tracing.py).
CREATE OR REPLACE FUNCTION admit_job(
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
$$;
