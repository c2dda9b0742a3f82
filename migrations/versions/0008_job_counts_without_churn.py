"""Job counts without churn: no row written per status change.

0004 kept exact counts by appending two ``job_count_deltas`` rows on every status
change; under webhook load that table held 136,681 dead rows beside 2,026 live ones
after one 15-second run, and every transition paid two heap inserts and their WAL.

Now the hot path writes no count row at all:

* active jobs (queued, submitted, processing, storing) are few (work in flight), so a
  scrape counts them live through the small partial index ``jobs_active``;
* terminal jobs never change again, so they are counted once: ``job_counts`` holds the
  terminal jobs that became terminal before ``job_counts_mark.counted_until`` (each
  job's ``terminal_at`` is stamped by a BEFORE trigger in the row it already writes,
  with no write of its own), and a scrape counts the rest live through ``jobs_terminal``
  (a range of the last seconds) and then folds them in (``fold_job_counts``).

The fold only moves the mark up to the start of the oldest transaction still running
(less a margin): a job that becomes terminal is stamped with its own transaction's start
time, so no job can still commit below the mark. Rare changes to jobs already folded (a
delete, or a status/model change that the service never makes) adjust ``job_counts`` in
their own transaction, serialised with folds by the mark's row lock.

Revision ID: 0008
Revises: 0005
Create Date: 2026-12-02
"""

from alembic import op

revision = "0008"
down_revision = "0005"
branch_labels = None
depends_on = None

TERMINAL = "('completed', 'failed', 'canceled', 'timed_out')"
ACTIVE = "('queued', 'submitted', 'processing', 'storing')"
FOLD_LOCK = 0x7773_6A02  # as 0004's fold: "wsj" count fold (the throttle uses ...01)


def upgrade() -> None:
    for trigger in ("jobs_count_delete", "jobs_count_update", "jobs_count_insert"):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON jobs")
    for function in ("jobs_count_deleted()", "jobs_count_status()", "fold_job_count_deltas()"):
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
    op.execute("DROP TABLE IF EXISTS job_count_deltas")
    # Locks jobs (ACCESS EXCLUSIVE) until the end of the migration: the counts below are
    # taken with no writer in between. No default, so no table rewrite.
    op.execute("ALTER TABLE jobs ADD COLUMN terminal_at timestamptz")
    # Jobs already terminal keep terminal_at NULL and count as folded.
    op.execute("TRUNCATE job_counts")
    op.execute(f"INSERT INTO job_counts SELECT status, model, count(*) FROM jobs WHERE status IN {TERMINAL} "
               "GROUP BY status, model")
    op.execute("CREATE TABLE job_counts_mark (one boolean PRIMARY KEY DEFAULT true CHECK (one), "
               "counted_until timestamptz NOT NULL)")
    op.execute("INSERT INTO job_counts_mark (counted_until) VALUES (now())")
    op.execute(f"CREATE INDEX jobs_active ON jobs (status, model) WHERE status IN {ACTIVE}")
    op.execute("CREATE INDEX jobs_terminal ON jobs (terminal_at) WHERE terminal_at IS NOT NULL")
    op.execute(
        """
        CREATE FUNCTION jobs_stamp_terminal() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.terminal_at := now();  -- this transaction's start: see fold_job_counts
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER jobs_terminal_insert BEFORE INSERT ON jobs
        FOR EACH ROW WHEN (NEW.status IN {TERMINAL}) EXECUTE FUNCTION jobs_stamp_terminal()
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER jobs_terminal_update BEFORE UPDATE OF status ON jobs
        FOR EACH ROW WHEN (NEW.status IN {TERMINAL} AND OLD.status NOT IN {TERMINAL})
        EXECUTE FUNCTION jobs_stamp_terminal()
        """
    )
    # A folded job that changes or goes: take it out of job_counts (and count it under
    # its new key if it is still terminal and so still folded). The mark's row lock
    # waits for a fold in progress, so the job is judged against the mark that fold set.
    op.execute(
        f"""
        CREATE FUNCTION jobs_unfold() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            mark timestamptz;
        BEGIN
            SELECT counted_until INTO mark FROM job_counts_mark FOR SHARE;
            IF OLD.terminal_at IS NOT NULL AND OLD.terminal_at >= mark THEN
                RETURN NULL;  -- not folded yet: the live count sees the change
            END IF;
            UPDATE job_counts SET n = n - 1 WHERE status = OLD.status AND model = OLD.model;
            IF TG_OP = 'UPDATE' AND NEW.status IN {TERMINAL} THEN
                INSERT INTO job_counts VALUES (NEW.status, NEW.model, 1)
                ON CONFLICT (status, model) DO UPDATE SET n = job_counts.n + 1;
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER jobs_unfold_update AFTER UPDATE OF status, model ON jobs
        FOR EACH ROW WHEN (OLD.status IN {TERMINAL}
                           AND (OLD.status, OLD.model) IS DISTINCT FROM (NEW.status, NEW.model))
        EXECUTE FUNCTION jobs_unfold()
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER jobs_unfold_delete AFTER DELETE ON jobs
        FOR EACH ROW WHEN (OLD.status IN {TERMINAL}) EXECUTE FUNCTION jobs_unfold()
        """
    )
    # Folds are serialised by an advisory lock that is only ever tried (a scrape never
    # waits for another's fold). Each statement of a plpgsql function in READ COMMITTED
    # takes a fresh snapshot, so the count below sees every delete that held the mark.
    op.execute(
        f"""
        CREATE FUNCTION fold_job_counts(margin interval DEFAULT '5 seconds') RETURNS boolean
        LANGUAGE plpgsql AS $$
        DECLARE
            old_mark timestamptz;
            new_mark timestamptz;
        BEGIN
            IF NOT pg_try_advisory_xact_lock({FOLD_LOCK}) THEN
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
            WHERE terminal_at >= old_mark AND terminal_at < new_mark AND status IN {TERMINAL}
            GROUP BY status, model
            ON CONFLICT (status, model) DO UPDATE SET n = job_counts.n + EXCLUDED.n;
            UPDATE job_counts_mark SET counted_until = new_mark;
            RETURN true;
        END
        $$
        """
    )


def downgrade() -> None:
    for trigger in ("jobs_unfold_delete", "jobs_unfold_update", "jobs_terminal_update", "jobs_terminal_insert"):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON jobs")
    for function in ("fold_job_counts(interval)", "jobs_unfold()", "jobs_stamp_terminal()"):
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
    op.execute("DROP INDEX IF EXISTS jobs_terminal")
    op.execute("DROP INDEX IF EXISTS jobs_active")
    op.execute("DROP TABLE IF EXISTS job_counts_mark")
    op.execute("ALTER TABLE jobs DROP COLUMN IF EXISTS terminal_at")
    # Back to 0004's shape: every status counted in job_counts, kept by delta rows.
    op.execute("TRUNCATE job_counts")
    op.execute("INSERT INTO job_counts SELECT status, model, count(*) FROM jobs GROUP BY status, model")
    op.execute("CREATE TABLE job_count_deltas (status text NOT NULL, model text NOT NULL, delta integer NOT NULL)")
    op.execute(
        f"""
        CREATE FUNCTION fold_job_count_deltas() RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN
            IF NOT pg_try_advisory_xact_lock({FOLD_LOCK}) THEN
                RETURN false;
            END IF;
            WITH moved AS (DELETE FROM job_count_deltas RETURNING status, model, delta)
            INSERT INTO job_counts (status, model, n)
            SELECT status, model, sum(delta) FROM moved GROUP BY status, model
            ON CONFLICT (status, model) DO UPDATE SET n = job_counts.n + EXCLUDED.n;
            RETURN true;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION jobs_count_status() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'UPDATE' THEN
                INSERT INTO job_count_deltas VALUES (OLD.status, OLD.model, -1), (NEW.status, NEW.model, 1);
                IF random() < 0.001 THEN
                    PERFORM fold_job_count_deltas();
                END IF;
            ELSE
                INSERT INTO job_count_deltas VALUES (NEW.status, NEW.model, 1);
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION jobs_count_status()"
    )
    op.execute(
        """
        CREATE TRIGGER jobs_count_update AFTER UPDATE OF status, model ON jobs
        FOR EACH ROW WHEN ((OLD.status, OLD.model) IS DISTINCT FROM (NEW.status, NEW.model))
        EXECUTE FUNCTION jobs_count_status()
        """
    )
    op.execute(
        """
        CREATE FUNCTION jobs_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO job_count_deltas VALUES (OLD.status, OLD.model, -1);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs FOR EACH ROW EXECUTE FUNCTION jobs_count_deleted()"
    )
