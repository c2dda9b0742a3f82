"""Three costs of the receiver's limits and the egress layer, each side by side with its
baseline in the same run, alternating rounds:

1. A hostile `webhook-signature` (about 20 MB of v3 entries, unauthenticated): the
   service's ``verify_wavespeed`` (refused before any HMAC) against the check it replaced
   (one expected HMAC, then a constant-time compare per entry; reproduced here).
2. One callback-sized POST to a local endpoint over a kept-alive connection: through the
   egress layer (``Egress.http``: pinned connections, one lookup per new connection)
   against a plain ``httpx.AsyncClient``.
3. ``serve``'s HTTP parser: httptools with our header cap (the default,
   service/api/plumbing/header_guard.py) against h11 (which has a cap of its own): wrk on
   ``/healthz``, one ``serve --no-workers`` process per side and round (needs wrk and the
   local Postgres).

    .venv/bin/python -m tests.benchmarks.bench_egress [--rounds 5] [--posts 300] [--wrk-seconds 8]

Prints CPU milliseconds (this process, all threads) per operation for each side and the
ratio new / baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devtools.devstack import free_port
from devtools.serverthread import ServerThread
from service.clients.egress import Egress
from service.domain.errors import SignatureInvalid
from service.domain.signing import verify_wavespeed, wavespeed_signature
from tests.benchmarks import procs
from tests.conftest import SYSTEM_POSTGRES, fresh_database

SECRET = "whsec_bench_0123456789"
BODY = b'{"id":"task_01","status":"completed"}'


def old_verify(headers: dict[str, str], body: bytes) -> bool:
    """The baseline check: no bound on the header's size or entries."""
    expected = wavespeed_signature(SECRET, headers["webhook-id"], headers["webhook-timestamp"], body).encode()
    matched = False
    for entry in headers["webhook-signature"].split():
        matched |= hmac.compare_digest(entry.encode("utf-8", "replace"), expected)
    return matched


def new_verify(headers: dict[str, str], body: bytes) -> bool:
    try:
        verify_wavespeed(SECRET, headers, body, now=time.time())
    except SignatureInvalid:
        return False
    return True


def cpu_ms(action: Callable[[], object]) -> float:
    started = time.process_time()
    action()
    return (time.process_time() - started) * 1000


def bench_signature(rounds: int) -> None:
    headers = {"webhook-id": "evt_01", "webhook-timestamp": str(int(time.time())),
               "webhook-signature": " ".join(["v3," + hashlib.sha256(b"x").hexdigest()] * 300_000)}
    print(f"hostile webhook-signature: {len(headers['webhook-signature']) / 1e6:.1f} MB, 300,000 entries")
    old: list[float] = []
    new: list[float] = []
    for _ in range(rounds):
        assert not old_verify(headers, BODY) and not new_verify(headers, BODY)
        old.append(cpu_ms(lambda: old_verify(headers, BODY)))
        new.append(cpu_ms(lambda: new_verify(headers, BODY)))
    o, n = statistics.median(old), statistics.median(new)
    print(f"  baseline (HMAC compare per entry):       {o:9.2f} ms CPU per request (median of {rounds})")
    print(f"  verify_wavespeed (refused before HMAC):  {n:9.4f} ms CPU per request")
    print(f"  ratio new/old: {n / o:.6f}")


async def _posts(client: httpx.AsyncClient, url: str, count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        answer = await client.post(url, content=BODY)
        assert answer.status_code == 204
    return (time.process_time() - started) * 1000 / count


async def bench_callbacks(url: str, rounds: int, posts: int) -> None:
    plain: list[float] = []
    pinned: list[float] = []
    async with httpx.AsyncClient() as client:
        egress = Egress(allow_private=True)
        try:
            await _posts(client, url, 20)
            await _posts(egress.http, url, 20)  # warm both: connections open
            for _ in range(rounds):
                plain.append(await _posts(client, url, posts))
                pinned.append(await _posts(egress.http, url, posts))
        finally:
            await egress.aclose()
    p, e = statistics.median(plain), statistics.median(pinned)
    print(f"callback-sized POST to a local endpoint ({posts} per round, {rounds} rounds, alternating):")
    print(f"  plain httpx.AsyncClient: {p:.3f} ms CPU per POST (this process, client and server)")
    print(f"  egress layer:            {e:.3f} ms CPU per POST")
    print(f"  ratio egress/plain: {e / p:.3f}")


def _wrk_rps(url: str, seconds: float) -> float:
    done = subprocess.run(["wrk", "-t", "2", "-c", "16", "-d", f"{seconds:g}s", url],
                          capture_output=True, text=True, timeout=seconds + 60, check=True)
    match = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    assert match, done.stdout
    return float(match.group(1))


def bench_parsers(rounds: int, seconds: float) -> None:
    if shutil.which("wrk") is None:
        print("serve's HTTP parser: skipped (wrk is not installed)")
        return
    with fresh_database(SYSTEM_POSTGRES) as database_url:
        _parsers(database_url, rounds, seconds)


def _parsers(database_url: str, rounds: int, seconds: float) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "S3_BUCKET": "unused", "S3_ENDPOINT_URL": "http://127.0.0.1:9",
           "WAVESPEED_API_KEY": "unused", "WAVESPEED_WEBHOOK_SECRET": "whsec_unused",
           "PUBLIC_BASE_URL": "http://127.0.0.1", "LOG_LEVEL": "warning"}
    results: dict[str, list[float]] = {"httptools": [], "h11": []}
    for _ in range(rounds):
        for parser in results:
            port = free_port()
            argv = [procs.PYTHON, "-m", "service", "serve", "--no-workers", "--host", "127.0.0.1",
                    "--port", str(port), "--http", parser]
            url = f"http://127.0.0.1:{port}/healthz"
            with procs.running(argv, env=env, ready_url=url):
                results[parser].append(_wrk_rps(url, seconds))
    h11, tools = statistics.median(results["h11"]), statistics.median(results["httptools"])
    print(f"serve --no-workers, wrk -t2 -c16 on /healthz, {seconds:g} s per side, {rounds} rounds alternating:")
    print(f"  httptools (capped, default): {tools:8.0f} requests/s  {results['httptools']}")
    print(f"  h11 (its own cap):           {h11:8.0f} requests/s  {results['h11']}")
    print(f"  ratio h11/httptools: {h11 / tools:.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--posts", type=int, default=300)
    parser.add_argument("--wrk-seconds", type=float, default=8.0)
    args = parser.parse_args(argv)
    bench_signature(args.rounds)

    async def hook(request: Request) -> Response:
        await request.body()
        return Response(status_code=204)

    with ServerThread(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as server:
        asyncio.run(bench_callbacks(server.url.replace("127.0.0.1", "localhost") + "/hook", args.rounds, args.posts))
    bench_parsers(min(args.rounds, 3), args.wrk_seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
