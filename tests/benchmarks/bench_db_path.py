"""What one statement costs through SQLAlchemy against the asyncpg connection beneath it.

``python -m tests.benchmarks.bench_db_path [--statements N] [--rounds N]``. On a throwaway
database: the API's key lookup (``LOOKUP_KEY``) run through ``engine.raw_statement`` (the
pooled connection's asyncpg connection, as every API request now does) and the same
lookup as SQLAlchemy ``text()`` on ``engine.one_statement`` (the baseline),
alternating in rounds, each both back to back and 20 ms apart (a service at 50 requests
a second: the machine idles between them and each statement meets cold caches). Prints
p50/p90 per path and the ratio SQLAlchemy / raw. Nothing asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy import text

from service.db import queries
from service.db.engine import create_engine, one_statement, raw_statement
from service.db.keys import create_key_blocking, hash_key
from tests.benchmarks import database
from tests.benchmarks.loadgen import percentile

# The same statement as queries.LOOKUP_KEY, with a SQLAlchemy bind parameter.
LOOKUP_TEXT = text(queries.LOOKUP_KEY.replace("$1", ":hash"))


async def _timed(run: Callable[[], Awaitable[object]], count: int, gap: float) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        await run()
        out.append(time.perf_counter() - started)
        if gap:
            await asyncio.sleep(gap)
    return out


async def _bench(url: str, key: str, count: int, rounds: int) -> None:
    engine = create_engine(url, pool_size=2)
    key_hash = hash_key(key)

    async def raw() -> object:
        async with raw_statement(engine) as conn:
            return await conn.fetchval(queries.LOOKUP_KEY, key_hash)

    async def orm() -> object:
        async with one_statement(engine) as conn:
            return (await conn.execute(LOOKUP_TEXT, {"hash": key_hash})).scalar()

    assert await raw() == await orm() == "bench"
    results: dict[tuple[str, float], list[float]] = {}
    try:
        for _ in range(rounds):
            for gap in (0.0, 0.02):
                for name, run in (("raw asyncpg", raw), ("SQLAlchemy", orm)):
                    results.setdefault((name, gap), []).extend(await _timed(run, count, gap))
    finally:
        await engine.dispose()
    for gap, label in ((0.0, "back to back"), (0.02, "20 ms apart")):
        figures = {}
        for name in ("raw asyncpg", "SQLAlchemy"):
            values = sorted(results[(name, gap)])
            figures[name] = (percentile(values, 50) * 1000, percentile(values, 90) * 1000)
            print(f"  {label:>12}, {name:<11}: p50 {figures[name][0]:.3f} ms, p90 {figures[name][1]:.3f} ms"
                  f" ({len(values)} statements)")
        print(f"RESULT db_path {label}: SQLAlchemy / raw p50 "
              f"{figures['SQLAlchemy'][0] / figures['raw asyncpg'][0]:.2f}, "
              f"+{figures['SQLAlchemy'][0] - figures['raw asyncpg'][0]:.3f} ms a statement", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--statements", type=int, default=200, help="per path, gap and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with database.fresh_database("wsj_bench_db_path") as url:
        key = create_key_blocking(url, "bench")
        print(f"== bench_db_path: the key lookup, {args.rounds} alternating rounds of {args.statements}")
        asyncio.run(_bench(url, key, args.statements, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
