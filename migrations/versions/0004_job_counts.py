"""Job counts by status and model for /metrics, exact and cheap to read.

``count(*) … GROUP BY status, model`` reads the whole jobs table (about a second at
3,000,000 jobs), too much for every scrape. Instead a trigger appends a +1 (and a -1 for
the status left) to ``job_count_deltas`` on each insert and status change; appending
takes no lock another writer could wait on, so concurrent transitions never contend.
``fold_job_count_deltas()`` moves the deltas into ``job_counts`` (one row per status and
model). A scrape folds and reads a dozen rows; so that the deltas cannot pile up where
nothing scrapes, about one status change in a thousand folds too. Folds are serialised
by an advisory lock that is only ever *tried*, so a fold never waits and never deadlocks:
if another is running, the reader adds the pending deltas itself.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

FOLD_LOCK = 0x7773_6A02  # arbitrary, constant: "wsj" count fold (throttle uses ...01)


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE job_counts (
            status text NOT NULL,
            model  text NOT NULL,
            n      bigint NOT NULL,
            PRIMARY KEY (status, model)
        )
        """
    )
    # No index and no key: rows are only appended, then deleted wholesale by a fold.
    op.execute("CREATE TABLE job_count_deltas (status text NOT NULL, model text NOT NULL, delta integer NOT NULL)")
    op.execute("INSERT INTO job_counts SELECT status, model, count(*) FROM jobs GROUP BY status, model")
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


def downgrade() -> None:
    for trigger in ("jobs_count_delete", "jobs_count_update", "jobs_count_insert"):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON jobs")
    for function in ("jobs_count_deleted()", "jobs_count_status()", "fold_job_count_deltas()"):
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
    op.execute("DROP TABLE IF EXISTS job_count_deltas")
    op.execute("DROP TABLE IF EXISTS job_counts")
