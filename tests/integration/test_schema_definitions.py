"""The migrations arrive at service/db/schema.sql: every function and trigger a fresh
database has at head is defined there, the same way, and nothing else is; and each
revision's downgrade gives back the definitions that revision found."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.script import ScriptDirectory

from service.db.engine import alembic_config, migrate
from tests.conftest import fresh_database
from tests.schema_catalog import SCHEMA_SQL, catalog, catalog_of_file, differences


@pytest.fixture(scope="module")
def at_head(postgres_server: str) -> Iterator[str]:
    with fresh_database(postgres_server) as url:
        yield url


def test_a_fresh_database_at_head_has_exactly_the_definitions_of_schema_sql(at_head: str) -> None:
    with psycopg.connect(at_head, autocommit=True) as conn:
        migrated = catalog(conn)
        in_file = catalog_of_file(conn)
    assert {"function claim_submits(text,double precision,integer,integer,integer)",
            "function admit_job(text,text,text,jsonb,jsonb,text,text,text,integer,integer,numeric,integer,integer,"
            "timestamp with time zone,timestamp with time zone,text,text)",
            "trigger jobs.jobs_ledger", "trigger ledger.ledger_append_only"} <= migrated.keys()
    assert differences(in_file, migrated) == []


def test_a_function_changed_by_a_migration_and_not_in_the_file_is_reported(
        at_head: str, tmp_path: Path) -> None:
    # What a new revision that forgot schema.sql would leave: a changed body, a new
    # function and a new trigger. Rolled back, so the module's database stays at head.
    with psycopg.connect(at_head) as conn, conn.transaction(force_rollback=True):
        conn.execute("""
            CREATE OR REPLACE FUNCTION ledger_release(p_job_id text) RETURNS void LANGUAGE sql AS $$
                INSERT INTO ledger (owner, job_id, kind, amount_usd, images, model, reserved_at)
                SELECT owner, job_id, 'release', amount_usd, images, model, now()
                FROM ledger WHERE job_id = p_job_id AND kind = 'reserve'
                ON CONFLICT (job_id, kind) DO NOTHING
            $$""")
        conn.execute("CREATE FUNCTION jobs_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER jobs_touch BEFORE UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION jobs_touch()")
        found = differences(catalog_of_file(conn), catalog(conn))
    assert [line.split(":")[0] for line in found] == [
        "function jobs_touch()", "function ledger_release(text)", "trigger jobs.jobs_touch"]
    assert "reserved_at FROM ledger" in found[1] and "now() FROM ledger" in found[1]
    # And the file read alone: a definition it lost is reported too.
    shorter = tmp_path / "schema.sql"
    text = SCHEMA_SQL.read_text()
    shorter.write_text(text.replace("CREATE TRIGGER ledger_append_only", "CREATE TRIGGER ledger_append_only_x"))
    with psycopg.connect(at_head, autocommit=True) as conn:
        lost = differences(catalog_of_file(conn, shorter), catalog(conn))
    assert lost == ["trigger ledger.ledger_append_only: made by migrations, not in schema.sql",
                    "trigger ledger.ledger_append_only_x: in schema.sql, not made by migrations"]


def _steps() -> list[str]:
    """The revisions from the first that defines functions to head, oldest first."""
    script = ScriptDirectory.from_config(alembic_config(""))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


@pytest.mark.slow
def test_every_downgrade_gives_back_the_definitions_its_revision_found(postgres_server: str) -> None:
    # One database goes up a revision at a time and records the catalog at each; another
    # comes down from head a revision at a time and must match it at every step (the
    # downgrades carry copies of earlier revisions' bodies).
    steps = _steps()
    seen: dict[str, dict[str, str]] = {}
    with fresh_database(postgres_server) as going_up, fresh_database(postgres_server) as coming_down:
        command.downgrade(alembic_config(going_up), "base")
        with psycopg.connect(going_up, autocommit=True) as conn:
            for revision in steps:
                migrate(going_up, revision)
                seen[revision] = catalog(conn)
        with psycopg.connect(coming_down, autocommit=True) as conn:
            for revision in reversed(steps[:-1]):
                command.downgrade(alembic_config(coming_down), revision)
                now: dict[str, Any] = catalog(conn)
                assert differences(seen[revision], now, f"upgrade to {revision}", f"downgrade to {revision}") == []
