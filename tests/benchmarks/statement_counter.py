"""Runs the service's command line (``python -m tests.benchmarks.statement_counter serve …``)
counting every SQL statement SQLAlchemy sends, by its text; at exit the counts go to the
JSON file named by ``STATEMENT_COUNTS``. For bench_pipeline ``--count-statements``: which
statements a job costs, and how many of each. Statements sent on the raw asyncpg
connection (provider news, service/db/news.py) and BEGIN/COMMIT are not seen here.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import sys
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

counts: collections.Counter[str] = collections.Counter()


@event.listens_for(Engine, "before_cursor_execute")
def _count(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
    counts[" ".join(statement.split())[:160]] += 1


@atexit.register
def _write() -> None:
    path = os.environ.get("STATEMENT_COUNTS")
    if path:
        with open(path, "w") as out:
            json.dump(dict(counts.most_common()), out, indent=1)


if __name__ == "__main__":
    from service.cli import main

    raise SystemExit(main(sys.argv[1:]))
