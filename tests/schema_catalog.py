"""The database's own logic as Postgres prints it, and what differs between two prints.

A catalog maps ``function <signature>`` and ``trigger <table>.<name>`` to the definition
Postgres gives back (``pg_get_functiondef``, ``pg_get_triggerdef``) for everything in the
``public`` schema that no extension owns. Postgres writes the header of a function and
the whole of a trigger in its own canonical form; a body is kept as written, so bodies
are compared with their whitespace collapsed (indentation and line breaks are not
meaning; every other character, comments included, is).

service/db/schema.sql is read through the same server: in a transaction on a migrated
database every function and trigger is dropped, the file is run, the catalog is read and
the transaction rolled back. Both sides are then printed by the same code, and the file
must also be valid SQL that creates exactly that set.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg

SCHEMA_SQL = Path(__file__).resolve().parents[1] / "service" / "db" / "schema.sql"

_FUNCTIONS = """
SELECT 'function ' || p.oid::regprocedure::text, pg_get_functiondef(p.oid)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'public'
  AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                  AND d.deptype = 'e')
"""
_TRIGGERS = """
SELECT 'trigger ' || c.relname || '.' || t.tgname, pg_get_triggerdef(t.oid)
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND NOT t.tgisinternal
"""


def normalize(definition: str) -> str:
    """A definition with every run of whitespace made one space."""
    return " ".join(definition.split())


def differences(expected: Mapping[str, str], actual: Mapping[str, str],
                expected_name: str = "schema.sql", actual_name: str = "migrations") -> list[str]:
    """One line per object missing on a side or defined differently, with the first words
    where the two normalized definitions part."""
    found = []
    for key in sorted(expected.keys() | actual.keys()):
        if key not in actual:
            found.append(f"{key}: in {expected_name}, not made by {actual_name}")
        elif key not in expected:
            found.append(f"{key}: made by {actual_name}, not in {expected_name}")
        else:
            a, b = normalize(expected[key]), normalize(actual[key])
            if a != b:
                at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
                start = max(at - 40, 0)
                found.append(f"{key}: differs at character {at}: {expected_name} …{a[start:at + 60]}… "
                             f"/ {actual_name} …{b[start:at + 60]}…")
    return found


def catalog(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Every function and trigger of the public schema, by name, as Postgres prints it."""
    return {str(name): str(text) for query in (_FUNCTIONS, _TRIGGERS) for name, text in conn.execute(query)}


def catalog_of_file(conn: psycopg.Connection[Any], path: Path = SCHEMA_SQL) -> dict[str, str]:
    """What ``path`` defines, printed by the server ``conn`` is on: every function and
    trigger is dropped and the file run inside a transaction that is rolled back."""
    with conn.transaction(force_rollback=True):
        for name in catalog(conn):
            kind, _, qualified = name.partition(" ")
            if kind == "trigger":
                table, _, trigger = qualified.partition(".")
                conn.execute(f'DROP TRIGGER "{trigger}" ON "{table}"')
        for name in catalog(conn):
            conn.execute(f"DROP FUNCTION {name.partition(' ')[2]}")
        conn.execute(path.read_text(encoding="utf-8").encode())
        return catalog(conn)
