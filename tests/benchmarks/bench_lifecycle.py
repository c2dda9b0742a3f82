"""Data lifecycle under load: bulk cancel, retention, and live streams.

``python -m tests.benchmarks lifecycle`` runs the three; ``python -m tests.benchmarks.bench_lifecycle
bulk|retention|streams [--jobs N] [--rounds N]`` runs one. Each starts a real ``wavespeed-jobs serve``
(a child process) on a throwaway database, with moto's S3 server as another child.

* bulk: ``POST /v1/jobs/bulk`` cancels N queued jobs (default 10,000) in batches while a
  probe reads ``GET /v1/jobs/{id}`` of another owner; the probe's p99 during the bulk is
  compared with its p99 idle, alternating idle and bulk phases in the same run.
* retention: N jobs (default 100,000) completed 60 days ago, whose outputs are in S3, fall
  past retention when their owner is given ``retention_days`` 30; the sweep marks them and
  the eraser deletes their objects (DeleteObjects, 1,000 keys a call) and erases the rows,
  while a probe posts signed ``failed`` webhooks to the receiver; receiver p99 during the
  erasure vs idle. The duties run in ``serve`` (its default), or with ``--separate-workers``
  in a ``wavespeed-jobs worker`` process beside ``serve --no-workers``.
* streams: N (default 1,000) concurrent ``GET /v1/jobs/{id}/stream`` on one serve process:
  its RSS per open stream, and the delay from a status change (one bulk cancel of all N
  jobs) to the event on every stream (p50/p99/max).

Figures are printed; nothing is asserted on time. The machine is shared: say what else ran.
The S3 emulator runs at nice 19 (it stands in for a remote S3; ``BENCH_S3_SAME_PRIORITY=1``
runs it at the service's priority), and each probe phase starts with this
process's heap collected and frozen, so neither one's garbage collection is counted as the
service's latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
import httpx
import psutil  # type: ignore[import-untyped]

from devtools.devstack import DEV_ACCESS_KEY, DEV_SECRET_KEY, free_port
from service.db.keys import create_key_blocking
from service.domain.signing import wavespeed_signature
from tests.benchmarks import database, procs
from tests.benchmarks.loadgen import percentile

SECRET = "whsec_bench_lifecycle_0123456789abcdef"
BUCKET = "wavespeed-jobs-bench"
MODEL = "wavespeed-ai/flux-dev-lora"
PROBE_CONCURRENCY = 4
REAL_OBJECTS = 10_000
LOG_DIR = Path(os.environ.get("BENCH_LOG_DIR", "/tmp"))


# --------------------------------------------------------------------------- the stack


@contextlib.contextmanager
def s3_server(processes: dict[str, psutil.Process] | None = None) -> Iterator[str]:
    """moto's S3 server; ``processes`` gets it as "s3 emulator" (for ``cpu_seconds``)."""
    port = free_port()
    argv = [str(Path(procs.PYTHON).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    if not os.environ.get("BENCH_S3_SAME_PRIORITY"):
        # The emulator stands in for a remote S3, whose CPU is not on the service's cores;
        # at the same priority its work (its full garbage collections alone take 50-270 ms)
        # competes with serve and Postgres for the two cores: retention ratio 3.78 against
        # 1.59-1.83 niced (2026-12-06). BENCH_S3_SAME_PRIORITY=1 runs it at that priority.
        argv = ["nice", "-n", "19", *argv]
    with procs.running(argv, ready_url=f"http://127.0.0.1:{port}/") as proc:
        if processes is not None:
            processes["s3 emulator"] = psutil.Process(proc.pid)
        yield f"http://127.0.0.1:{port}"


def cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    """CPU time so far of each named process, of this one ("bench") and of every Postgres
    process together: where the cores go in a phase (two cores are shared by all of them,
    so the S3 emulator's or the bench's own work shows up as service latency)."""
    def used(proc: psutil.Process) -> float:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            return float(times.user + times.system)
        return 0.0

    out = {name: used(proc) for name, proc in processes.items()}
    out["bench"] = used(psutil.Process())
    # Each Postgres process by pid: a backend that ends between two readings must not take
    # its whole life's CPU out of the sum (what it used in the phase is lost instead).
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "postgres":
            out[f"postgres:{proc.pid}"] = used(proc)
    return out


def cpu_line(phase: str, before: dict[str, float], after: dict[str, float], seconds: float) -> str:
    used: dict[str, float] = {}
    for name, value in after.items():
        total = name.split(":")[0]
        used[total] = used.get(total, 0.0) + value - before.get(name, 0.0)
    return f"CPU {phase} (cores): " + ", ".join(f"{name} {used[name] / seconds:.2f}" for name in sorted(used))


def _service_env(db: str, s3: str, port: int, env: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ, "DATABASE_URL": db, "S3_BUCKET": BUCKET, "S3_ENDPOINT_URL": s3, "S3_CREATE_BUCKET": "true",
        "AWS_ACCESS_KEY_ID": DEV_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": DEV_SECRET_KEY,
        "WAVESPEED_API_KEY": "bench-not-used", "WAVESPEED_BASE_URL": "http://127.0.0.1:9",
        "WAVESPEED_WEBHOOK_SECRET": SECRET, "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "LOG_LEVEL": "warning", "LOG_FORMAT": "json", "POLL_INTERVAL_SECONDS": "0.5", **env,
    }


@contextlib.contextmanager
def worker(db: str, s3: str, **env: str) -> Iterator[psutil.Process]:
    """``wavespeed-jobs worker``: the duties in a process of their own, beside a
    ``serve --no-workers`` (docs/operations.md: API-only nodes beside worker processes)."""
    log = LOG_DIR / f"bench_lifecycle_worker_{os.getpid()}.log"
    # A worker serves no HTTP: its PUBLIC_BASE_URL (port 9) would only name webhook targets of submits.
    with procs.running([procs.PYTHON, "-m", "service", "worker"], env=_service_env(db, s3, 9, env),
                       log_path=log) as proc:
        yield psutil.Process(proc.pid)


@contextlib.contextmanager
def serve(db: str, s3: str, *, workers: bool, **env: str) -> Iterator[tuple[str, psutil.Process]]:
    port = free_port()
    environ = _service_env(db, s3, port, env)
    argv = [procs.PYTHON, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if not workers:
        argv.append("--no-workers")
    log = LOG_DIR / f"bench_lifecycle_{port}.log"
    with procs.running(argv, env=environ, ready_url=f"http://127.0.0.1:{port}/healthz", log_path=log) as proc:
        yield f"http://127.0.0.1:{port}", psutil.Process(proc.pid)


SEED = """
INSERT INTO jobs (id, owner, model, status, input, metadata, provider_task_id, provider_status,
                  run_after, completed_at, created_at, updated_at)
SELECT %(prefix)s::text || lpad(n::text, 7, '0'), %(owner)s::text, %(model)s::text, %(status)s::text,
       jsonb_build_object('prompt', 'a lighthouse at dusk, film photo', 'seed', n),
       jsonb_build_object('batch', %(batch)s::text), 'task_' || %(prefix)s::text || n, %(provider_status)s::text,
       NULL, now() - %(ago)s::float * interval '1 day', now() - interval '1 day' + n * interval '1 ms', now()
FROM generate_series(1, %(count)s::integer) AS n
"""


def seed(db: str, owner: str, prefix: str, count: int, status: str, batch: str = "b",
         completed_days_ago: float | None = None, provider_status: str = "created") -> None:
    with database.connect(db) as conn:
        conn.execute(SEED, {"prefix": prefix, "owner": owner, "model": MODEL, "status": status, "batch": batch,
                            "count": count, "ago": completed_days_ago, "provider_status": provider_status})
        conn.execute("ANALYZE jobs")


class Probe:
    """Requests of one kind while a phase lasts; records (due time, latency, status).

    Open loop by default (``rate`` requests a second, each latency measured from when the
    request was *due*, so a stall shows in the tail): a steady API under ordinary load, as
    a backend sees it. ``rate=0`` is the closed loop of earlier runs (PROBE_CONCURRENCY
    workers back to back): it saturates the two cores by itself, so any other work at all
    shows up one for one in its latency."""

    def __init__(self, make: Any, rate: float) -> None:
        self.make, self.rate = make, rate
        self.samples: list[tuple[float, float, int]] = []
        self.stalls: list[tuple[float, float]] = []  # (when, how long) this process's loop was held
        self._stop = asyncio.Event()

    async def _tick(self) -> None:
        """This process's own event-loop stalls over 5 ms (a probe due then is sent late:
        its latency is the client's, not the service's)."""
        while not self._stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            held = time.perf_counter() - before - 0.001
            if held > 0.005:
                self.stalls.append((before, held))

    async def _one(self, client: httpx.AsyncClient, n: int, due: float) -> None:
        method, url, kwargs = self.make(n)
        try:
            status = (await client.request(method, url, **kwargs)).status_code
        except httpx.HTTPError:
            status = 599
        self.samples.append((due, time.perf_counter() - due, status))

    async def _closed(self, client: httpx.AsyncClient, worker: int) -> None:
        n = worker
        while not self._stop.is_set():
            await self._one(client, n, time.perf_counter())
            n += PROBE_CONCURRENCY

    async def _open(self, client: httpx.AsyncClient) -> None:
        started, n, pending = time.perf_counter(), 0, set()
        while not self._stop.is_set():
            due = started + n / self.rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            task = asyncio.create_task(self._one(client, n, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
        await asyncio.gather(*pending)

    async def run(self, base: str, seconds_or_event: float | asyncio.Event) -> None:
        # This process holds boto3's service models, psycopg and the samples: a full
        # collection of its garbage took 110-160 ms (gc.callbacks), and a probe due
        # meanwhile would be sent late, counted as the service's latency. Frozen, the old
        # objects are left out of every pass; each phase starts the same way.
        gc.collect()
        gc.freeze()
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
            if self.rate:
                tasks = [asyncio.create_task(self._open(client)), asyncio.create_task(self._tick())]
            else:
                tasks = [asyncio.create_task(self._closed(client, w)) for w in range(PROBE_CONCURRENCY)]
            if isinstance(seconds_or_event, asyncio.Event):
                await seconds_or_event.wait()
            else:
                await asyncio.sleep(seconds_or_event)
            self._stop.set()
            await asyncio.gather(*tasks)

    def p(self, pct: float) -> float:
        values = sorted(s[1] for s in self.samples)
        return percentile(values, pct) * 1000 if values else float("nan")

    def print_slowest(self, what: str, started: float, took: float, count: int = 5) -> None:
        """The slowest requests and when they were due, from ``started`` (where in the
        busy phase the tail comes from)."""
        slowest = sorted(self.samples, key=lambda s: -s[1])[:count]
        wall = time.time() - time.perf_counter()  # to match the times with a server's log
        print("  slowest during " + what + ": " + ", ".join(
            f"{lat * 1000:.1f} ms at +{(due - started) * 1000:.0f} ms"
            f" ({time.strftime('%H:%M:%S', time.gmtime(due + wall))}.{int((due + wall) % 1 * 1000):03d})"
            for due, lat, _ in slowest)
            + f" ({what} ran 0 to +{took * 1000:.0f} ms)", flush=True)
        held = sorted(self.stalls, key=lambda s: -s[1])[:count]
        stalls = ", ".join(f"{h * 1000:.1f} ms at +{(at - started) * 1000:.0f} ms" for at, h in held)
        print("  the probe's own loop held: " + (stalls or "never over 5 ms"), flush=True)

    def errors(self) -> int:
        return sum(1 for s in self.samples if s[2] >= 500)


def _pooled(probes: list[Probe], pct: float) -> float:
    values = sorted(s[1] for p in probes for s in p.samples)
    return percentile(values, pct) * 1000 if values else float("nan")


def _report(name: str, idle: list[Probe], busy: list[Probe], extra: list[str], loads: list[float]) -> None:
    """Per-round figures, then one RESULT line: the median of the rounds' p99 ratios
    (idle and busy phases alternate, so each ratio compares neighbours in time)."""
    print(f"\n== {name}")
    for line in extra:
        print("  " + line)
    ratios = []
    for i, (a, b) in enumerate(zip(idle, busy, strict=True), start=1):
        ratios.append(b.p(99) / a.p(99))
        print(f"  round {i}: probe p50 idle {a.p(50):.1f} ms / busy {b.p(50):.1f} ms; "
              f"p99 idle {a.p(99):.1f} ms / busy {b.p(99):.1f} ms; ratio p99 {ratios[-1]:.2f} "
              f"({len(a.samples)} / {len(b.samples)} requests, {a.errors() + b.errors()} 5xx)")
    probe = f"open loop {idle[0].rate:g}/s" if idle[0].rate else f"closed loop x{PROBE_CONCURRENCY}"
    print(f"RESULT {name.split(' ')[0]}: p99 ratio busy/idle median {statistics.median(ratios):.2f} "
          f"over {len(ratios)} rounds (each {', '.join(f'{r:.2f}' for r in ratios)}; pooled "
          f"{_pooled(busy, 99):.1f} / {_pooled(idle, 99):.1f} ms = {_pooled(busy, 99) / _pooled(idle, 99):.2f}); "
          f"goal <= 1.20; probe {probe}; load average {min(loads):.2f}-{max(loads):.2f}", flush=True)


# --------------------------------------------------------------------------- bulk cancel


async def _bulk_round(base: str, key: str, probe_key: str, probe_ids: list[str], seconds: float, rate: float,
                      control: float = 0.0) -> tuple[Probe, Probe, dict[str, Any], float]:
    headers = {"Authorization": f"Bearer {probe_key}"}

    def read(n: int) -> tuple[str, str, dict[str, Any]]:
        return "GET", f"/v1/jobs/{probe_ids[n % len(probe_ids)]}", {"headers": headers}

    # The bulk's client exists before either phase: building one (its SSL context) holds
    # this process's event loop for 20-40 ms, and the probe shares that loop: made at the
    # bulk's start, it was the worst "API" latency of every earlier run.
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        idle = Probe(read, rate)
        await idle.run(base, seconds)
        busy, done = Probe(read, rate), asyncio.Event()
        running = asyncio.create_task(busy.run(base, done))
        await asyncio.sleep(0.5)  # the probe is under way before the bulk starts
        started = time.perf_counter()
        if control:  # the A/A run: a "busy" phase with nothing in it, the noise floor of the ratio
            await asyncio.sleep(control)
            result: dict[str, Any] = {"matched": 0, "affected": 0}
        else:
            result = (await client.post("/v1/jobs/bulk", headers={"Authorization": f"Bearer {key}"},
                                        json={"action": "cancel", "filter": {"status": ["queued"]}})).json()
        took = time.perf_counter() - started
    done.set()
    await running
    busy.print_slowest("the bulk", started, took)
    return idle, busy, result, took


def bench_bulk(jobs: int, rounds: int, rate: float, env: dict[str, str], control: float = 0.0) -> None:
    with database.fresh_database("wsj_bench_bulk") as db, s3_server() as s3:
        key, probe_key = create_key_blocking(db, "bulk"), create_key_blocking(db, "probe")
        seed(db, "probe", "job_probe_", 1000, "completed", completed_days_ago=0)
        probe_ids = [f"job_probe_{n:07d}" for n in range(1, 1001)]
        idle_all, busy_all, lines, loads, tooks = [], [], [], [os.getloadavg()[0]], []
        with serve(db, s3, workers=False, **env) as (base, _):
            for r in range(rounds):
                seed(db, "bulk", f"job_bulk{r}_", jobs, "queued")
                idle, busy, result, took = asyncio.run(
                    _bulk_round(base, key, probe_key, probe_ids, 10.0, rate, control))
                idle_all.append(idle)
                busy_all.append(busy)
                loads.append(os.getloadavg()[0])
                tooks.append(took)
                lines.append(f"round {r + 1}: canceled {result.get('affected')} of {result.get('matched')} jobs in "
                             f"{took:.2f} s (load {loads[-1]:.2f})")
        lines.append(f"times: median {statistics.median(tooks):.2f} s"
                     f" (goal < 10 s); settings {env}")
    what = f"no bulk (A/A control, {control:g} s)" if control else f"cancel of {jobs:,} jobs"
    _report(f"bulk {what} while GET /v1/jobs/{{id}} is probed", idle_all, busy_all, lines, loads)


# --------------------------------------------------------------------------- retention


def _put_objects(s3_url: str, keys: Sequence[str]) -> float:
    started = time.perf_counter()
    client = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1",
                          aws_access_key_id=DEV_ACCESS_KEY, aws_secret_access_key=DEV_SECRET_KEY)
    from concurrent.futures import ThreadPoolExecutor

    body = b"\xff\xd8" + os.urandom(2048)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=BUCKET, Key=k, Body=body, ContentType="image/jpeg"), keys))
    return time.perf_counter() - started


def _webhook(n: int, prefix: str) -> tuple[str, str, dict[str, Any]]:
    job = f"{prefix}{n + 1:07d}"
    body = json.dumps({"id": f"task_{prefix}{n + 1}", "status": "failed", "outputs": [], "error": "simulated",
                       "model": MODEL}).encode()
    webhook_id, stamp = f"evt_{uuid.uuid4().hex}", str(int(time.time()))
    headers = {"content-type": "application/json", "webhook-id": webhook_id, "webhook-timestamp": stamp,
               "webhook-signature": wavespeed_signature(SECRET, webhook_id, stamp, body)}
    return "POST", f"/webhooks/wavespeed/{job}", {"content": body, "headers": headers}


async def _retention_round(base: str, db: str, r: int, seconds: float, rate: float,
                           processes: dict[str, psutil.Process]) -> tuple[Probe, Probe, float]:
    idle = Probe(lambda n: _webhook(n, f"job_hookidle{r}_"), rate)
    before = cpu_seconds(processes)
    await idle.run(base, seconds)
    print("  " + cpu_line("idle", before, cpu_seconds(processes), seconds), flush=True)
    with database.connect(db) as conn:
        # The round's jobs fall past retention now: their owner is given a retention (one
        # row written, as `owners set keepN --retention-days 30` does; an UPDATE of the
        # jobs themselves wrote ~100 MB of WAL just before the phase, and with it the
        # checkpoint that then ran during it). The sweep finds them within a second.
        conn.execute("INSERT INTO owners (name, retention_days) VALUES (%s, 30)"
                     " ON CONFLICT (name) DO UPDATE SET retention_days = 30", (f"keep{r}",))
        wal_before = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        busy, done = Probe(lambda n: _webhook(n, f"job_hookbusy{r}_"), rate), asyncio.Event()
        before = cpu_seconds(processes)
        running = asyncio.create_task(busy.run(base, done))
        started = time.perf_counter()
        # Done when no erasure is due and no job past retention is left undeleted, asked
        # on the sweep's own partial index (a count over the jobs cost Postgres 50-75 ms
        # every half second, load the idle phase never had) and from a thread, so this
        # process's own SQL never holds the probe's event loop.
        while True:
            await asyncio.sleep(0.5)
            left = await asyncio.to_thread(lambda: conn.execute(
                "SELECT EXISTS (SELECT FROM erasures) OR EXISTS (SELECT FROM jobs WHERE deleted_at IS NULL"
                " AND completed_at < now() - interval '31 days' AND status = 'completed')").fetchone())
            if left == (False,) or time.perf_counter() - started > 1800:
                break
        took = time.perf_counter() - started
        wal = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (wal_before,)).fetchone()[0]
    done.set()
    await running
    print("  " + cpu_line("busy", before, cpu_seconds(processes), took), flush=True)
    print(f"  WAL written during the erasure: {float(wal) / 1e6:,.0f} MB", flush=True)
    busy.print_slowest("the erasure", started, took)
    return idle, busy, took


async def _retention_alternating(base: str, db: str, r: int, window: float, rate: float,
                                 worker_proc: psutil.Process) -> tuple[list[Probe], list[Probe], float]:
    """The erasure paused and resumed in turn (SIGSTOP / SIGCONT of the worker process),
    ``window`` seconds each, until it is done: each busy window has an idle neighbour
    probed over the same backlog, the same tables and the same point of the checkpoint
    cycle. (At the duties' pace, 30 x each batch, a backlog of 50,000 is minutes of
    erasure, and one idle phase before it no longer compares like with like: Postgres
    here runs with autovacuum off and a timed checkpoint every 5 minutes.) Answers the
    idle and busy windows in pairs and the busy time."""
    idle_all: list[Probe] = []
    busy_all: list[Probe] = []
    offset = {"hookidle": 0, "hookbusy": 0}

    def probe(kind: str) -> Probe:
        start = offset[kind]
        offset[kind] += int(window * rate) + 100  # fresh jobs for every window's webhooks
        return Probe(lambda n: _webhook(n + start, f"job_{kind}{r}_"), rate)

    worker_proc.suspend()
    busy_seconds = 0.0
    try:
        with database.connect(db) as conn:
            conn.execute("INSERT INTO owners (name, retention_days) VALUES (%s, 30)"
                         " ON CONFLICT (name) DO UPDATE SET retention_days = 30", (f"keep{r}",))
            while True:
                worker_proc.resume()
                busy = probe("hookbusy")
                started = time.perf_counter()
                await busy.run(base, window)
                busy_seconds += time.perf_counter() - started
                worker_proc.suspend()
                left = await asyncio.to_thread(lambda: conn.execute(
                    "SELECT EXISTS (SELECT FROM erasures) OR EXISTS (SELECT FROM jobs WHERE deleted_at IS NULL"
                    " AND completed_at < now() - interval '31 days' AND status = 'completed')").fetchone())
                idle = probe("hookidle")
                await idle.run(base, window)
                idle_all.append(idle)
                busy_all.append(busy)
                print(f"  window pair {len(busy_all)}: p99 idle {idle.p(99):.1f} ms / busy {busy.p(99):.1f} ms",
                      flush=True)
                if left == (False,) or busy_seconds > 1800:
                    break
    finally:
        worker_proc.resume()
    return idle_all, busy_all, busy_seconds


def bench_retention(jobs: int, rounds: int, rate: float, env: dict[str, str], separate_workers: bool = False,
                    alternate: float = 0.0) -> None:
    separate_workers = separate_workers or bool(alternate)
    per_round = jobs // rounds
    processes: dict[str, psutil.Process] = {}
    with (database.fresh_database("wsj_bench_retention") as db, s3_server(processes) as s3,
          contextlib.ExitStack() as stack):
        lines, idle_all, busy_all, loads = [], [], [], [os.getloadavg()[0]]
        if separate_workers:
            processes["worker"] = stack.enter_context(worker(db, s3, RETENTION_INTERVAL_SECONDS="1", **env))
        with serve(db, s3, workers=not separate_workers, RETENTION_INTERVAL_SECONDS="1",
                   **env) as (base, serve_proc):
            processes["serve"] = serve_proc
            for r in range(rounds):
                prefix = f"job_keep{r}_"
                seed(db, f"keep{r}", prefix, per_round, "completed", completed_days_ago=60)
                with database.connect(db) as conn:
                    conn.execute("INSERT INTO job_outputs (job_id, index, source_url, key, content_type, size_bytes,"
                                 " sha256, stored_at) SELECT id, 0, 'https://cdn.invalid/x', 'outputs/' || id ||"
                                 " '/0.jpeg', 'image/jpeg', 2050, 'x', now() FROM jobs WHERE id LIKE %s",
                                 (prefix + "%",))
                # Real objects for the first REAL_OBJECTS jobs (moto stores ~100 a second here);
                # the others' keys are deleted all the same (S3 answers "deleted" for a missing key).
                real = min(per_round, REAL_OBJECTS)
                put = _put_objects(s3, [f"outputs/{prefix}{n:07d}/0.jpeg" for n in range(1, real + 1)])
                for kind in ("hookidle", "hookbusy"):
                    seed(db, "hooks", f"job_{kind}{r}_", 60000, "submitted")
                with database.connect(db) as conn:
                    # The seeding wrote hundreds of MB of WAL in seconds, which starts a
                    # checkpoint spread over the next minutes: over both phases, where
                    # (with no recycled WAL segment left) a commit waited 60-80 ms for a
                    # new one to be written (IO/WALInitWrite). A service's jobs arrive over
                    # days; the phases start from a finished checkpoint.
                    conn.execute("CHECKPOINT")
                if alternate:
                    idles, busys, took = asyncio.run(
                        _retention_alternating(base, db, r, alternate, rate, processes["worker"]))
                else:
                    idle, busy, took = asyncio.run(_retention_round(base, db, r, 20.0, rate, processes))
                    idles, busys = [idle], [busy]
                loads.append(os.getloadavg()[0])
                client = boto3.client("s3", endpoint_url=s3, region_name="us-east-1",
                                      aws_access_key_id=DEV_ACCESS_KEY, aws_secret_access_key=DEV_SECRET_KEY)
                left = sum(page.get("KeyCount", 0) for page in client.get_paginator("list_objects_v2").paginate(
                    Bucket=BUCKET, Prefix=f"outputs/{prefix}"))
                idle_all += idles
                busy_all += busys
                lines.append(f"round {r + 1}: {per_round:,} jobs past retention swept and erased in {took:.1f} s "
                             f"({per_round / took:,.0f} jobs/s; {real:,} real objects, {left} left; "
                             f"seeding S3 took {put:.0f} s; load {loads[-1]:.2f})")
        lines.append(f"settings {env}; duties in " + ("a worker process of their own" if separate_workers
                                                      else "the serve process (its default)")
                     + (f"; erasure paused and resumed every {alternate:g} s (each ratio: a busy window over"
                        " the idle one after it)" if alternate else ""))
    _report(f"retention of {jobs:,} jobs while signed webhooks are posted", idle_all, busy_all, lines, loads)


# --------------------------------------------------------------------------- streams


async def _open_stream(base: str, key: str, job_id: str, first: asyncio.Event, got: dict[str, float]) -> None:
    """One stream over a raw socket (an HTTP client library would cost more CPU here
    than the server does per event, on the same two cores)."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /v1/jobs/{job_id}/stream HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                 f"Accept: text/event-stream\r\n\r\n".encode())
    try:
        while line := await reader.readline():
            if line.startswith(b"data: "):
                if b'"status":"queued"' in line:
                    first.set()
                else:
                    got[job_id] = time.perf_counter()
                    return
    finally:
        writer.close()


def _first_notify(db: str, listening: threading.Event) -> float:
    """When Postgres delivers the first ``wsj_done`` (the bulk's commit: the status
    change), as ``time.perf_counter()``; serve's listener hears it at the same moment."""
    with database.connect(db) as conn:
        conn.execute("LISTEN wsj_done")
        listening.set()
        for _ in conn.notifies(timeout=120, stop_after=1):
            return time.perf_counter()
    raise TimeoutError("no wsj_done within 120 s")


async def _streams_round(base: str, db: str, proc: psutil.Process, key: str, ids: list[str]) -> dict[str, float]:
    rss_before = proc.memory_info().rss
    got: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=120) as client:
        opened = [asyncio.Event() for _ in ids]
        tasks = [asyncio.create_task(_open_stream(base, key, i, e, got)) for i, e in zip(ids, opened, strict=True)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in opened)), 120)
        await asyncio.sleep(2)
        rss_open = proc.memory_info().rss
        listening = threading.Event()
        committed = asyncio.create_task(asyncio.to_thread(_first_notify, db, listening))
        await asyncio.to_thread(listening.wait, 10)
        sent = time.perf_counter()
        answer = await client.post(f"{base}/v1/jobs/bulk", headers={"Authorization": f"Bearer {key}"},
                                   json={"action": "cancel", "filter": {"status": ["queued"]}})
        answered = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
        changed = await committed
    delays = sorted(t - sent for t in got.values())
    after = sorted(t - changed for t in got.values())
    return {"rss_before": rss_before, "rss_open": rss_open, "received": len(got), "affected": answer.json()["affected"],
            "bulk_s": answered - sent, "p50": percentile(delays, 50), "p99": percentile(delays, 99),
            "max": delays[-1], "min": delays[0], "change_s": changed - sent,
            "after_p50": percentile(after, 50), "after_p99": percentile(after, 99), "after_max": after[-1]}


def bench_streams(count: int, rounds: int) -> None:
    with database.fresh_database("wsj_bench_streams") as db, s3_server() as s3:
        key = create_key_blocking(db, "streams")
        print(f"\n== {count:,} concurrent streams on one serve process")
        # One owner holds them all: its share of the process is raised to the count.
        with serve(db, s3, workers=False, BULK_BATCH_SIZE=str(count), DB_POOL_SIZE="8",
                   STREAMS_MAX_PER_OWNER=str(count)) as (base, proc):
            for r in range(rounds):
                prefix = f"job_{r:019d}"  # + 7 digits: ids of the real shape (a stream refuses any other)
                seed(db, "streams", prefix, count, "queued")
                ids = [f"{prefix}{n:07d}" for n in range(1, count + 1)]
                f = asyncio.run(_streams_round(base, db, proc, key, ids))
                per = (f["rss_open"] - f["rss_before"]) / count / 1024
                print(f"  round {r + 1}: RSS {f['rss_before'] / 2**20:.1f} MiB idle -> {f['rss_open'] / 2**20:.1f} MiB "
                      f"with {count} open ({per:.1f} KiB per stream); one bulk cancel of {f['affected']} jobs "
                      f"answered in {f['bulk_s'] * 1000:.0f} ms; event on {f['received']}/{count} streams, delay "
                      f"from the request min {f['min'] * 1000:.0f} ms, p50 {f['p50'] * 1000:.0f} ms, "
                      f"p99 {f['p99'] * 1000:.0f} ms, max {f['max'] * 1000:.0f} ms; the status change (the commit's "
                      f"NOTIFY, +{f['change_s'] * 1000:.0f} ms) to the event: p50 {f['after_p50'] * 1000:.0f} ms, "
                      f"p99 {f['after_p99'] * 1000:.0f} ms, max {f['after_max'] * 1000:.0f} ms")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_lifecycle", description=__doc__)
    parser.add_argument("which", nargs="*", default=["bulk", "streams", "retention"])
    parser.add_argument("--jobs", type=int, default=None, help="jobs (bulk/retention) or streams")
    parser.add_argument("--rounds", type=int, default=None,
                        help="idle/busy pairs (default: bulk 5, retention 2, streams 2)")
    parser.add_argument("--rate", type=float, default=50.0,
                        help="probe requests per second, open loop (0: closed loop of 4 connections)")
    parser.add_argument("--control", type=float, default=0.0, metavar="SECONDS",
                        help="bulk: an A/A run, each busy phase SECONDS with no bulk in it (the ratio's noise floor)")
    parser.add_argument("--separate-workers", action="store_true",
                        help="retention: the duties in a `wavespeed-jobs worker` process beside `serve --no-workers`")
    parser.add_argument("--alternate", type=float, default=0.0, metavar="SECONDS",
                        help="retention: the duties in a worker process, paused and resumed every SECONDS until"
                             " the backlog is erased; each busy window is compared with the idle one after it")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the serve process, e.g. LIFECYCLE_PAUSE_FACTOR=2 (repeatable)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    env = dict(e.split("=", 1) for e in args.env)
    print(f"== bench_lifecycle: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    for which in args.which:
        if which == "bulk":
            bench_bulk(args.jobs or 10_000, args.rounds or 5, args.rate, env, args.control)
        elif which == "retention":
            bench_retention(args.jobs or 100_000, args.rounds or 2, args.rate, env, args.separate_workers,
                            args.alternate)
        elif which == "streams":
            bench_streams(args.jobs or 1_000, args.rounds or 2)
        else:
            raise SystemExit(f"unknown benchmark {which!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
