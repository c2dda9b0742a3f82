"""WAL written to retire jobs: ``MARK_DELETED`` (what a DELETE or the retention sweep runs),
then the eraser's statements, with the service's own queries on a throwaway database.

``python -m tests.benchmarks.bench_erasure_wal [--jobs 1000] [--rounds 3]``. The receiver's
commits wait to flush the WAL written before them (bench_lifecycle retention;
docs/lifecycle.md), so bytes of WAL per erased job is what retention costs the receiver. A count,
not a time: it does not drift with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.db import queries
from service.db.deletion import TERMINAL_VALUES
from service.db.engine import async_url
from service.db.jobs import id_list
from tests.benchmarks import bench_lifecycle, database

SINCE = "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), CAST(CAST(:start AS text) AS pg_lsn))"
NOW = "SELECT CAST(pg_current_wal_insert_lsn() AS text)"


async def _round(engine: AsyncEngine, ids: list[str]) -> tuple[float, float]:
    async with engine.begin() as conn:
        start = (await conn.execute(text(NOW))).scalar_one()
        await conn.execute(queries.MARK_DELETED, {"ids": id_list(ids), "reason": "retention",
                                                  "terminal": TERMINAL_VALUES, "owner": None})
        mark = float((await conn.execute(text(SINCE), {"start": start})).scalar_one())
    async with engine.begin() as conn:  # the claim's stamp, outside the measured part
        await conn.execute(text("UPDATE erasures SET locked_by = 'bench' WHERE job_id = ANY(:ids)"), {"ids": ids})
    async with engine.begin() as conn:
        start = (await conn.execute(text(NOW))).scalar_one()
        locked = id_list((await conn.execute(queries.ERASE_LOCK_JOBS, {"token": "bench"})).scalar_one())
        for statement in queries.ERASE_STATEMENTS:
            await conn.execute(statement, {"ids": locked})
        await conn.execute(queries.FINISH_ERASURES, {"token": "bench", "ids": locked})
        erase = float((await conn.execute(text(SINCE), {"start": start})).scalar_one())
    return mark, erase


async def _run(url: str, jobs: int, rounds: int) -> None:
    engine = create_async_engine(async_url(url))
    try:
        for r in range(rounds):
            ids = [f"job_wal_{n:07d}" for n in range(r * jobs + 1, (r + 1) * jobs + 1)]
            mark, erase = await _round(engine, ids)
            print(f"round {r + 1}: {jobs:,} jobs: mark {mark / 1e6:.2f} MB, erase {erase / 1e6:.2f} MB, "
                  f"total {(mark + erase) / 1e6:.2f} MB ({(mark + erase) / jobs / 1e3:.2f} kB per job)", flush=True)
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_erasure_wal", description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with database.fresh_database("wsj_bench_wal") as url:
        # Completed jobs with an input, metadata and one output, as the retention round seeds them.
        bench_lifecycle.seed(url, "keep", "job_wal_", args.jobs * args.rounds, "completed", completed_days_ago=60)
        with database.connect(url) as conn:
            conn.execute("INSERT INTO job_outputs (job_id, index, source_url, key, content_type, size_bytes, sha256,"
                         " stored_at) SELECT id, 0, 'https://cdn.invalid/x', 'outputs/' || id || '/0.jpeg',"
                         " 'image/jpeg', 2050, 'x', now() FROM jobs")
        asyncio.run(_run(url, args.jobs, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
