"""History at scale: metadata filters walk a btree in page order.

A ``metadata.<key>=<value>`` filter used the GIN index on jobs.metadata, which finds the
matching jobs but not in ``(created_at, id)`` order: a value shared by a few thousand of
an owner's jobs meant fetching and sorting all of them for every page (20–300 ms at
1,000,000 jobs of one owner, tests/benchmarks/bench_history.py). ``job_metadata`` holds
one row per (job, key) with the job's owner and created_at, and its index
``(owner, key, value, created_at DESC, job_id DESC)`` returns an owner's matches newest
first from any cursor, so a page reads about ``limit`` rows whatever the value's
frequency.

Each row also carries the job's status, so a metadata filter combined with a status
filter is decided on index entries alone. The rows are kept by triggers on jobs in the
writer's own transaction, so every writer (API, facade, workers, a future import) stays
in step without knowing the table exists: an insert adds a job's keys, a status change
updates them (only for jobs that have metadata), and a change of metadata, owner or
created_at — which the service never makes — rewrites them.
Only string values are indexed: the API accepts nothing else, and a filter's value is a
string, which ``metadata @> {"key": "value"}`` would match only against a string too.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE job_metadata (
            job_id     text NOT NULL,
            key        text NOT NULL,
            value      text NOT NULL,
            owner      text NOT NULL,
            created_at timestamptz NOT NULL,
            status     text NOT NULL
        )
        """
    )
    # Backfill first, then the keys and indexes: a sorted build is faster than millions
    # of inserts and makes the index about half the size (measured at 3,000,000 jobs),
    # and the foreign key is then checked with one join instead of once per row.
    op.execute(
        """
        INSERT INTO job_metadata (job_id, key, value, owner, created_at, status)
        SELECT j.id, e.key, e.value #>> '{}', j.owner, j.created_at, j.status
        FROM jobs j, jsonb_each(j.metadata) e
        WHERE jsonb_typeof(e.value) = 'string'
        """
    )
    op.execute("ALTER TABLE job_metadata ADD PRIMARY KEY (job_id, key)")
    op.execute(
        "ALTER TABLE job_metadata ADD FOREIGN KEY (job_id) REFERENCES jobs(id) ON DELETE CASCADE"
    )
    # status rides along (INCLUDE): "failed jobs of tenant t_7" is then checked on the
    # index entries alone, instead of one jobs lookup per tenant job until a page is full.
    op.execute(
        "CREATE INDEX job_metadata_lookup ON job_metadata (owner, key, value, created_at DESC, job_id DESC) "
        "INCLUDE (status)"
    )
    # A value implies its key (user_id=u_1 is never an env): without this the planner
    # multiplies their frequencies and underestimates common pairs.
    op.execute("CREATE STATISTICS job_metadata_key_value (dependencies, mcv) ON key, value FROM job_metadata")
    op.execute(
        """
        CREATE FUNCTION jobs_sync_metadata() RETURNS trigger LANGUAGE plpgsql AS $$
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
        $$
        """
    )
    # The WHEN clauses keep the common cases free: a job without metadata never enters
    # the function, and updates that touch none of these columns (leases, attempts,
    # provider fields) do not fire at all.
    op.execute(
        """
        CREATE TRIGGER jobs_metadata_insert AFTER INSERT ON jobs
        FOR EACH ROW WHEN (NEW.metadata <> '{}'::jsonb) EXECUTE FUNCTION jobs_sync_metadata()
        """
    )
    op.execute(
        """
        CREATE TRIGGER jobs_metadata_update AFTER UPDATE OF metadata, owner, created_at, status ON jobs
        FOR EACH ROW WHEN ((OLD.metadata <> '{}'::jsonb OR NEW.metadata <> '{}'::jsonb)
                           AND (OLD.metadata, OLD.owner, OLD.created_at, OLD.status)
                               IS DISTINCT FROM (NEW.metadata, NEW.owner, NEW.created_at, NEW.status))
        EXECUTE FUNCTION jobs_sync_metadata()
        """
    )
    # Nothing reads the GIN index any more (service/db/history.py joins job_metadata), and
    # every insert paid for it.
    op.execute("DROP INDEX IF EXISTS jobs_metadata")
    # Plans for the new table from the first request, not after autovacuum's first pass.
    op.execute("ANALYZE job_metadata")


def downgrade() -> None:
    op.execute("CREATE INDEX IF NOT EXISTS jobs_metadata ON jobs USING gin (metadata jsonb_path_ops)")
    op.execute("DROP TRIGGER IF EXISTS jobs_metadata_update ON jobs")
    op.execute("DROP TRIGGER IF EXISTS jobs_metadata_insert ON jobs")
    op.execute("DROP FUNCTION IF EXISTS jobs_sync_metadata()")
    op.execute("DROP TABLE IF EXISTS job_metadata")
