"""S3 client cost per PUT (and per DeleteObjects), three sides on the same objects and S3 server, alternating:
the service's ``Storage`` (a PutObject signed by hand, on its httpx client), plain boto3 in
threads (what it replaced: no wrapper, no asyncio hop), and every call signed by hand over
httpx (tests/benchmarks/s3_httpx.py: multipart too, not shipped).

    .venv/bin/python -m tests.benchmarks.bench_s3client [--objects 300] [--kib 200] [--rounds 3]

Each round PUTs ``--objects`` objects of ``--kib`` KiB, 16 at a time, and reads the CPU
seconds this process used (every thread) and the wall time. moto's S3 server runs as its
own process (under uvicorn: keep-alive, as real S3), so its CPU is not counted. Prints
CPU per PUT for each side and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import boto3
import uvloop
from botocore.config import Config

from devtools.devstack import DEV_ACCESS_KEY, DEV_SECRET_KEY, free_port
from service.clients.storage import Storage
from tests.benchmarks import procs
from tests.benchmarks.s3_httpx import HttpxStorage

BUCKET = "wavespeed-jobs-bench-s3"
IN_FLIGHT = 16


async def _store(storage: Storage | HttpxStorage, bodies: list[bytes], tag: str) -> None:
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int, body: bytes) -> None:
        async with gate:
            await storage.put_bytes(f"bench/{tag}/{i}.jpeg", body, "image/jpeg")

    await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))


async def _boto(client: Any, pool: ThreadPoolExecutor, bodies: list[bytes], tag: str) -> None:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int, body: bytes) -> None:
        async with gate:
            await loop.run_in_executor(pool, partial(
                client.put_object, Bucket=BUCKET, Key=f"bench/{tag}/{i}.jpeg", Body=body, ContentType="image/jpeg"))

    await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))


async def _measure(coro: Any) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    await coro
    return time.process_time() - cpu, time.perf_counter() - wall


async def _rounds(endpoint: str, args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    service = Storage(bucket=BUCKET, endpoint_url=endpoint, region="us-east-1", max_threads=IN_FLIGHT,
                      access_key_id=DEV_ACCESS_KEY, secret_access_key=DEV_SECRET_KEY)
    httpx_s3 = HttpxStorage(bucket=BUCKET, endpoint_url=endpoint, region="us-east-1", max_connections=IN_FLIGHT,
                            access_key_id=DEV_ACCESS_KEY, secret_access_key=DEV_SECRET_KEY)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=DEV_ACCESS_KEY,
                          aws_secret_access_key=DEV_SECRET_KEY,
                          config=Config(signature_version="s3v4", max_pool_connections=IN_FLIGHT,
                                        s3={"addressing_style": "path"}))
    client.create_bucket(Bucket=BUCKET)
    pool = ThreadPoolExecutor(IN_FLIGHT)
    bodies = [os.urandom(args.kib * 1024) for _ in range(args.objects)]
    sides = {
        "service": lambda tag, n: _store(service, bodies[:n], tag),
        "boto3 default": lambda tag, n: _boto(client, pool, bodies[:n], tag),
        "httpx+sigv4": lambda tag, n: _store(httpx_s3, bodies[:n], tag),
    }
    results: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
    try:
        for work in sides.values():
            await work("warm", 20)  # connections, lazy imports
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for side in order:
                cpu, wall = await _measure(sides[side](f"r{r}", len(bodies)))
                results[side].append((cpu, wall))
                print(f"round {r + 1} {side:<14} cpu/put {cpu / args.objects * 1000:6.2f} ms  "
                      f"{args.objects / wall:7.1f} puts/s  (load {os.getloadavg()[0]:.2f})", flush=True)
    finally:
        await httpx_s3.aclose()
        service.close()
        pool.shutdown()
    return results


def presign_rounds(rounds: int = 3, n: int = 2000) -> None:
    """Presigning (local work, no network): botocore's generate_presigned_url against the
    service's own signing (uncached), alternating, µs per URL."""
    storage = Storage(bucket=BUCKET, endpoint_url="http://127.0.0.1:9", region="us-east-1",
                      access_key_id=DEV_ACCESS_KEY, secret_access_key=DEV_SECRET_KEY)
    client = boto3.client("s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
                          aws_access_key_id=DEV_ACCESS_KEY, aws_secret_access_key=DEV_SECRET_KEY,
                          config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
    try:
        for r in range(rounds):
            started = time.process_time()
            for i in range(n):
                client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": f"o/job_{i}/0.jpeg"},
                                              ExpiresIn=3600)
            boto = (time.process_time() - started) / n * 1e6
            started = time.process_time()
            for i in range(n):
                storage._presign(f"o/job_{i}/0.jpeg", 3600)
            ours = (time.process_time() - started) / n * 1e6
            print(f"presign round {r + 1}: botocore {boto:.0f} µs, service {ours:.0f} µs per URL → {boto / ours:.1f}×",
                  flush=True)
    finally:
        storage.close()


async def delete_rounds(endpoint: str, rounds: int = 5, keys: int = 1000) -> None:
    """DeleteObjects of ``keys`` keys: the service's (written and signed by hand, on the
    event loop) against botocore's ``delete_objects`` (in a thread, as the service once
    called it), alternating; CPU of this process per call (the S3 server's is its own)."""
    storage = Storage(bucket=BUCKET, endpoint_url=endpoint, region="us-east-1",
                      access_key_id=DEV_ACCESS_KEY, secret_access_key=DEV_SECRET_KEY)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=DEV_ACCESS_KEY,
                          aws_secret_access_key=DEV_SECRET_KEY,
                          config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
    names = [f"outputs/job_{n:026d}/0.jpeg" for n in range(keys)]
    loop, pool = asyncio.get_running_loop(), ThreadPoolExecutor(1)
    sides: dict[str, Callable[[], Awaitable[Any]]] = {
        "service": lambda: storage.delete_keys(names),
        "botocore": lambda: loop.run_in_executor(pool, partial(
            client.delete_objects, Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in names], "Quiet": True})),
    }
    try:
        for work in sides.values():
            await work()  # connections, lazy imports
        for r in range(rounds):
            figures = {}
            for side in (sides if r % 2 == 0 else reversed(list(sides))):
                cpu, _ = await _measure(sides[side]())
                figures[side] = cpu * 1000
            print(f"delete round {r + 1}: {keys:,} keys a call, botocore {figures['botocore']:.1f} ms, "
                  f"service {figures['service']:.1f} ms of CPU → {figures['botocore'] / figures['service']:.1f}×",
                  flush=True)
    finally:
        await storage.aclose()
        pool.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_s3client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=300)
    parser.add_argument("--kib", type=int, default=200, help="object size (a Flux JPEG is 100–300 KiB)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args(argv)
    presign_rounds()
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = [procs.PYTHON, "-m", "tests.benchmarks.s3server", str(port)]  # keeps connections alive, as S3 does
    with procs.running(server, ready_url=endpoint):
        # uvloop, as under `serve` (uvicorn picks it when installed).
        results = uvloop.run(_rounds(endpoint, args)) if args.loop == "uvloop" else asyncio.run(_rounds(endpoint, args))
        uvloop.run(delete_rounds(endpoint))
    medians = {side: statistics.median(c for c, _ in runs) / args.objects * 1000 for side, runs in results.items()}
    base = medians["boto3 default"]
    print(f"median cpu/put ({args.kib} KiB objects, {IN_FLIGHT} in flight): " + ", ".join(
        f"{side} {ms:.2f} ms ({ms / base:.2f}× boto3 default)" for side, ms in medians.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
