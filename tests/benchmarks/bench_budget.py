"""A budget under a burst: 500 concurrent submits against a budget worth 137 images.

Goal: exactly 137 accepted (202), the other 363 refused with 402
``budget_exceeded``, nothing more created or reserved; the answers' p99 reported.

One ``serve --no-workers`` process (nothing goes upstream); 500 requests started at
once from an asyncio client in this process. The baseline, alternating with it in the
same run, is the same burst (a) from one owner without a budget (every submit still locks
the owner's row, takes its turn and writes its reservation; only the budget check is
skipped): what the check costs; and (b) spread over 500 owners, one submit each (no two
submits share an owner's row): what one owner's submits passing its row lock one at a
time costs. Every repeat uses new owners. Afterwards the database is checked: jobs and
reservations per owner.

The machine has 2 cores shared with other work: figures are noisy, p99 most of all.

``python -m tests.benchmarks budget`` (``--repeats 3 --burst 500 --images 137``)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `service` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx

from devtools.devstack import free_port
from service.db.keys import create_key_blocking
from tests.benchmarks import database, procs

PRICE = Decimal("0.015")
BODY = {"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "burst", "size": "256*256"}}


def env(database_url: str, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "S3_BUCKET": "not-used",
        "S3_ENDPOINT_URL": "http://127.0.0.1:9",  # never called: no workers, no outputs
        "WAVESPEED_API_KEY": "bench-not-used",
        "WAVESPEED_BASE_URL": "http://127.0.0.1:9",
        "WAVESPEED_WEBHOOK_SECRET": "whsec_bench_budget_0123456789",
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "DB_POOL_SIZE": "10",
        "LOG_LEVEL": "warning",
        "LOG_FORMAT": "json",
    }


async def burst(url: str, key: str | list[str], n: int) -> list[tuple[int, float]]:
    keys = key if isinstance(key, list) else [key] * n
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        start = asyncio.Event()

        async def one(k: str) -> tuple[int, float]:
            await start.wait()
            t0 = time.perf_counter()
            answer = await client.post("/v1/jobs", json=BODY, headers={"Authorization": f"Bearer {k}"})
            return answer.status_code, (time.perf_counter() - t0) * 1000

        tasks = [asyncio.create_task(one(k)) for k in keys[:n]]
        await asyncio.sleep(0.2)
        start.set()
        return await asyncio.gather(*tasks)


async def many_keys(url: str, prefix: str, n: int) -> list[str]:
    from service.db.engine import create_engine
    from service.db.keys import issue_key

    engine = create_engine(url, 2)
    try:
        return [(await issue_key(engine, f"{prefix}{i}")).key for i in range(n)]
    finally:
        await engine.dispose()


def pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_budget", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--images", type=int, default=137)
    args = parser.parse_args(argv)
    print(f"== budget: {args.burst} concurrent submits, budget worth {args.images} images; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    failed = False
    with database.fresh_database("wsj_bench_budget") as url, tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        argv_serve = [procs.PYTHON, "-m", "service", "serve", "--no-workers", "--host", "127.0.0.1",
                      "--port", str(port)]
        base = f"http://127.0.0.1:{port}"
        with procs.running(argv_serve, env=env(url, port), ready_url=base + "/healthz",
                           log_path=Path(tmp) / "serve.log"):
            warm = create_key_blocking(url, "warm")
            asyncio.run(burst(base, warm, 20))  # pool connections, imports; not measured
            p99s: dict[str, list[float]] = {"budget": [], "none": [], "spread": []}
            for repeat in range(1, args.repeats + 1):
                for kind in ("budget", "none", "spread"):
                    owner = f"{kind}_{repeat}"
                    if kind == "spread":
                        spread_keys = asyncio.run(many_keys(url, f"spread_{repeat}_", args.burst))
                        results = asyncio.run(burst(base, spread_keys, args.burst))
                        codes = [c for c, _ in results]
                        times = [t for _, t in results]
                        ok = codes.count(202) == args.burst
                        failed = failed or not ok
                        p99s[kind].append(pct(times, 99))
                        print(f"-- repeat {repeat}, spread over {args.burst} owners: {codes.count(202)} accepted "
                              f"({'ok' if ok else 'WRONG'}); answers p50 {pct(times, 50):.0f} ms, "
                              f"p99 {pct(times, 99):.0f} ms, max {max(times):.0f} ms", flush=True)
                        continue
                    key = create_key_blocking(url, owner)
                    if kind == "budget":
                        with database.connect(url) as conn:
                            conn.execute("UPDATE owners SET monthly_budget_usd = %s WHERE name = %s",
                                         (PRICE * args.images, owner))
                    results = asyncio.run(burst(base, key, args.burst))
                    codes = [c for c, _ in results]
                    times = [t for _, t in results]
                    with database.connect(url) as conn:
                        jobs, reserved = conn.execute(
                            "SELECT (SELECT count(*) FROM jobs WHERE owner = %(o)s), "
                            "(SELECT coalesce(sum(amount_usd), 0) FROM ledger "
                            " WHERE owner = %(o)s AND kind = 'reserve')",
                            {"o": owner}).fetchone() or (0, 0)
                    accepted = codes.count(202)
                    expected = args.images if kind == "budget" else args.burst
                    ok = accepted == expected == jobs and reserved == PRICE * expected
                    ok = ok and codes.count(402) == args.burst - expected
                    failed = failed or not ok
                    p99s[kind].append(pct(times, 99))
                    other = len(codes) - accepted - codes.count(402)
                    print(f"-- repeat {repeat}, {'budget ' if kind == 'budget' else 'no budget'}: "
                          f"{accepted} accepted, {codes.count(402)} refused 402, other {other}; "
                          f"{jobs} jobs and ${reserved} reserved in the database ({'ok' if ok else 'WRONG'}); "
                          f"answers p50 {pct(times, 50):.0f} ms, p99 {pct(times, 99):.0f} ms, max {max(times):.0f} ms",
                          flush=True)
            b, n, w = (statistics.median(p99s[k]) for k in ("budget", "none", "spread"))
            print(f"== answer p99 (median of repeats): one owner with budget {b:.0f} ms, one owner without {n:.0f} ms "
                  f"(ratio {b / n:.2f}), spread over {args.burst} owners {w:.0f} ms (one owner / spread "
                  f"{n / w:.2f})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
