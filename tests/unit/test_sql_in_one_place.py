"""The SQL the service writes by hand lives in one place, and names no status itself.

Every hand-written statement is in service/db/queries.sql (named, loaded by
service/db/queries.py) or built by queries.py's lease template; modules use
``queries.NAME``. Dynamic filters built with SQLAlchemy Core (history, bulk) are not
hand-written SQL and stay in their modules. Status values in SQL come from
service/domain/states.py: ``{status:NAME}`` placeholders in the file, bind parameters, or
``sql_values`` in the template. Migrations (migrations/) are history and are not
scanned.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Set
from pathlib import Path
from typing import get_args

import pytest

from service.db import queries, statements
from service.domain.states import DeliveryStatus, JobStatus, WavespeedStatus

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service"
# The only modules allowed to turn a string into SQL.
SQL_MODULES = {"service/db/queries.py", "service/db/statements.py"}
# The Alembic revisions: the SQL each release ran, kept as it ran.
SQL_START = re.compile(r"^\s*\(?\s*(SELECT|INSERT|UPDATE|DELETE|WITH|SET|LISTEN|NOTIFY|CREATE|ALTER|DROP)\s")
STATUS_NAMES = sorted({s.value for s in JobStatus} | {s.value for s in DeliveryStatus}
                      | set(get_args(WavespeedStatus)))
QUOTED_STATUS = re.compile("'(" + "|".join(STATUS_NAMES) + ")'")


def _modules(package: Path) -> list[Path]:
    return sorted(package.rglob("*.py"))


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string constant, and the literal text of every f-string, with its line."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            found.append((node.lineno, "".join(str(v.value) for v in node.values if isinstance(v, ast.Constant))))
    return found


def hand_written_sql(package: Path, root: Path = ROOT) -> list[str]:
    offenders = []
    for path in _modules(package):
        name = str(path.relative_to(root))
        if name in SQL_MODULES:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "sqlalchemy" and any(
                    a.name in ("text", "literal_column") for a in node.names):
                offenders.append(f"{name}:{node.lineno}: imports sqlalchemy's text/literal_column")
            if isinstance(node, ast.Attribute) and node.attr in ("exec_driver_sql",):
                offenders.append(f"{name}:{node.lineno}: {node.attr}")
        offenders += [f"{name}:{line}: SQL string {value.strip()[:40]!r}" for line, value in _strings(tree)
                      if SQL_START.match(value) or re.search(r"\$1\b", value)]
    return offenders


def status_literals(package: Path, root: Path = ROOT) -> list[str]:
    offenders = []
    for path in _modules(package):
        if path.is_relative_to(package / "domain"):
            continue
        offenders += [f"{path.relative_to(root)}:{line}: {m.group(0)}"
                      for line, value in _strings(ast.parse(path.read_text()))
                      for m in QUOTED_STATUS.finditer(value)]
    # schema.sql is the database's own text (what the migrations ran, compared with the
    # catalog), not statements the service renders: its literals are the stored ones.
    for path in sorted(p for p in package.rglob("*.sql") if p.name != "schema.sql"):
        offenders += [f"{path.relative_to(root)}:{number}: {m.group(0)}"
                      for number, line in enumerate(path.read_text().splitlines(), 1)
                      for m in QUOTED_STATUS.finditer(line)]
    return offenders


# Outside service/db/ a module calls named functions of service/db/; it neither runs a
# statement nor builds one. (The scan of hand-written SQL above only sees strings.)
NO_STATEMENTS_IN = ["api", "web", "cli", "work", "clients", "domain", "app.py", "resources.py", "settings.py"]
RUNS_A_STATEMENT = {"execute", "executemany", "exec_driver_sql", "scalar", "scalars", "fetch", "fetchrow", "fetchval"}
BUILDS_A_STATEMENT = {"select", "insert", "update", "delete", "text", "literal", "literal_column", "tuple_", "func",
                      "and_", "or_", "not_", "bindparam", "union", "union_all", "exists", "case", "cast", "column",
                      "table"}


def _is_db_statements(module: str, taken: Set[str] = frozenset()) -> bool:
    """``module`` (with the names taken from it) holds statements or their builders."""
    if module == "service.db":
        return bool(taken & {"queries", "statements"})
    return module in ("service.db.queries", "service.db.statements") or module.startswith(
        ("sqlalchemy.dialects", "sqlalchemy.sql"))


def statements_outside_db(paths: list[Path], root: Path = ROOT) -> list[str]:
    offenders = []
    for path in sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob("*.py"))):
        name = str(path.relative_to(root))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in RUNS_A_STATEMENT:
                offenders.append(f"{name}:{node.lineno}: runs a statement (.{node.func.attr})")
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                taken = {a.name for a in node.names}
                builders = ", ".join(sorted(taken & BUILDS_A_STATEMENT)) if node.module == "sqlalchemy" else ""
                if _is_db_statements(node.module, taken):
                    offenders.append(f"{name}:{node.lineno}: imports the statements ({node.module})")
                elif builders:
                    offenders.append(f"{name}:{node.lineno}: builds statements ({builders})")
            elif isinstance(node, ast.Import) and any(_is_db_statements(a.name) for a in node.names):
                offenders.append(f"{name}:{node.lineno}: imports the statements")
    return offenders


def test_requests_pages_commands_and_duties_run_no_statement_of_their_own() -> None:
    assert statements_outside_db([SERVICE / p for p in NO_STATEMENTS_IN]) == []


def test_the_statement_scan_sees_runs_builders_and_statement_imports(tmp_path: Path) -> None:
    (tmp_path / "mod.py").write_text(
        "from sqlalchemy import Row, select\nfrom sqlalchemy.dialects.postgresql import insert\n"
        "from service.db import jobs, queries\nimport service.db.queries\n"
        "async def f(conn):\n    await conn.execute(queries.PING)\n    await conn.fetchval('x')\n"
        "    await request.stream()\n    await jobs.get_job(conn, 'j')\n")
    assert [int(o.split(":")[1]) for o in statements_outside_db([tmp_path], tmp_path)] == [1, 2, 3, 4, 6, 7]


def test_no_hand_written_sql_outside_queries() -> None:
    assert hand_written_sql(SERVICE) == []


def test_no_status_literal_in_sql_outside_states() -> None:
    assert status_literals(SERVICE) == []


def test_the_scans_catch_what_they_forbid(tmp_path: Path) -> None:
    # A scan that finds nothing because it looks at nothing would pass the two tests above.
    package = tmp_path / "pkg"
    (package / "domain").mkdir(parents=True)
    (package / "mod.py").write_text(
        'from sqlalchemy import text\nQ = text("SELECT 1")\nR = "UPDATE jobs SET x = 1 WHERE status = \'queued\'"\n'
        'S = f"SELECT {1} FROM t"\nT = "SELECT $1::text"\n')
    (package / "domain" / "states.py").write_text('X = "\'queued\'"\n')
    (package / "q.sql").write_text("-- name: A\nSELECT 1 WHERE status = 'pending';\n")
    assert {int(o.split(":")[1]) for o in hand_written_sql(package, tmp_path)} == {1, 2, 3, 4, 5}
    assert [o.split(": ")[1] for o in status_literals(package, tmp_path)] == ["'queued'", "'pending'"]


# --- The loader (service/db/statements.py)

def test_named_statements_are_parsed_with_their_why_left_out() -> None:
    found = statements.parse("t.sql", "-- notes\n-- name: A\n-- why\nSELECT 1\nFROM t;\nnote\n"
                                      "-- name: B (asyncpg)\nSELECT $1;\n")
    assert found.sql == {"A": "SELECT 1\nFROM t", "B": "SELECT $1"}
    assert found.raw == {"B"}


def test_placeholders_render_from_states() -> None:
    assert statements.render("status = {status:queued} AND d = {delivery:pending}") == \
        "status = 'queued' AND d = 'pending'"
    assert statements.render("IN ({statuses:terminal})") == "IN ('completed', 'failed', 'canceled', 'timed_out')"
    assert statements.render("IN ({statuses:active})") == "IN ('queued', 'submitted', 'processing', 'storing')"
    assert statements.render("p = {provider:created}") == "p = 'created'"
    # JSON braces are not placeholders.
    assert statements.render("'{}'::jsonb || '{\"a\": 1}'") == "'{}'::jsonb || '{\"a\": 1}'"


@pytest.mark.parametrize("sql", ["{status:queud}", "{statuses:finished}", "{delivery:queued}", "{provider:storing}"])
def test_a_placeholder_naming_no_status_fails_at_load(sql: str) -> None:
    with pytest.raises(ValueError, match="not a"):
        statements.render(sql)


@pytest.mark.parametrize(("content", "error"), [
    ("-- name: A\nSELECT 1\n", "no line ending in ';'"),
    ("-- name: A\nSELECT 1\n-- name: B\nSELECT 2;\n", "no line ending in ';'"),
    ("-- name: A\nSELECT 1;\n-- name: A\nSELECT 2;\n", "defined twice"),
])
def test_malformed_files_fail_at_load(content: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        statements.parse("t.sql", content)


def test_each_statement_is_taken_once_and_as_its_kind() -> None:
    found = statements.parse(
        "t.sql", "-- name: A\nSELECT 1;\n-- name: B (asyncpg)\nSELECT $1;\n-- name: C\nSELECT 3;\n")
    assert found.text("A").text == "SELECT 1"
    with pytest.raises(KeyError, match="taken twice"):
        found.text("A")
    with pytest.raises(TypeError, match="raw asyncpg"):
        found.text("B")
    with pytest.raises(KeyError, match="no statement named"):
        found.text("Z")
    assert found.asyncpg("B") == "SELECT $1"
    with pytest.raises(KeyError, match="nobody takes: C"):
        found.all_taken()


def test_a_fragment_is_composed_into_each_statement_that_names_it() -> None:
    found = statements.parse("t.sql", "-- name: A\nWITH {fragment:F}\nSELECT 1;\n"
                                      "-- fragment: F\n-- why\nx AS (\n  SELECT {delivery:pending})\n\n"
                                      "-- name: B\nSELECT 2;\n-- fragment: G\nnow()\n")
    assert found.sql == {"A": "WITH x AS (\n  SELECT 'pending')\nSELECT 1", "B": "SELECT 2"}
    assert found.fragment("G") == "now()"
    found.text("A")
    found.text("B")
    found.all_taken()


def test_an_unknown_or_unused_fragment_fails_at_load() -> None:
    with pytest.raises(ValueError, match="no such fragment"):
        statements.parse("t.sql", "-- name: A\nSELECT {fragment:NOPE};\n")
    found = statements.parse("t.sql", "-- name: A\nSELECT 1;\n-- fragment: F\nnow()\n")
    found.text("A")
    with pytest.raises(KeyError, match="fragments nobody uses: F"):
        found.all_taken()
    with pytest.raises(KeyError, match="no fragment named"):
        found.fragment("G")


def test_a_terminal_move_queues_its_delivery_by_one_rule() -> None:
    # The pending delivery is written once (QUEUE_DELIVERIES) and every statement that
    # ends jobs or queues a callback composes it; nothing else inserts deliveries.
    raw = (SERVICE / "db" / "queries.sql").read_text()
    assert raw.count("INSERT INTO deliveries") == 1
    rule = statements.load(SERVICE / "db" / "queries.sql").fragments["QUEUE_DELIVERIES"]
    for statement in (queries.APPLY_NEWS, str(queries.AFTER_MOVE), str(queries.FINISH_MANY),
                      str(queries.QUEUE_CALLBACK)):
        assert rule in statement
    for statement in (str(queries.FINISH_MANY), str(queries.QUEUE_CALLBACK)):
        assert f"callback_status = {queries.CALLBACK_STATUS_ENDED.name}" in statement
    assert queries.CALLBACK_STATUS_ENDED.name in queries.APPLY_NEWS
    assert [str(p.relative_to(ROOT)) for p in sorted(SERVICE.rglob("*.py"))
            if re.search(r"insert\((deliveries_t|Delivery)\b", p.read_text())] == []


def test_sql_values_refuse_anything_but_plain_names() -> None:
    assert statements.sql_values(["queued", "storing"]) == "'queued', 'storing'"
    for bad in ([], ["x'; DROP TABLE jobs; --"], ["Queued"]):
        with pytest.raises(ValueError):
            statements.sql_values(bad)


# --- The lease template (service/db/queries.py)

@pytest.mark.parametrize("statement", [queries.CLAIM_JOBS, queries.CLAIM_LOST_SENDS, queries.CLAIM_EXPIRED_STARTS,
                                       queries.CLAIM_DELIVERIES, queries.CLAIM_ERASURES])
def test_every_claim_skips_locked_rows_and_writes_its_holder(statement: object) -> None:
    sql = str(statement)
    assert "FOR UPDATE SKIP LOCKED" in sql
    assert "locked_by = :holder" in sql
    assert "(locked_until IS NULL OR locked_until < now())" in sql
    assert "RETURNING" in sql and " AS id" in sql


def test_every_leased_table_is_renewed_fenced_on_its_holder_and_released() -> None:
    assert queries.LEASED_TABLES == ("jobs", "deliveries")  # the lock order: jobs first
    for table in queries.LEASED_TABLES:
        assert f"{table}.locked_by = held.holder" in str(queries.RENEW_LEASES[table])
        assert f"ORDER BY {table}.id FOR UPDATE" in str(queries.RENEW_LEASES[table])
        assert "id <> ALL(:keep)" in str(queries.RELEASE_LEASES[table])
