"""A throwaway database on the machine's Postgres, migrated, dropped afterwards."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from service.db.engine import migrate

POSTGRES = os.environ.get("BENCH_POSTGRES_URL", os.environ.get(
    "TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))


# Another checkout's ``migrate`` with that checkout's revisions. Since the revisions moved
# to migrations/ at the top of the checkout, service.db.migrations is not in the other
# tree's service/ package: the import system would fall through to this checkout's
# editable install and migrate with THIS checkout's revisions (a schema change would then
# show on both sides of a comparison). The package is bound to the tree's migrations/
# first when the tree has one there (older trees keep it inside service/, found as usual).
_CHECKOUT_MIGRATE = """
import importlib.util, pathlib, runpy, sys
tree = pathlib.Path(sys.argv[1])
if (tree / "migrations" / "__init__.py").exists():
    spec = importlib.util.spec_from_file_location(
        "service.db.migrations", tree / "migrations" / "__init__.py",
        submodule_search_locations=[str(tree / "migrations")])
    import service.db
    module = importlib.util.module_from_spec(spec)
    sys.modules["service.db.migrations"] = module
    spec.loader.exec_module(module)
sys.argv = ["service", "migrate"]
runpy.run_module("service", run_name="__main__")
"""


def migrate_checkout(tree: Path, env: dict[str, str], python: str) -> Callable[[str], None]:
    """``tree``'s own ``migrate`` (its revisions, its schema), run by ``python`` with ``env``
    (the settings the service needs to start) and the database's URL."""
    def run(url: str) -> None:
        done = subprocess.run([python, "-c", _CHECKOUT_MIGRATE, str(tree)], cwd=tree,
                              env={**env, "DATABASE_URL": url, "PYTHONPATH": str(tree)},
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"migrate at {tree} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return run


def _url_for(server_url: str, name: str) -> str:
    base, _, query = server_url.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name + ("?" + query if query else "")


@contextlib.contextmanager
def fresh_database(prefix: str = "wsj_bench", migrate_with: Callable[[str], None] = migrate) -> Iterator[str]:
    """``migrate_with``: how to bring it to the schema (another revision's own migrate, for
    bench_receiver --compare-rev)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _url_for(POSTGRES, name)
    try:
        migrate_with(url)
        yield url
    finally:
        with psycopg.connect(POSTGRES, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, connect_timeout=10)
