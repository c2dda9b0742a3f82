-- The named SQL statements of the service, loaded by service/db/queries.py (which also
-- holds the lock order every transaction keeps, and the lease template of the duty
-- tables). Format: each statement starts with a line "-- name: NAME" ("(asyncpg)" after
-- the name: raw asyncpg SQL with $n parameters), then "--" lines saying why it is safe,
-- then the SQL up to the line that ends with ";". Lines between statements are notes.
-- Status values are never written here: {status:NAME} (one job status),
-- {statuses:terminal} / {statuses:active} (sets), {delivery:NAME} (a delivery status)
-- and {provider:NAME} (a WaveSpeed status) are rendered from service/domain/states.py
-- when the file is loaded; bind parameters (= ANY(:statuses)) take sets chosen at run time.

-- === Submits and provider news (service/work/submitter.py, service/db/news.py)

-- name: MARK_SUBMIT_SENT
-- Why: the submit is not idempotent upstream, so we record that it is about to go out
-- *before* sending it, in a committed row. If we crash or lose the answer, the next
-- claimer sees submit_sent_at and recovers the task instead of sending again. (A
-- submitted job without a task id gets here again only once the reconciler has verified
-- that the provider never created its task, and cleared submit_sent_at.)
UPDATE jobs SET submit_sent_at = now(), updated_at = now()
WHERE id = :id AND locked_by = :worker AND submit_sent_at IS NULL
  AND (status = {status:queued} OR (status = {status:submitted} AND provider_task_id IS NULL))
RETURNING id;

-- name: UNMARK_UNSENT
-- Why: a graceful stop hands back the jobs its submit claim marked as being sent but
-- whose request never started (the claim returned as the stop began). They were never
-- sent, so they go back to the queue as fresh jobs, not as lost sends to be searched for
-- upstream (which delays them by RECONCILE_AFTER_SECONDS and more, or fails them when
-- the provider's list cannot prove the task absent). Fenced on the claim's holder; the
-- attempt the claim counted is taken back; the slot is free once the marker is gone.
UPDATE jobs SET submit_sent_at = NULL, locked_until = NULL, locked_by = NULL,
                attempts = greatest(attempts - 1, 0), updated_at = now()
WHERE id = ANY(:ids) AND locked_by = :holder AND status = {status:queued};

-- name: INSERT_WEBHOOK_EVENT
-- Why: the webhook-id is the provider's event identity; ON CONFLICT makes a redelivered
-- event a no-op for everything but the job's event log.
INSERT INTO webhook_events (webhook_id, job_id, task_id, body, outcome)
VALUES (:webhook_id, :job_id, :task_id, CAST(:body AS jsonb), :outcome)
ON CONFLICT (webhook_id) DO NOTHING
RETURNING id;

-- name: APPLY_NEWS (asyncpg)
-- --- Provider news (service/db/news.py), raw asyncpg SQL ($n params): the ONE statement
-- by which a webhook or a result the reconciler fetched changes jobs. It takes a batch
-- (group commit: the receiver writes every webhook that arrived together in one
-- transaction) as parallel arrays, one element per item, and answers one row per item.
-- Parameters (arrays): $1 job id, $2 webhook-id (NULL: a reconciler result, no webhook
-- log), $3 task id (NULL when the body has none), $4 raw body (JSON text), $5 provider
-- status, $6 inference ms, $7 has_nsfw_contents (JSON text), $8 output URLs (JSON array
-- text), $9 target status (NULL: none), $10 statuses the target may be reached from
-- (comma-separated), $11 target is terminal, $12 error, $13 delivery id, $14 callback
-- event type, $15 source ("webhook"/"reconcile"), $16 delay before the target is due,
-- $17 the webhook.received detail (JSON text); $18 terminal statuses (a plain array);
-- $19 (array) the holder of this process's duty that takes the item's work at once (NULL:
-- none): the storer's for a move to storing, the deliverer's for an end; $20 its lease (s).
--
-- Why each part is safe:
-- - job: every job of the batch is locked, in id order (the order every multi-job lock
-- in this file uses), before its news is judged; the batch never holds one job twice
-- (the writer keeps items for the same job apart), since a row may change only once
-- per statement.
-- - hook: the webhook-id is the provider's event identity; ON CONFLICT makes a
-- redelivered event (committed earlier, or while we waited) a "duplicate" that changes
-- nothing but the job's event log. A verified event for an unknown job is logged too;
-- one for a deleted job without its body (its erased data must not come back).
-- - c: the verdict on each item, from the locked row: unknown job, duplicate, another
-- task (a webhook must name the job's task; a task id another job owns is never
-- adopted), late (job terminal), stale (the provider said more already), or apply.
-- Each answer row carries the job's traceparent: the receiver's span joins the job's trace.
-- - upd: provider fields and the guarded forward-only transition (could_move: the target
-- is reachable from the locked status, states.allowed_from) in one UPDATE per job.
-- - events: ordered per item: webhook.received, then task adoption/mismatch, then the
-- status change. ended: a terminal move queues its callback in this transaction
-- (QUEUE_DELIVERIES), so a crash cannot lose it.
-- - handoff: a move to storing with a holder leases the job to that storer in the same
-- UPDATE (locked_by, locked_until, attempts 1: what its claim would have written), and an
-- end with a holder inserts its delivery leased to that deliverer; the process works the
-- row without a claim statement, and if it dies the lease lapses and any worker claims it.
-- Without a holder the moved job is left unleased, as before. ``adopted`` answers the row
-- the holder got (the job, or the delivery; NULL: none, and the caller gives its reserved
-- slot back).
WITH n AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::integer[],
                         $7::text[], $8::text[], $9::text[], $10::text[], $11::boolean[], $12::text[],
                         $13::text[], $14::text[], $15::text[], $16::float8[], $17::text[], $19::text[])
        WITH ORDINALITY AS n(job_id, webhook_id, task_id, body, pstatus, inference_ms, nsfw, outputs, target,
                             allowed, terminal, error, delivery_id, event_type, source, delay, detail, holder,
                             ord)
), job AS (
    SELECT id, status, provider_task_id, provider_status, callback_url, deleted_at, traceparent
    FROM jobs WHERE id = ANY($1::text[])
    ORDER BY id
    FOR UPDATE
), hook AS (
    INSERT INTO webhook_events (webhook_id, job_id, task_id, body, outcome)
    SELECT n.webhook_id, job.id, n.task_id,
           CASE WHEN job.deleted_at IS NULL THEN n.body::jsonb ELSE '{}'::jsonb END,
           CASE WHEN job.id IS NULL THEN 'unknown_job' ELSE 'received' END
    FROM n LEFT JOIN job ON job.id = n.job_id
    WHERE n.webhook_id IS NOT NULL
    ORDER BY n.ord
    ON CONFLICT (webhook_id) DO NOTHING
    RETURNING webhook_id
), c AS (
    SELECT n.*, job.status AS was, job.callback_url, job.traceparent,
           job.provider_task_id IS NULL AND n.task_id IS NOT NULL AS adopting,
           coalesce(n.target IS NOT NULL AND job.status = ANY(string_to_array(n.allowed, ',')), false)
               AS could_move,
           CASE
               WHEN job.id IS NULL THEN 'unknown_job'
               WHEN n.webhook_id IS NOT NULL
                    AND NOT EXISTS (SELECT 1 FROM hook WHERE hook.webhook_id = n.webhook_id) THEN 'duplicate'
               WHEN n.task_id IS NOT NULL AND job.provider_task_id IS NOT NULL
                    AND n.task_id <> job.provider_task_id THEN 'task_mismatch'
               WHEN n.task_id IS NULL AND n.webhook_id IS NOT NULL THEN 'task_mismatch'
               WHEN job.status = ANY($18::text[]) THEN 'late'
               WHEN job.provider_task_id IS NULL AND n.task_id IS NOT NULL
                    AND EXISTS (SELECT 1 FROM jobs o WHERE o.provider_task_id = n.task_id) THEN 'task_taken'
               WHEN job.provider_status IN ({provider:completed}, {provider:failed})
                    OR (CASE n.pstatus WHEN {provider:processing} THEN 1 WHEN {provider:completed} THEN 2 WHEN {provider:failed} THEN 2 ELSE 0 END)
                     < (CASE job.provider_status WHEN {provider:processing} THEN 1 WHEN {provider:completed} THEN 2
                                                 WHEN {provider:failed} THEN 2 ELSE 0 END) THEN 'unchanged'
               ELSE 'apply'
           END AS verdict
    FROM n LEFT JOIN job ON job.id = n.job_id
), upd AS (
    UPDATE jobs AS j SET
        last_news_at = now(),
        updated_at = now(),
        provider_task_id = coalesce(j.provider_task_id, c.task_id),
        provider_status = coalesce(c.pstatus, j.provider_status),
        inference_ms = coalesce(c.inference_ms, j.inference_ms),
        has_nsfw_contents = coalesce(c.nsfw::jsonb, j.has_nsfw_contents),
        submitted_at = coalesce(j.submitted_at, now()),
        status = CASE WHEN c.could_move THEN c.target ELSE j.status END,
        locked_until = CASE WHEN NOT c.could_move THEN j.locked_until
                            WHEN c.holder IS NOT NULL AND NOT c.terminal THEN now() + make_interval(secs => $20) END,
        locked_by = CASE WHEN NOT c.could_move THEN j.locked_by WHEN NOT c.terminal THEN c.holder END,
        run_after = CASE WHEN NOT c.could_move THEN j.run_after WHEN c.terminal THEN NULL
                         ELSE now() + make_interval(secs => c.delay) END,
        completed_at = CASE WHEN c.could_move AND c.terminal THEN now() ELSE j.completed_at END,
        attempts = CASE WHEN c.could_move AND NOT c.terminal THEN (CASE WHEN c.holder IS NULL THEN 0 ELSE 1 END)
                        ELSE j.attempts END,
        error = CASE WHEN c.could_move AND c.error IS NOT NULL THEN c.error ELSE j.error END,
        callback_status = CASE WHEN c.could_move AND c.terminal THEN {fragment:CALLBACK_STATUS_ENDED}
                               ELSE j.callback_status END,
        callback_attempts = CASE WHEN c.could_move AND c.terminal THEN {fragment:CALLBACK_ATTEMPTS_ENDED}
                                 ELSE j.callback_attempts END
    FROM c
    WHERE c.verdict = 'apply' AND j.id = c.job_id
), outs AS (
    INSERT INTO job_outputs (job_id, index, source_url)
    SELECT c.job_id, o.ord - 1, o.url
    FROM c, jsonb_array_elements_text(c.outputs::jsonb) WITH ORDINALITY AS o(url, ord)
    WHERE c.verdict = 'apply' AND c.target = {status:storing}
    ON CONFLICT DO NOTHING
), events AS (
    INSERT INTO job_events (job_id, type, detail)
    SELECT e.job_id, e.type, e.detail FROM (
        SELECT c.ord, 1 AS step, c.job_id, 'webhook.received' AS type,
               c.detail::jsonb || jsonb_build_object('duplicate', c.verdict = 'duplicate') AS detail
        FROM c WHERE c.webhook_id IS NOT NULL AND c.verdict <> 'unknown_job'
        UNION ALL
        SELECT c.ord, 2, c.job_id, 'provider.task_mismatch',
               jsonb_build_object('task_id', c.task_id, 'source', c.source)
               || CASE WHEN c.verdict = 'task_taken' THEN '{"reason": "another job has this task"}'::jsonb
                       WHEN c.task_id IS NULL THEN '{"reason": "the body names no task"}'::jsonb
                       ELSE '{}'::jsonb END
        FROM c WHERE c.verdict IN ('task_mismatch', 'task_taken')
        UNION ALL
        SELECT c.ord, 3, c.job_id, 'provider.task_adopted', jsonb_build_object('task_id', c.task_id, 'source', c.source)
        FROM c WHERE c.verdict = 'apply' AND c.adopting
        UNION ALL
        SELECT c.ord, 4, c.job_id, 'status.changed',
               jsonb_build_object('from', c.was, 'to', c.target, 'reason', c.source)
               || CASE WHEN c.error IS NOT NULL THEN jsonb_build_object('error', c.error) ELSE '{}'::jsonb END
        FROM c WHERE c.verdict = 'apply' AND c.could_move
    ) AS e ORDER BY e.ord, e.step
), ended AS (
    SELECT c.job_id, c.delivery_id, c.event_type, c.callback_url AS url, c.holder, $20::float8 AS lease
    FROM c WHERE c.verdict = 'apply' AND c.could_move AND c.terminal
), {fragment:QUEUE_DELIVERIES}
SELECT c.ord, c.verdict, c.verdict = 'apply' AND c.could_move AS moved,
       c.callback_url IS NOT NULL AS has_callback, c.traceparent,
       CASE WHEN c.verdict = 'apply' AND c.could_move AND c.holder IS NOT NULL
                 AND (NOT c.terminal OR c.callback_url IS NOT NULL)
            THEN CASE WHEN c.terminal THEN c.delivery_id ELSE c.job_id END END AS adopted
FROM c ORDER BY c.ord;

-- name: NOTIFY_MANY (asyncpg)
-- Why one statement: unnest + pg_notify sends any number of wake-ups in one transaction
-- (Postgres drops repeats within it), so under load one serialised NOTIFY commit serves
-- many webhooks. A transaction that only notifies writes no WAL of its own, so its commit
-- does not wait for a flush either.
SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS t(c, p);

-- name: NOTIFY
SELECT pg_notify(:channel, :payload);

-- === A terminal move queues a pending delivery
-- The rule, written once here and composed into every statement that ends jobs
-- (APPLY_NEWS, AFTER_MOVE after jobs.transition's UPDATE, FINISH_MANY) and into
-- QUEUE_CALLBACK (a redeliver of a terminal job that has none): a job that ends with a
-- callback URL has, in the same transaction (a crash cannot lose it), one pending
-- delivery due now, whose id is the stable webhook-id and whose body the deliverer
-- builds and freezes at its first attempt; the job mirrors it (callback pending, no
-- attempt yet). Lock order: the job's row is written (or locked) first, the delivery is
-- a new row nobody else can hold.

-- fragment: CALLBACK_STATUS_ENDED
-- callback_status of ``j`` (the jobs row the UPDATE writes) as it ends.
CASE WHEN j.callback_url IS NULL THEN j.callback_status ELSE {delivery:pending} END

-- fragment: CALLBACK_ATTEMPTS_ENDED
CASE WHEN j.callback_url IS NULL THEN j.callback_attempts ELSE 0 END

-- fragment: QUEUE_DELIVERIES
-- The deliveries of ``ended``, a CTE the statement defines before it: (job_id,
-- delivery_id, event_type, url, holder, lease), the jobs it ended, url their callback URL
-- or NULL; holder (NULL: none) the deliverer of this process that takes the new row at
-- once, leased for ``lease`` seconds as its claim would (handoff, service/work/runner.py).
queued_deliveries AS (
    INSERT INTO deliveries (id, job_id, event_type, url, body, status, next_attempt_at, locked_by, locked_until)
    SELECT e.delivery_id, e.job_id, e.event_type, e.url, '', {delivery:pending}, now(), e.holder,
           CASE WHEN e.holder IS NOT NULL THEN now() + make_interval(secs => e.lease) END
    FROM ended AS e WHERE e.url IS NOT NULL
    RETURNING job_id)

-- name: QUEUE_CALLBACK
-- Why: a redeliver (POST /v1/jobs/{id}/callback/redeliver) of a terminal job that has no
-- delivery yet queues one by the rule above, in one round trip; the caller holds the
-- job's row lock.
WITH mirrored AS (
    UPDATE jobs j SET callback_status = {fragment:CALLBACK_STATUS_ENDED},
                      callback_attempts = {fragment:CALLBACK_ATTEMPTS_ENDED}
    WHERE j.id = :job_id
), ended AS (
    SELECT CAST(:job_id AS text) AS job_id, CAST(:delivery_id AS text) AS delivery_id,
           CAST(:event_type AS text) AS event_type, CAST(:url AS text) AS url,
           CAST(NULL AS text) AS holder, CAST(NULL AS float8) AS lease
), {fragment:QUEUE_DELIVERIES}
SELECT pg_notify(:channel, 'deliver');

-- === One job's status change (service/db/jobs.py transition)

-- name: AFTER_MOVE
-- Why one statement: what follows a status change made by ``jobs.transition`` (its
-- event; for a terminal move with a callback URL, the pending delivery, whose id is the
-- stable webhook-id; the wake-ups) costs one round trip instead of up to five. It runs
-- after the guarded UPDATE, in its transaction: the job is locked first, the delivery is
-- a new row nobody else can hold.
WITH event AS (
    INSERT INTO job_events (job_id, type, detail) VALUES (:job_id, 'status.changed', CAST(:detail AS jsonb))
), ended AS (
    SELECT CAST(:job_id AS text) AS job_id, CAST(:delivery_id AS text) AS delivery_id,
           CAST(:event_type AS text) AS event_type, CAST(:url AS text) AS url,
           CAST(NULL AS text) AS holder, CAST(NULL AS float8) AS lease
), {fragment:QUEUE_DELIVERIES}
SELECT pg_notify(c, p) FROM unnest(CAST(:channels AS text[]), CAST(:payloads AS text[])) AS t(c, p);

-- name: SUBMIT_ACCEPTED (asyncpg)
-- Why one statement: the provider accepted a submit; the job moves to submitted as
-- ``jobs.transition`` writes it (guarded, fenced on our lease), with its task id, its
-- submit time and deadline, its events (status.changed, then submit.accepted) and its
-- wake-ups, in one round trip instead of a transaction of five (service/work/submitter.py).
-- Not moved (the webhook beat the answer, or a re-send): nothing is written, and the
-- submitter records the answer in a transaction of its own.
-- $1 job id, $2 our lease (locked_by), $3 task id, $4 provider status, $5 seconds until the
-- reconciler looks, $6 seconds until the job's deadline, $7 the statuses submitted may be
-- reached from, $8 the status.changed detail (JSON), $9 the work channel, $10 the job channel.
WITH moved AS (
    UPDATE jobs AS j SET status = {status:submitted}, updated_at = now(), locked_until = NULL, locked_by = NULL,
        attempts = 0, run_after = now() + make_interval(secs => $5::float8),
        provider_task_id = $3::text, provider_status = $4::text,
        submitted_at = now(), deadline_at = now() + make_interval(secs => $6::float8)
    WHERE j.id = $1 AND j.status = ANY($7::text[]) AND j.locked_by = $2
    RETURNING j.id
), events AS (
    INSERT INTO job_events (job_id, type, detail)
    SELECT moved.id, e.type, e.detail FROM moved, (
        SELECT 1 AS step, 'status.changed' AS type, $8::jsonb AS detail
        UNION ALL
        SELECT 2, 'submit.accepted', jsonb_build_object('task_id', $3::text)
    ) AS e ORDER BY e.step
), wakes AS (
    SELECT pg_notify(w.c, w.p) FROM moved, LATERAL (VALUES ($9::text, {status:submitted}), ($10::text, moved.id)) AS w(c, p)
)
SELECT EXISTS (SELECT 1 FROM moved) AS moved, (SELECT count(*) FROM wakes) AS woken;

-- name: STORE_COMPLETE (asyncpg)
-- Why one statement: the storer's last step (its last output recorded, the job completed,
-- what ``jobs.transition`` does after a terminal move) in one round trip instead of a
-- transaction of seven (service/work/storer.py).
-- $1 job id, $2 our lease (locked_by), $3 the output's index (NULL: no output to record),
-- $4 its key, $5 content type, $6 size, $7 sha256, $8 thumbnail key, $9 whether it carries
-- Content Credentials, $10 the output.stored event's detail (JSON), $11 the job's cost,
-- $12 the statuses ``completed`` may be reached from, $13 the status.changed detail (JSON),
-- $14 the delivery id (the webhook-id, used when the job has a callback URL), $15 its
-- event type, $16 the output.ignored detail (JSON; NULL: none), $17 the work channel,
-- $18 the done channel, $19 the holder of this process's deliverer that takes the delivery
-- at once (NULL: none; it is claimed as usual), $20 its lease in seconds.
-- - job: the job's row is locked first (the lock order), as the UPDATE that completes it
-- would (NO KEY UPDATE), so a deletion cannot commit between the look at deleted_at and
-- our commit (service/work/eraser.py relies on it: no object is recorded once a deletion
-- has committed). A deleted job with an output to record gets nothing written (answer
-- deleted: the storer deletes what it uploaded).
-- - moved: the guarded, lease-fenced move to completed, as ``jobs.transition`` writes it
-- (the trigger jobs_ledger spends the reservation in this same UPDATE).
-- - events: output.stored, then status.changed, then output.ignored, in that order.
-- - ended: the terminal move queues its callback (the rule above), leased to $19 when set
-- (a new row: nobody else can hold it); wakes: the deliverer (when there is a callback
-- nobody holds yet) and the job's waiters.
WITH job AS (
    SELECT id, deleted_at IS NOT NULL AS deleted FROM jobs WHERE id = $1 FOR NO KEY UPDATE
), live AS (
    SELECT id FROM job WHERE NOT deleted OR $3::integer IS NULL
), out AS (
    UPDATE job_outputs AS o SET key = $4::text, content_type = $5::text, size_bytes = $6::bigint, sha256 = $7::text,
        thumbnail_key = $8::text, stored_at = now(), content_credentials = $9::boolean
    FROM live WHERE o.job_id = live.id AND o.index = $3::integer
), moved AS (
    UPDATE jobs AS j SET status = {status:completed}, updated_at = now(), locked_until = NULL, locked_by = NULL,
        run_after = NULL, completed_at = now(), cost_usd = $11::numeric,
        callback_status = {fragment:CALLBACK_STATUS_ENDED}, callback_attempts = {fragment:CALLBACK_ATTEMPTS_ENDED}
    FROM live WHERE j.id = live.id AND j.status = ANY($12::text[]) AND j.locked_by = $2
    RETURNING j.id, j.callback_url
), events AS (
    INSERT INTO job_events (job_id, type, detail)
    SELECT live.id, e.type, e.detail FROM live, (
        SELECT 1 AS step, 'output.stored' AS type, $10::jsonb AS detail WHERE $3::integer IS NOT NULL
        UNION ALL
        SELECT 2, 'status.changed', $13::jsonb FROM moved
        UNION ALL
        SELECT 3, 'output.ignored', $16::jsonb FROM moved WHERE $16::text IS NOT NULL
    ) AS e ORDER BY e.step
), ended AS (
    SELECT moved.id AS job_id, $14::text AS delivery_id, $15::text AS event_type, moved.callback_url AS url,
           $19::text AS holder, $20::float8 AS lease
    FROM moved
), {fragment:QUEUE_DELIVERIES}, wakes AS (
    SELECT pg_notify(w.c, w.p) FROM moved, LATERAL (
        SELECT $17::text, 'deliver' WHERE moved.callback_url IS NOT NULL AND $19::text IS NULL
        UNION ALL
        SELECT $18::text, moved.id) AS w(c, p)
)
SELECT coalesce((SELECT deleted FROM job), true) AND $3::integer IS NOT NULL AS deleted,
       EXISTS (SELECT 1 FROM moved) AS moved, (SELECT count(*) FROM wakes) AS woken,
       EXISTS (SELECT 1 FROM moved WHERE moved.callback_url IS NOT NULL) AS queued_delivery;

-- === Transitions of many jobs at once (service/db/jobs.py: bulk cancel and delete)

-- name: FINISH_MANY
-- Why: the batch form of a terminal ``transition`` (bulk cancel and delete), in one
-- statement: rows are locked in id order and the guard is re-checked on the locked row
-- (EvalPlanQual), so a job that became terminal meanwhile is left alone; the owner is in
-- the query. The moved jobs' events and deliveries (ids chosen by the caller, one per
-- job, used for the jobs with a callback URL) are appended by the same statement, and
-- waiters are told with one NOTIFY per ~7,000 bytes of ids (about 230 jobs; ids joined
-- by commas, grouped by their running length so a payload stays under Postgres's 8,000
-- bytes whatever the ids' length) instead of one each: 500 notifications a batch reached
-- serve's listener one by one while API requests waited.
-- The ids come as one comma-joined string, and each delivery id as the caller's prefix
-- plus its 16 characters of one random string: a Python list of 500 strings cost serve's
-- event loop ~1.5 ms a batch to encode (asyncpg checks every element), one string ~nothing.
WITH locked AS (
    SELECT id, status FROM jobs
    WHERE id = ANY(string_to_array(:ids, ',')) AND owner = :owner AND status = ANY(:allowed)
    ORDER BY id FOR UPDATE),
moved AS (
    UPDATE jobs j SET status = :target, updated_at = now(), locked_until = NULL, locked_by = NULL,
                      run_after = NULL, completed_at = now(),
                      callback_status = {fragment:CALLBACK_STATUS_ENDED},
                      callback_attempts = {fragment:CALLBACK_ATTEMPTS_ENDED}
    FROM locked WHERE j.id = locked.id
    RETURNING j.id, locked.status AS old, j.callback_url),
numbered AS (SELECT id, old, callback_url, row_number() OVER (ORDER BY id) AS n FROM moved),
events AS (
    INSERT INTO job_events (job_id, type, detail)
    SELECT id, 'status.changed',
           jsonb_build_object('from', old, 'to', CAST(:target AS text), 'reason', CAST(:reason AS text))
    FROM numbered),
ended AS (
    SELECT id AS job_id, :delivery_head || substr(:delivery_tails, CAST(n AS integer) * 16 - 15, 16) AS delivery_id,
           CAST(:event AS text) AS event_type, callback_url AS url,
           CAST(NULL AS text) AS holder, CAST(NULL AS float8) AS lease
    FROM numbered),
{fragment:QUEUE_DELIVERIES},
told AS (
    SELECT pg_notify(:done_channel, string_agg(id, ',' ORDER BY n))
    FROM (SELECT id, n, sum(length(id) + 1) OVER (ORDER BY n) / 7000 AS payload FROM numbered) AS c
    GROUP BY payload
    UNION ALL
    SELECT pg_notify(:work_channel, 'deliver') WHERE EXISTS (SELECT FROM queued_deliveries))
-- ``told`` is a plain SELECT: Postgres runs it only if the outer query reads it, hence its count.
SELECT (SELECT count(*) FROM numbered) AS moved, (SELECT count(*) FROM told) AS notifications;

-- === Provider capacity and fair turns (service/db/submits.py, service/db/fairness.py, service/db/admission.py)

-- name: ENSURE_SLOTS
-- Why: the rows must exist before they can be claimed; adding missing ones is idempotent
-- and safe to race (ON CONFLICT). Rows past a lowered limit are ignored by the claim.
-- Only numbers past the highest row are tried: rows are only ever added by this
-- statement, from 0 up, so those below it exist, and every process that starts would
-- otherwise probe the index once per slot (a second of Postgres's CPU per million).
INSERT INTO provider_slots (slot)
SELECT generate_series((SELECT coalesce(max(slot) + 1, 0) FROM provider_slots), :n - 1)
ON CONFLICT DO NOTHING;

-- name: ADOPT_LOCK
-- Why: one adopter at a time (0x77736A04: "wsj" then 04; owner caps use ...03); held to
-- the end of the transaction, taken only when a process starts claiming.
SELECT pg_advisory_xact_lock(2004052484);

-- name: ORPHANS_IN_FLIGHT
-- Why: a job sent before the provider slots existed (revision 0006 applied under a
-- running service) or by a process without them holds no slot, yet the provider counts
-- it: each takes a free slot (ADOPT_FREE_SLOT, BIND_SLOT), oldest send first, so the
-- claim never has more than PROVIDER_MAX_IN_FLIGHT upstream from the first claim on.
-- Read once per process, under ADOPT_LOCK, so two processes starting together cannot
-- bind one job to two slots; at most :n (no more slots exist). Jobs beyond the free
-- slots stay unbound (the provider is over the limit already; they end on their own).
SELECT j.id, j.owner
FROM jobs j
WHERE j.status IN ({status:queued}, {status:submitted}, {status:processing}) AND j.submit_sent_at IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM provider_slots s WHERE s.job_id = j.id)
ORDER BY j.submit_sent_at, j.id
LIMIT :n;

-- name: ADOPT_FREE_SLOT
-- Why: a free slot, locked, taken the way the claim takes one (provider_free_slot in
-- schema.sql judges the slot it locked again with a fresh snapshot: a walk in one
-- statement could take a slot a claimer in another process had just filled); NULL when
-- none is free.
SELECT provider_free_slot(:n) AS slot;

-- name: BIND_SLOT
-- Why: the orphan holds the slot ADOPT_FREE_SLOT locked in this transaction.
UPDATE provider_slots SET job_id = :id, owner = :owner WHERE slot = :slot;

-- name: ENSURE_TOKENS
-- Why: as ENSURE_SLOTS, for the rate tokens (one row per submit a minute: a million rows
-- at PROVIDER_MAX_PER_MINUTE=1000000, 1.8 s of a core to probe again at each start).
INSERT INTO provider_rate_tokens (token)
SELECT generate_series((SELECT coalesce(max(token) + 1, 0) FROM provider_rate_tokens), :n - 1)
ON CONFLICT DO NOTHING;

-- name: CLAIM_SUBMITS
SELECT claim_submits(:worker, :lease, :limit, :max_in_flight, :max_per_minute) AS id;

-- name: TAKE_PROVIDER_SLOT
SELECT take_provider_slot(:id, :worker, :max_in_flight, :max_per_minute) AS verdict;

-- name: NEXT_TAG
-- Why: one definition of a job's turn (owner_next_vtag, revision 0010), which admission
-- computes under the owner's row lock. Both of its parts are index probes
-- (jobs_fair_queue, backward for the owner's last tag; one LIMIT 1 per owner for the
-- heads). Paused owners and owners at their cap do not hold virtual time back: a
-- newcomer would otherwise get turns in front of owners who are being served.
SELECT owner_next_vtag(:owner, :priority, :weight, :max_in_flight) AS tag;

-- name: RETRY_ESTIMATES
-- Why: a bulk retry is a submit too. Each new job's estimate is its retried job's
-- reservation (same model and input), checked against the budget for the whole batch
-- under the owner's row lock; jobs admitted before the ledger existed reserve nothing.
SELECT n.id, n.model, n.created_at, coalesce(r.amount_usd, 0) AS amount, coalesce(r.images, 1) AS images
FROM jobs n LEFT JOIN ledger r ON r.job_id = n.retry_of AND r.kind = 'reserve'
WHERE n.id = ANY(:ids) AND n.owner = :owner
ORDER BY n.id;

-- name: RETRY_TAGS
-- Why: the copies take consecutive turns after the owner's waiting jobs, like submits.
UPDATE jobs SET vtag = :base + t.ord / :weight
FROM unnest(CAST(:ids AS text[])) WITH ORDINALITY AS t(id, ord)
WHERE jobs.id = t.id;

-- === Money (service/db/ledger.py)

-- name: BUDGET_FIGURES
-- Why: one statement, so one snapshot: a job's spend and release (one transaction) are
-- seen together or not at all. The function (owner_money, revision 0010) is also what
-- admission checks under the owner's row lock: one definition of the figures. Its
-- horizon is one index probe of (owner, status, created_at) per active status and one of
-- the owner's held reservations, never a read of the owner's history.
SELECT spent, reserved FROM owner_money(:owner, :start, :end);

-- name: ADMIT_JOB (asyncpg)
-- Why: the whole admission in one statement (admit_job, revision 0010), sent outside
-- any transaction block so the server commits it before answering: the owner's row is
-- held from its lock to the commit with no round trip to the API process in between,
-- and the budget figures are read after the lock (a new snapshot per statement inside
-- the function), so concurrent submits never overshoot. Raw asyncpg SQL, on the raw
-- connection (service/db/admission.py): $1 id, $2 owner, $3 model, $4 input (JSON), $5
-- metadata (JSON), $6 callback URL, $7 Idempotency-Key, $8 request hash, $9 priority, $10
-- start timeout, $11 estimate, $12 images, $13 provider's in-flight cap, $14 and $15 the
-- month, $16 the work channel, $17 traceparent.
SELECT verdict, job_id, budget, spent, reserved FROM admit_job(
    $1::text, $2::text, $3::text, $4::jsonb, $5::jsonb, $6::text, $7::text, $8::text, $9::integer,
    $10::integer, $11::numeric, $12::integer, $13::integer, $14::timestamptz, $15::timestamptz, $16::text,
    $17::text);

-- name: ADMITTED_JOB (asyncpg)
-- The job admission answers with (after ADMIT_JOB committed: a statement of its own sees it).
SELECT * FROM jobs WHERE id = $1;

-- name: RESERVE
INSERT INTO ledger (owner, job_id, kind, amount_usd, images, model, reserved_at)
VALUES (:owner, :job_id, 'reserve', :amount, :images, :model, :reserved_at)
ON CONFLICT (job_id, kind) DO NOTHING;

-- name: RELEASE_RESERVATION
-- Why: the same function the end-of-job trigger calls; a second call changes nothing.
SELECT ledger_release(:job_id);

-- name: SETTLE_HELD (asyncpg)
-- Why: a late result of a job that ended after its task was sent (provider news judged
-- "late", service/db/news.py): the images made are spent and the held reservation
-- released by the one function that settles holds. $1 job ids, $2 images made (0: none).
SELECT ledger_settle_held($1::text[], $2::integer[]);

-- name: RELEASE_HELD
-- Why: holds whose task was not heard of by its deadline end with nothing spent
-- (service/work/holds.py), through the same function.
SELECT ledger_settle_held(string_to_array(:ids, ','), NULL::integer[]);

-- name: EXPIRED_HOLDS
-- Why: held reservations past their task's deadline (the job's deadline_at, or the send
-- plus JOB_DEADLINE_SECONDS when the submit's answer never came), with the task to ask
-- about once more. The table holds only jobs ended during their task's life: it is short.
SELECT h.job_id, j.provider_task_id AS task_id
FROM ledger_holds h JOIN jobs j ON j.id = h.job_id
WHERE coalesce(h.deadline_at, h.sent_at + make_interval(secs => :deadline)) <= now()
ORDER BY h.job_id
LIMIT :limit;

-- name: USAGE_BY_DAY
-- Why: completed jobs' spend in [start, end), grouped; read from the spend index alone.
SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS key, count(*) AS jobs, sum(images) AS images,
       sum(amount_usd) AS cost
FROM ledger WHERE owner = :owner AND kind = 'spend' AND at >= :start AND at < :end
GROUP BY 1 ORDER BY 1;

-- name: USAGE_BY_MODEL
SELECT model AS key, count(*) AS jobs, sum(images) AS images, sum(amount_usd) AS cost
FROM ledger WHERE owner = :owner AND kind = 'spend' AND at >= :start AND at < :end
GROUP BY 1 ORDER BY 1;

-- === Callbacks (service/db/deliveries.py)

-- name: DELIVERY_FOR_ATTEMPT (asyncpg)
-- Why one statement: everything an attempt needs before it is sent, in one round trip
-- (the deliverer's hot path): the delivery, its job's task id (log lines), owner, trace and
-- whether it is deleted, and the owner's callback secrets (has_secrets false: the owner
-- has no row yet, one is made through callback_secrets.current), all prefixed ``d_``; then
-- the job's own columns and, while no body is frozen (a series' first attempt), its stored
-- outputs prefixed ``output_`` (one row per output in index order, or one row with NULL
-- output columns), so the body is built without a read of its own (JOB_WITH_OUTPUTS'
-- columns; the job is the delivery's, whose owner the body goes to, so no owner filter).
-- Nothing is locked: the delivery is ours by its lease, and every write after this is
-- fenced on it.
SELECT d.id AS d_id, d.job_id AS d_job_id, d.event_type AS d_event_type, d.url AS d_url, d.body AS d_body,
       d.status AS d_status, d.attempts AS d_attempts, d.locked_by AS d_locked_by, d.created_at AS d_created_at,
       j.provider_task_id AS d_task_id, j.owner AS d_owner, j.traceparent AS d_traceparent,
       s.owner IS NOT NULL AS d_has_secrets, s.secret AS d_secret, s.previous_secret AS d_previous_secret,
       coalesce(s.previous_expires_at > now(), false) AS d_previous_live,
       s.previous_expires_at AS d_previous_expires_at,
       j.*, o.job_id AS output_job_id, o.index AS output_index, o.source_url AS output_source_url,
       o.key AS output_key, o.content_type AS output_content_type, o.size_bytes AS output_size_bytes,
       o.sha256 AS output_sha256, o.thumbnail_key AS output_thumbnail_key, o.stored_at AS output_stored_at,
       o.content_credentials AS output_content_credentials
FROM deliveries d
JOIN jobs j ON j.id = d.job_id
LEFT JOIN callback_secrets s ON s.owner = j.owner
LEFT JOIN job_outputs o ON o.job_id = j.id AND d.body = ''
WHERE d.id = $1
ORDER BY o.index;

-- name: FREEZE_BODY (asyncpg)
-- Why: the body every attempt of a series sends is stored once, before the first attempt;
-- fenced on our lease ($3) and written only over an empty one ($1 delivery, $2 body).
UPDATE deliveries SET body = $2 WHERE id = $1 AND locked_by = $3 AND body = '' RETURNING id;

-- name: RECORD_ATTEMPT (asyncpg)
-- Why one statement: an attempt of a delivery whose job is not deleted is recorded in one
-- round trip, instead of a transaction of six (the deliverer's hot path).
-- $1 delivery id, $2 its job, $3 our lease (locked_by), $4 the attempt's number, $5 the
-- delivery's status after it, $6 the HTTP status (NULL: none), $7 the error, $8 seconds
-- until the next attempt (NULL: none), $9 the callback.attempt event's detail (JSON), $10
-- the event that closes the series (callback.delivered / callback.failed; NULL: none),
-- $11 its detail (JSON).
-- - job: the job's row is locked first (the lock order); every other part reads it, so
-- no row of deliveries is locked before it.
-- - live: a deleted job is left alone (answer deleted, nothing written): its callback
-- URLs are forgotten once no callback of it is pending, which needs a look at its other
-- deliveries after the lock (FORGET_CALLBACK_URLS in a transaction of its own,
-- service/work/deliverer.py), not this statement's snapshot, taken before the lock.
-- - moved: fenced on our lease and on the delivery still pending; not moved: the lease
-- lapsed and another worker took the row, the attempt is still logged (lease_lost).
-- - mirror: the job shows its delivery's state and attempt count.
-- - events: the attempt, then the series' end, in that order.
WITH job AS (
    SELECT id, deleted_at IS NOT NULL AS deleted FROM jobs WHERE id = $2 FOR UPDATE
), live AS (
    SELECT id FROM job WHERE NOT deleted
), moved AS (
    UPDATE deliveries AS d SET
        attempts = $4::integer, status = $5::text, last_status_code = $6::integer, last_error = $7::text,
        next_attempt_at = now() + make_interval(secs => $8::float8),
        delivered_at = CASE WHEN $5::text = {delivery:delivered} THEN now() END,
        locked_until = NULL, locked_by = NULL
    FROM live
    WHERE d.id = $1 AND d.job_id = live.id AND d.locked_by = $3 AND d.status = {delivery:pending}
    RETURNING d.id
), mirror AS (
    UPDATE jobs AS j SET callback_status = $5::text, callback_attempts = $4::integer
    FROM moved WHERE j.id = $2
), events AS (
    INSERT INTO job_events (job_id, type, detail)
    SELECT live.id, e.type, e.detail FROM live, (
        SELECT 1 AS step, 'callback.attempt' AS type,
               CASE WHEN EXISTS (SELECT 1 FROM moved) THEN $9::jsonb
                    ELSE $9::jsonb || '{"outcome": "lease_lost"}'::jsonb END AS detail
        UNION ALL
        SELECT 2, $10::text, $11::jsonb FROM moved WHERE $10::text IS NOT NULL
    ) AS e ORDER BY e.step
)
SELECT coalesce((SELECT deleted FROM job), false) AS deleted, EXISTS (SELECT 1 FROM moved) AS moved;

-- name: DEFER_FIRST_ATTEMPT
-- Why: a non-zero first entry of the schedule delays the first attempt. Counted from
-- the delivery's creation (the terminal transition), fenced on our lease, and a no-op
-- once that moment has passed.
UPDATE deliveries
SET next_attempt_at = created_at + make_interval(secs => :delay), locked_until = NULL, locked_by = NULL
WHERE id = :id AND locked_by = :worker AND attempts = 0
  AND created_at + make_interval(secs => :delay) > now()
RETURNING id;

-- name: REDELIVER
-- Why: a redelivery is the same event again, so it keeps its webhook-id (a backend that
-- did process it can recognise it) and starts a new attempt series with a fresh body
-- (fresh presigned URLs). A delivery still pending is only brought forward, never reset
-- under a worker that may be sending it right now.
UPDATE deliveries
SET status = {delivery:pending},
    attempts = CASE WHEN status = {delivery:pending} THEN attempts ELSE 0 END,
    body = CASE WHEN status = {delivery:pending} THEN body ELSE '' END,
    next_attempt_at = now(), delivered_at = NULL
WHERE id = (SELECT id FROM deliveries WHERE job_id = :job_id ORDER BY created_at DESC, id DESC LIMIT 1)
RETURNING id, attempts;

-- === Bulk actions (service/db/bulk.py)

-- name: RETRY_MANY
-- Why: a retry is a new job with the old one's model, input, metadata and callback URL;
-- only failed or timed-out jobs of the owner qualify, and a job already retried is not
-- retried again (a repeated bulk retry must not pay twice). Each new job takes its own
-- trace context (:traces, one per new id: its admission span).
WITH made AS (
    INSERT INTO jobs (id, owner, model, input, metadata, callback_url, status, run_after, retry_of, traceparent)
    SELECT n.new_id, j.owner, j.model, j.input, j.metadata, j.callback_url, {status:queued}, now(), j.id, n.trace
    FROM unnest(CAST(:old AS text[]), CAST(:new AS text[]), CAST(:traces AS text[])) AS n(old_id, new_id, trace)
    JOIN jobs j ON j.id = n.old_id
    WHERE j.owner = :owner AND j.status = ANY(:retryable) AND j.deleted_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.retry_of = j.id)
    RETURNING id, model, retry_of)
INSERT INTO job_events (job_id, type, detail)
SELECT id, 'job.created', jsonb_build_object('model', model, 'retry_of', retry_of) FROM made
RETURNING job_id;

-- name: REDELIVERABLE
SELECT id, status, callback_url FROM jobs
WHERE id = ANY(:ids) AND owner = :owner AND status = ANY(:terminal) AND callback_url IS NOT NULL
  AND deleted_at IS NULL
ORDER BY id FOR UPDATE;

-- === Data lifecycle (service/db/deletion.py, service/db/bulk.py)

-- name: MARK_DELETED
-- Why: the tombstone mark and the erasure duty row are written by one statement, so a
-- deleted job always has its erasure due until the erasure itself removes the row. Only
-- terminal jobs are marked (callers cancel first, in the same transaction); the owner is
-- in the query (NULL only for the retention sweep, which works across owners).
-- The row's own data (input, metadata, idempotency key, request hash, the provider's
-- error text, which can echo the prompt) is erased by the same UPDATE: the row is rewritten once, not again by the eraser (each rewrite of a jobs
-- row puts a new entry in every one of its indexes: ~2 MB of WAL per 1,000 jobs, WAL the
-- receiver's commits wait to flush). ERASE_JOB_DATA still covers rows marked before.
WITH marked AS (
    UPDATE jobs SET deleted_at = now(), deleted_reason = :reason, updated_at = now(),
                    input = '{}'::jsonb, metadata = '{}'::jsonb, idempotency_key = NULL,
                    request_hash = NULL, has_nsfw_contents = NULL, error = NULL
    WHERE id = ANY(string_to_array(:ids, ',')) AND deleted_at IS NULL AND status = ANY(:terminal)
      AND (CAST(:owner AS text) IS NULL OR owner = :owner)
    RETURNING id),
logged AS (
    INSERT INTO job_events (job_id, type, detail)
    SELECT id, 'job.deleted', jsonb_build_object('reason', CAST(:reason AS text)) FROM marked),
queued AS (
    INSERT INTO erasures (job_id, reason) SELECT id, :reason FROM marked
    ON CONFLICT (job_id) DO NOTHING
    RETURNING job_id)
SELECT coalesce(array_agg(job_id), '{}') AS job_ids FROM queued;

-- name: RETENTION_BATCH
-- Why: retention picks its batch on the partial index jobs_retention (terminal, not yet
-- deleted, oldest first); SKIP LOCKED so a job a worker or the API holds right now is
-- simply taken by a later sweep. The owner's retention_days wins over the default
-- (OUTPUT_RETENTION_DAYS); with neither, make_interval gives NULL and the job is kept.
SELECT coalesce(array_agg(id), '{}') AS ids FROM (
    SELECT j.id FROM jobs j LEFT JOIN owners o ON o.name = j.owner
    WHERE j.deleted_at IS NULL AND j.completed_at IS NOT NULL
      AND j.completed_at < now() - make_interval(days => :shortest)
      AND j.completed_at < now() - make_interval(days => coalesce(o.retention_days, CAST(:days AS integer)))
      AND j.status = ANY(:terminal)
    ORDER BY j.completed_at
    LIMIT :limit
    FOR UPDATE OF j SKIP LOCKED) AS due;

-- name: SHORTEST_RETENTION
-- The shortest retention anyone has: the sweep's index walk starts no later than that.
SELECT least(CAST(:days AS integer), (SELECT min(retention_days) FROM owners)) AS days;

-- name: EXTEND_ERASURE_LEASE
-- Why: a batch is claimed, then waits for the pacer's turn, and the duties' rests are long
-- (30 x a batch); its lease is extended when the turn comes, so it covers the work and not
-- the wait. Fenced on the token: rows another worker took after a lapse stay theirs.
UPDATE erasures SET locked_until = now() + make_interval(secs => :lease) WHERE locked_by = :token;

-- name: ERASURE_OBJECTS
-- Why one row of arrays: a batch's 500-1,000 objects as rows cost serve's event loop a
-- Row object each (the receiver shares that loop); arrays are decoded in C. Sizes are
-- summed per job, for the bytes metric of the jobs actually erased. ``stored_ids``: the
-- jobs whose outputs the storer may have copied (the provider completed them), whose
-- key prefix is listed too (an upload whose row was never written is found there).
WITH o AS (
    SELECT o.job_id, o.key, o.thumbnail_key, coalesce(o.size_bytes, 0) AS size_bytes
    FROM erasures e JOIN job_outputs o ON o.job_id = e.job_id
    WHERE e.locked_by = :token),
per_job AS (SELECT job_id, CAST(sum(size_bytes) AS bigint) AS bytes FROM o GROUP BY job_id)
SELECT coalesce((SELECT array_agg(v.k) FROM o CROSS JOIN LATERAL (VALUES (o.key), (o.thumbnail_key)) AS v(k)
                 WHERE v.k IS NOT NULL), '{}') AS keys,
       coalesce(p.job_ids, '{}') AS job_ids, coalesce(p.job_bytes, '{}') AS job_bytes,
       coalesce((SELECT array_agg(e.job_id ORDER BY e.job_id) FROM erasures e JOIN jobs j ON j.id = e.job_id
                 WHERE e.locked_by = :token AND j.provider_status = {provider:completed}), '{}') AS stored_ids
FROM (SELECT array_agg(job_id ORDER BY job_id) AS job_ids, array_agg(bytes ORDER BY job_id) AS job_bytes
      FROM per_job) AS p;

-- name: ERASE_LOCK_JOBS
-- Why: the erasure of a batch is one transaction that takes row locks in the documented
-- order (jobs, then deliveries, then the rest) and ends by removing the duty rows: the
-- data is either all erased with no duty left, or untouched with the duty still due.
-- Each job's traceparent comes along: its erasure is a span of its trace.
SELECT coalesce(array_agg(id ORDER BY id), '{}') AS ids,
       coalesce(array_agg(traceparent ORDER BY id), '{}') AS traces FROM (
    SELECT j.id, j.traceparent FROM jobs j JOIN erasures e ON e.job_id = j.id
    WHERE e.locked_by = :token ORDER BY j.id FOR UPDATE OF j) AS locked;

-- name: ERASE_JOB_DATA
-- The erasure statements, run in this order in the batch's transaction (queries.ERASE_STATEMENTS).
-- Rows already erased by MARK_DELETED are left alone (an UPDATE to the same values still
-- writes a new row version, and WAL for every index).
UPDATE jobs SET input = '{}'::jsonb, metadata = '{}'::jsonb, idempotency_key = NULL,
    request_hash = NULL, has_nsfw_contents = NULL, error = NULL, updated_at = now()
WHERE id = ANY(string_to_array(:ids, ','))
  AND (input <> '{}'::jsonb OR metadata <> '{}'::jsonb OR idempotency_key IS NOT NULL
       OR request_hash IS NOT NULL OR has_nsfw_contents IS NOT NULL OR error IS NOT NULL);

-- name: FORGET_CALLBACK_URLS
-- Why: a deleted job keeps its callback URL (the job's and its deliveries') only while a
-- callback of it is still to be sent (the job.canceled of a DELETE of a running job); the
-- erasure forgets them for every job of its batch with none pending, and the deliverer
-- for a deleted job whose last pending callback has just ended. The jobs are locked first.
WITH gone AS (
    SELECT j.id FROM jobs j
    WHERE j.id = ANY(string_to_array(:ids, ',')) AND j.deleted_at IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id = j.id AND d.status = {delivery:pending})
), urls AS (
    UPDATE deliveries SET url = '' WHERE job_id IN (SELECT id FROM gone) AND url <> ''
)
UPDATE jobs SET callback_url = NULL WHERE id IN (SELECT id FROM gone) AND callback_url IS NOT NULL;

-- name: ERASE_DELIVERY_BODIES
UPDATE deliveries SET body = '' WHERE job_id = ANY(string_to_array(:ids, ',')) AND body <> '';

-- name: ERASE_OUTPUTS
DELETE FROM job_outputs WHERE job_id = ANY(string_to_array(:ids, ','));

-- name: ERASE_WEBHOOK_BODIES
UPDATE webhook_events SET body = '{}'::jsonb WHERE job_id = ANY(string_to_array(:ids, ',')) AND body <> '{}'::jsonb;

-- name: ERASE_EVENT_DETAILS
-- Event details may hold a prompt, a key or an output URL: only a status change's
-- from/to/reason survive.
UPDATE job_events SET detail = CASE WHEN type = 'status.changed'
    THEN jsonb_strip_nulls(jsonb_build_object('from', detail->'from', 'to', detail->'to',
                                              'reason', detail->'reason'))
    ELSE '{}'::jsonb END
WHERE job_id = ANY(string_to_array(:ids, ',')) AND detail <> '{}'::jsonb;

-- name: FINISH_ERASURES
WITH done AS (DELETE FROM erasures WHERE locked_by = :token AND job_id = ANY(string_to_array(:ids, ','))
              RETURNING job_id, reason),
logged AS (INSERT INTO job_events (job_id, type, detail)
           SELECT job_id, 'job.erased', jsonb_build_object('reason', reason) FROM done)
SELECT coalesce(array_agg(job_id), '{}') AS job_ids FROM done;

-- name: RETRY_ERASURES
-- Why: a batch that failed (S3 down) is handed back with a delay, fenced on its token.
UPDATE erasures SET locked_until = NULL, locked_by = NULL, last_error = :error,
                    run_after = now() + make_interval(secs => :delay)
WHERE locked_by = :token;

-- === Keys and pages (service/db/keys.py, service/db/history.py, service/api/health.py)

-- name: LOOKUP_KEY (asyncpg)
-- Why one statement: the lookup and the last_used_at stamp in one round trip. The stamp
-- is written at most once a minute per key, so busy keys cost no write per request.
-- $1: the key's hash. Raw asyncpg: every API request runs it (engine.raw_statement).
WITH k AS (
    SELECT id, owner, last_used_at FROM api_keys
    WHERE key_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
), used AS (
    UPDATE api_keys SET last_used_at = now() FROM k
    WHERE api_keys.id = k.id AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '60 seconds')
)
SELECT owner FROM k;

-- name: JOB_WITH_OUTPUTS (asyncpg)
-- Why one statement: a job and its stored outputs read in one round trip and one
-- snapshot (GET /v1/jobs/{id}, the answer of a submit or a cancel). One row per output
-- in index order, or one row with NULL output columns; none if the job is not the
-- owner's ($2: the caller's, always; the owner filter is in the statement itself).
SELECT j.*, o.job_id AS output_job_id, o.index AS output_index, o.source_url AS output_source_url,
       o.key AS output_key, o.content_type AS output_content_type, o.size_bytes AS output_size_bytes,
       o.sha256 AS output_sha256, o.thumbnail_key AS output_thumbnail_key, o.stored_at AS output_stored_at,
       o.content_credentials AS output_content_credentials
FROM jobs j LEFT JOIN job_outputs o ON o.job_id = j.id
WHERE j.id = $1 AND j.owner = $2
ORDER BY o.index;

-- name: HELD_JOB_WITH_OUTPUTS (asyncpg)
-- Why one statement: a job a worker holds (its lease: no tenant is asking, so no owner
-- filter) and all its outputs, in one round trip and one snapshot (the storer's read).
SELECT j.*, o.job_id AS output_job_id, o.index AS output_index, o.source_url AS output_source_url,
       o.key AS output_key, o.content_type AS output_content_type, o.size_bytes AS output_size_bytes,
       o.sha256 AS output_sha256, o.thumbnail_key AS output_thumbnail_key, o.stored_at AS output_stored_at,
       o.content_credentials AS output_content_credentials
FROM jobs j LEFT JOIN job_outputs o ON o.job_id = j.id
WHERE j.id = $1
ORDER BY o.index;

-- name: PING
-- Why: the readiness probe asks the database for the least it can answer.
SELECT 1;

-- name: PAGE_SETTINGS
-- For the rest of the caller's transaction (set_config(..., true) is SET LOCAL):
-- - custom plans: the statement is prepared and cached per connection, and after five
-- runs Postgres may switch to a generic plan blind to the values, yet the best plan
-- for a rare metadata value is the worst for a common one (measured: 2 ms → 500 ms);
-- - no JIT and no parallel workers: a page reads about a hundred rows, and compiling
-- (≈ 280 ms) or starting workers only pays off for scans of millions.
SELECT set_config('plan_cache_mode', 'force_custom_plan', true), set_config('jit', 'off', true), set_config('max_parallel_workers_per_gather', '0', true);

-- === Metrics (service/db/gauges.py, for service/observability/metrics.py)

-- name: FOLD_COUNTS
-- Why: fold first (tried, never waited for: see migrations/versions/0008), then read
-- the folded counts of terminal jobs plus, live, the terminal jobs not folded yet (a
-- range of the jobs_terminal index) and the active ones (the small partial index jobs_due,
-- which includes each job's model: revision 0017).
-- One statement, so one snapshot: the mark and the counts it folded agree.
SELECT fold_job_counts();

-- name: JOB_COUNTS
SELECT status, model, sum(n)::bigint AS n
FROM (SELECT status, model, n FROM job_counts
      UNION ALL
      SELECT status, model, count(*) FROM jobs, job_counts_mark m
      WHERE terminal_at >= m.counted_until AND status IN ({statuses:terminal})
      GROUP BY status, model
      UNION ALL
      SELECT status, model, count(*) FROM jobs
      WHERE status IN ({statuses:active})
      GROUP BY status, model) c
GROUP BY status, model
HAVING sum(n) <> 0;

-- name: JOB_WORK
-- Why: only active jobs carry run_after; this walks the small partial index jobs_due (the active jobs),
-- never the history. "Due" is exactly what a claim would take now (queries.CLAIM_JOBS).
SELECT CASE status WHEN {status:queued} THEN 'submit' WHEN {status:storing} THEN 'store' ELSE 'reconcile' END AS duty,
       count(*) FILTER (WHERE locked_until IS NULL OR locked_until < now()) AS due,
       count(*) FILTER (WHERE locked_until >= now()) AS leased,
       extract(epoch FROM now() - min(run_after) FILTER (WHERE locked_until IS NULL OR locked_until < now()))
         AS oldest
FROM jobs
WHERE run_after IS NOT NULL AND run_after <= now()
  AND status IN ({statuses:active})
GROUP BY 1;

-- name: DELIVERY_WORK
-- Why: the partial index deliveries_due holds pending deliveries only.
SELECT 'deliver' AS duty,
       count(*) FILTER (WHERE locked_until IS NULL OR locked_until < now()) AS due,
       count(*) FILTER (WHERE locked_until >= now()) AS leased,
       extract(epoch FROM now() - min(next_attempt_at) FILTER (WHERE locked_until IS NULL OR locked_until < now()))
         AS oldest
FROM deliveries
WHERE status = {delivery:pending} AND next_attempt_at <= now();

-- name: WAITING
-- Why: the partial index jobs_fair_queue holds exactly the jobs waiting to be sent; the
-- count reads that index alone (its size is the backlog, not the history).
SELECT owner, priority, count(*) AS n FROM jobs
WHERE status = {status:queued} AND submit_sent_at IS NULL
GROUP BY owner, priority;

-- === The database's own settings (service/db/engine.py)

-- name: JIT_SETTING (asyncpg)
-- Why: behind a transaction pooler the service cannot switch JIT off per session
-- (engine.SESSION_SETTINGS); start-up reads what the database gives it, to warn.
SELECT current_setting('jit');
