"""Receiver throughput: signed WaveSpeed webhooks into ONE ``serve`` process, side by side
with a bare Starlette app that does the same body cap, v3 HMAC and JSON parse and no
database (tests/benchmarks/bare_receiver.py).

Goal: at least 50 % of the bare app's throughput with p99 under 50 ms, every
accepted webhook persisted. This starts the real service as a separate process
(``wavespeed-jobs serve --no-workers``) on a fresh database, and the bare app beside it,
seeds jobs in ``submitted`` straight into Postgres, then replays pre-signed webhooks
(mostly ``completed`` for distinct jobs, some ``failed``, some redeliveries of an
earlier webhook-id):

1. generator ceilings: wrk and the Python generator against a server that answers a
   fixed 200, so we know the load generator is not what we measure;
2. wrk, closed loop, ``--rounds`` rounds: the service then the bare app under the same
   load (the bare app first on odd rounds), each round's throughput ratio and the
   median ratio, latency and CPU of each side;
3. the Python generator, open loop at ``--rate`` (1,000/s): latency at that rate,
   measured from when each request was due;
4. SQL: every accepted webhook-id is in webhook_events, nothing else is, each job moved
   once and to the right status, failed jobs have exactly one callback queued, the job
   counts of /metrics equal the jobs table.

``python -m tests.benchmarks.bench_receiver [--duration 20] [--rounds 3] [--rate 1000]``

``--compare-rev REV`` measures instead HEAD's receiver beside an earlier revision's, same
run (tests/benchmarks/receiver_compare.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # comes with the dev extra

from devtools.devstack import DEV_ACCESS_KEY, DEV_SECRET_KEY, embedded_s3, free_port
from service.db import queries
from service.domain.signing import wavespeed_signature
from tests.benchmarks import database, loadgen, procs, wrk

SECRET = "whsec_bench_receiver_0123456789abcdef"
MODEL = "wavespeed-ai/flux-dev-lora"
DUPLICATE_RATE = 0.10  # redeliveries of an earlier webhook-id
FAILED_RATE = 0.05  # "failed" events (terminal: a callback gets queued)


@dataclass(frozen=True)
class Hook:
    """One webhook as the provider would send it."""

    job_n: int
    webhook_id: str
    kind: str  # "completed" | "failed"
    duplicate: bool
    timestamp: str
    signature: str
    body: bytes

    @property
    def job_id(self) -> str:
        return job_id(self.job_n)

    @property
    def path(self) -> str:
        return f"/webhooks/wavespeed/{self.job_id}"


def job_id(n: int) -> str:
    return f"job_bench_{n:07d}"


def task_id(n: int) -> str:
    return f"task_bench_{n:07d}"


def prediction(n: int, kind: str) -> bytes:
    task = task_id(n)
    completed = kind == "completed"
    body = {
        "id": task,
        "model": MODEL,
        "input": {"prompt": "a lighthouse at dusk, film photo", "size": "1024*1024", "seed": n},
        "outputs": [f"https://cdn.bench.invalid/outputs/{task}/0.jpeg"] if completed else [],
        "urls": {"get": f"https://api.wavespeed.ai/api/v3/predictions/{task}/result"},
        "has_nsfw_contents": [False] if completed else [],
        "status": kind,
        "created_at": "2026-01-01T00:00:00.000000Z",
        "error": "" if completed else "simulated failure",
        "timings": {"inference": 2000 + n % 1000},
    }
    return json.dumps(body, separators=(",", ":")).encode()


class Plan:
    """Hands out jobs to webhook streams; every job gets exactly one original event."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.next_job = 1

    def stream(self, length: int) -> list[Hook]:
        now = str(int(time.time()))
        hooks: list[Hook] = []
        for _ in range(length):
            r = self.rng.random()
            if r < DUPLICATE_RATE and hooks:
                original = self.rng.choice(hooks[-200:])
                hooks.append(dataclasses.replace(original, duplicate=True))
                continue
            n = self.next_job
            self.next_job += 1
            kind = "failed" if r < DUPLICATE_RATE + FAILED_RATE else "completed"
            body = prediction(n, kind)
            webhook_id = f"whk_bench_{n:07d}"
            signature = wavespeed_signature(SECRET, webhook_id, now, body)
            hooks.append(Hook(n, webhook_id, kind, False, now, signature, body))
        return hooks

    @property
    def jobs(self) -> int:
        return self.next_job - 1


def raw_request(hook: Hook, host: str) -> bytes:
    head = (
        f"POST {hook.path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(hook.body)}\r\nwebhook-id: {hook.webhook_id}\r\n"
        f"webhook-timestamp: {hook.timestamp}\r\nwebhook-signature: {hook.signature}\r\n\r\n"
    )
    return head.encode() + hook.body


def wrk_plans(hooks: Sequence[Sequence[Hook]]) -> list[list[wrk.WrkRequest]]:
    return [[wrk.WrkRequest(h.path, (h.webhook_id, h.timestamp, h.signature), h.body) for h in s] for s in hooks]


# --------------------------------------------------------------------------- the stack


SEED_JOBS = """
INSERT INTO jobs (id, owner, model, status, input, metadata, callback_url, provider_task_id,
                  provider_status, submit_sent_at, submitted_at, run_after, created_at, updated_at)
SELECT 'job_bench_' || lpad(n::text, 7, '0'), 'bench', %(model)s, 'submitted',
       jsonb_build_object('prompt', 'a lighthouse at dusk, film photo', 'size', '1024*1024', 'seed', n),
       jsonb_build_object('tenant', 't_' || n %% 20, 'user_id', 'u_' || n %% 5000),
       'http://127.0.0.1:9/bench-callback', 'task_bench_' || lpad(n::text, 7, '0'),
       'created', now(), now(), now() + interval '1 hour', now(), now()
FROM generate_series(%(first)s::integer, %(last)s::integer) AS n
"""


def seed_jobs(url: str, count: int) -> float:
    started = time.perf_counter()
    with database.connect(url) as conn:
        conn.execute(SEED_JOBS, {"model": MODEL, "first": 1, "last": count})
        conn.execute("ANALYZE jobs")
    return time.perf_counter() - started


def serve_env(database_url: str, s3_endpoint: str, port: int, pool_size: int) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "S3_BUCKET": "wavespeed-jobs-bench",
        "S3_ENDPOINT_URL": s3_endpoint,
        "S3_CREATE_BUCKET": "true",
        "AWS_ACCESS_KEY_ID": DEV_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": DEV_SECRET_KEY,
        "WAVESPEED_API_KEY": "bench-not-used",
        # Never called: the webhook secret is given, and --no-workers submits nothing.
        "WAVESPEED_BASE_URL": "http://127.0.0.1:9",
        "WAVESPEED_WEBHOOK_SECRET": SECRET,
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "DB_POOL_SIZE": str(pool_size),
        "LOG_LEVEL": "warning",
        "LOG_FORMAT": "json",
    }


@contextlib.contextmanager
def serve(database_url: str, s3_endpoint: str, pool_size: int, log_path: Path,
          gc_report: Path | None = None, checkout: Path | None = None,
          extra_env: dict[str, str] | None = None) -> Iterator[tuple[int, psutil.Process]]:
    """``wavespeed-jobs serve --no-workers`` (as ``python -m service``), optionally under
    gcwatch, which records every garbage-collector pause into ``gc_report``. With
    ``checkout`` (another revision's tree, --compare-rev), that tree's service runs;
    ``extra_env``: more variables (a traced side's OTEL_*)."""
    port = free_port()
    watch = ["-m", "tests.benchmarks.gcwatch", str(gc_report)] if gc_report else ["-m"]
    argv = [procs.PYTHON, *watch, "service", "serve", "--no-workers", "--host", "127.0.0.1", "--port", str(port)]
    env = {**serve_env(database_url, s3_endpoint, port, pool_size), **(extra_env or {})}
    cwd = procs.ROOT
    if checkout is not None:
        env["PYTHONPATH"], cwd = str(checkout), checkout
    with procs.running(argv, env=env, ready_url=f"http://127.0.0.1:{port}/healthz", log_path=log_path,
                       cwd=cwd) as proc:
        yield port, psutil.Process(proc.pid)


@contextlib.contextmanager
def bare_app() -> Iterator[tuple[int, psutil.Process]]:
    """The baseline: tests/benchmarks/bare_receiver.py, the receiver without a database."""
    port = free_port()
    argv = [procs.PYTHON, "-m", "tests.benchmarks.bare_receiver", str(port), SECRET, str(1024 * 1024)]
    with procs.running(argv, ready_url=f"http://127.0.0.1:{port}/healthz") as proc:
        yield port, psutil.Process(proc.pid)


@contextlib.contextmanager
def ok_server() -> Iterator[int]:
    port = free_port()
    argv = [procs.PYTHON, "-m", "tests.benchmarks.loadgen", "ok-server", str(port), "300"]
    with procs.running(argv, ready_url=f"http://127.0.0.1:{port}/"):
        yield port


@contextlib.contextmanager
def profiling(out: Path | None, pid: int, duration: float) -> Iterator[None]:
    """``py-spy record`` on ``pid`` (pip install py-spy) while the block runs."""
    if out is None:
        yield
        return
    spy = Path(procs.PYTHON).with_name("py-spy")
    argv = [str(spy), "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--nonblocking",
            "--duration", str(int(duration)), "--output", str(out)]
    proc = procs.spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
        proc.wait(timeout=30)
    finally:
        procs.stop(proc)
    print(f"profile (collapsed stacks): {out}")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU seconds used by a process over a phase, as a share of one core."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        times = proc.cpu_times()
        self.cpu = times.user + times.system
        self.wall = time.perf_counter()

    def share(self) -> float:
        times = self.proc.cpu_times()
        return float(times.user + times.system - self.cpu) / (time.perf_counter() - self.wall)


class MachineMeter:
    """Over a phase, in cores: the whole machine's busy CPU, and the CPU of the Postgres
    backends serving the benchmark's database (not the server's shared writers, and not
    other people's queries on this shared server)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.busy, self.wall = self._busy(), time.perf_counter()
        self.pg = self._backends()

    @staticmethod
    def _busy() -> float:
        times = psutil.cpu_times()
        return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))

    def _backends(self) -> dict[int, float]:
        with database.connect(self.database_url) as conn:
            pids = [r[0] for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]
        cpu: dict[int, float] = {}
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                cpu[pid] = t.user + t.system
        return cpu

    def cores(self) -> tuple[float, float]:
        wall = time.perf_counter() - self.wall
        busy = (self._busy() - self.busy) / wall
        now = self._backends()
        return busy, sum(v - self.pg.get(pid, 0.0) for pid, v in now.items()) / wall


# --------------------------------------------------------------------------- phases


@dataclass
class Sent:
    """What one phase sent: hooks answered 2xx, hooks whose fate is unknown (in flight
    when the phase ended), and hooks answered with an error."""

    accepted: list[Hook]
    unknown: list[Hook]
    rejected: list[tuple[Hook, int]]


def wrk_sent(plans: Sequence[Sequence[Hook]], result: wrk.WrkResult) -> Sent:
    sent = Sent([], [], [])
    for thread, plan in zip(result.threads, plans, strict=True):
        for pos in range(1, thread.sent + 1):
            hook = plan[(pos - 1) % len(plan)]
            if pos > thread.answered:
                sent.unknown.append(hook)
            elif pos in thread.bad:
                sent.rejected.append((hook, thread.bad[pos]))
            else:
                sent.accepted.append(hook)
    return sent


def python_sent(hooks: Sequence[Hook], result: loadgen.LoadResult) -> Sent:
    sent = Sent([], [], [])
    for i in range(result.issued):
        status = result.status[i]
        if 200 <= status < 300:
            sent.accepted.append(hooks[i])
        elif status <= 0:
            sent.unknown.append(hooks[i])
        else:
            sent.rejected.append((hooks[i], status))
    return sent


def ceilings(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The generators against a server that does nothing: their own limits here."""
    out: dict[str, Any] = {}
    plan = Plan(seed=1)
    with ok_server() as port:
        if wrk.available():
            # The fixed-200 server does not care about replays: small plans, wrk wraps round.
            streams = [plan.stream(2000) for _ in range(args.connections)]
            directory = tmp / "ceiling"
            directory.mkdir()
            wrk.write_plans(directory, wrk_plans(streams))
            before = children_cpu()
            result = wrk.run(f"http://127.0.0.1:{port}", directory, threads=args.connections,
                             duration=args.ceiling_seconds)
            out["wrk"] = {"rps": result.rps, "p99_ms": result.latency_ms["p99"],
                          "cpu": (children_cpu() - before) / result.seconds}
        raw = [raw_request(h, f"127.0.0.1:{port}") for h in plan.stream(5000)]
        requests = [raw[i % len(raw)] for i in range(args.ceiling_seconds * 50_000)]
        cpu = time.process_time()
        res = loadgen.run("127.0.0.1", port, requests, connections=args.python_connections,
                          duration=args.ceiling_seconds)
        figures = res.figures()
        out["python"] = {"rps": figures["rps"], "p99_ms": figures["p99_ms"],
                         "cpu": (time.process_time() - cpu) / res.elapsed}
    return out


def _one(conn: Any, query: str, params: Sequence[Any] = ()) -> tuple[Any, ...]:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return tuple(row)


def verify(url: str, phases: Sequence[Sent], jobs_seeded: int) -> tuple[list[str], int]:
    """Problems found in the database (an empty list means every check passed), and the
    number of webhook_events rows."""
    accepted = [h for s in phases for h in s.accepted]
    maybe = [h for s in phases for h in s.unknown]
    rejected = [h for s in phases for h, _ in s.rejected]
    accepted_ids = {h.webhook_id for h in accepted}
    sent_ids = accepted_ids | {h.webhook_id for h in maybe + rejected}
    problems: list[str] = []
    with database.connect(url) as conn:
        db_ids = {r[0] for r in conn.execute("SELECT webhook_id FROM webhook_events")}
        missing = accepted_ids - db_ids
        extra = db_ids - sent_ids
        if missing:
            problems.append(
                f"{len(missing)} accepted webhook-ids are not in webhook_events, e.g. {sorted(missing)[:3]}")
        if extra:
            problems.append(f"{len(extra)} webhook_events rows were never sent, e.g. {sorted(extra)[:3]}")
        outcomes: dict[str, int] = dict(conn.execute("SELECT outcome, count(*) FROM webhook_events GROUP BY outcome"))
        if set(outcomes) - {"received"}:
            problems.append(f"unexpected webhook outcomes: {outcomes}")

        for kind, status in (("completed", "storing"), ("failed", "failed")):
            want = sorted({h.job_id for h in accepted if h.kind == kind})
            got = _one(conn, "SELECT count(*) FROM jobs WHERE id = ANY(%s) AND status = %s", (want, status))
            if got[0] != len(want):
                problems.append(f"{len(want)} jobs got an accepted '{kind}' event but {got[0]} are '{status}'")
        touched = {h.job_id for h in accepted + maybe + rejected}
        untouched = jobs_seeded - len(touched)
        still = _one(conn, "SELECT count(*) FROM jobs WHERE status = 'submitted'")[0]
        if still < untouched:
            problems.append(f"{untouched} jobs got no webhook but only {still} are still 'submitted'")

        completed_jobs = sorted({h.job_id for h in accepted if h.kind == "completed"})
        outputs = _one(conn, "SELECT count(*) FROM job_outputs WHERE job_id = ANY(%s)", (completed_jobs,))[0]
        if outputs != len(completed_jobs):
            problems.append(f"{len(completed_jobs)} completed jobs but {outputs} output rows")
        failed_jobs = sorted({h.job_id for h in accepted if h.kind == "failed"})
        deliveries = _one(
            conn, "SELECT count(*), count(DISTINCT job_id) FROM deliveries WHERE job_id = ANY(%s)", (failed_jobs,)
        )
        if deliveries != (len(failed_jobs), len(failed_jobs)):
            problems.append(f"{len(failed_jobs)} failed jobs but deliveries (rows, jobs) = {deliveries}")

        moved_twice = _one(
            conn,
            "SELECT count(*) FROM (SELECT job_id FROM job_events WHERE type = 'status.changed' "
            "GROUP BY job_id HAVING count(*) > 1) t",
        )[0]
        if moved_twice:
            problems.append(f"{moved_twice} jobs changed status more than once")
        received, dup_logged = _one(
            conn,
            "SELECT count(*), count(*) FILTER (WHERE detail->>'duplicate' = 'true') FROM job_events "
            "WHERE type = 'webhook.received'",
        )
        if not len(accepted) <= received <= len(accepted) + len(maybe) + len(rejected):
            problems.append(f"{len(accepted)} accepted webhooks but {received} 'webhook.received' events")
        if received - dup_logged != len(db_ids):
            problems.append(
                f"{received - dup_logged} first-time 'webhook.received' events for {len(db_ids)} webhook-ids")
        # Rows that triggers keep beside the jobs (migrations 0003 and 0004) followed every move.
        stale_metadata = _one(conn, "SELECT count(*) FROM job_metadata m JOIN jobs j ON j.id = m.job_id "
                                    "WHERE m.status <> j.status")[0]
        if stale_metadata:
            problems.append(f"{stale_metadata} job_metadata rows disagree with their job's status")
        conn.execute("SELECT fold_job_counts()")
        counted: dict[str, int] = {}
        for status, _model, n in conn.execute(queries.JOB_COUNTS.text):
            counted[status] = counted.get(status, 0) + n
        actual = dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY status"))
        if counted != actual:
            problems.append(f"job_counts {counted} differ from the jobs table {actual}")
    return problems, len(db_ids)


# --------------------------------------------------------------------------- side by side


@dataclass
class Round:
    """One closed-loop round: the service and the bare app, each under the same wrk load."""

    service_rps: float
    service_p99: float
    bare_rps: float
    bare_p99: float
    service_cpu: float
    bare_cpu: float
    pg_cpu: float


def wrk_phase(args: argparse.Namespace, directory: Path, streams: list[list[Hook]], target: str,
              proc: psutil.Process, url: str) -> tuple[wrk.WrkResult, float, float, float]:
    """(result, the target's CPU in cores, its Postgres backends' CPU, the whole machine's)."""
    directory.mkdir()
    wrk.write_plans(directory, wrk_plans(streams))
    meter, machine = CpuMeter(proc), MachineMeter(url)
    result = wrk.run(target, directory, threads=args.connections, duration=args.duration)
    busy, pg = machine.cores()
    return result, meter.share(), pg, busy


def alternate(args: argparse.Namespace, tmp: Path, n: int, plan: Plan, bare_plan: Plan,
              service: tuple[str, psutil.Process], bare: tuple[int, psutil.Process], url: str,
              phases: list[Sent]) -> Round:
    """Round ``n``: the service and the bare app one after the other (the bare app first
    on odd rounds, so a drift of the machine's load does not favour one side)."""
    wrk_len = math.ceil(args.max_rate_guess * args.duration / args.connections)
    host, proc = service
    figures: dict[str, tuple[wrk.WrkResult, float, float, float]] = {}
    for side in (("service", "bare") if n % 2 == 0 else ("bare", "service")):
        if side == "service":
            streams = [plan.stream(wrk_len) for _ in range(args.connections)]
            with profiling(args.profile if n == 0 else None, proc.pid, args.duration):
                figures[side] = wrk_phase(args, tmp / f"wrk_service_{n}", streams, f"http://{host}", proc, url)
            sent = wrk_sent(streams, figures[side][0])
            phases.append(sent)
            errors = sum(figures[side][0].errors.values()) + len(sent.rejected)
        else:
            streams = [bare_plan.stream(2000) for _ in range(args.connections)]  # wrk wraps round: no state
            figures[side] = wrk_phase(args, tmp / f"wrk_bare_{n}", streams, f"http://127.0.0.1:{bare[0]}", bare[1],
                                      url)
            errors = sum(figures[side][0].errors.values())
        result, cpu, pg, busy = figures[side]
        lat = result.latency_ms
        print(f"round {n + 1} {side:>7}: {_fmt(result.rps, 0)} webhooks/s; latency p50 {_fmt(lat['p50'], 2)} / "
              f"p99 {_fmt(lat['p99'], 2)} / max {_fmt(lat['max'], 2)} ms; errors {errors}; CPU in cores: "
              f"{side} {cpu:.2f}, postgres backends {pg:.2f}, machine {busy:.2f}", flush=True)
    (svc, svc_cpu, pg, _), (bare_result, bare_cpu, _, _) = figures["service"], figures["bare"]
    return Round(svc.rps, svc.latency_ms["p99"], bare_result.rps, bare_result.latency_ms["p99"],
                 svc_cpu, bare_cpu, pg)


def summarize(rounds: list[Round]) -> None:
    def median(values: list[float]) -> float:
        ordered = sorted(values)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

    ratios = [r.service_rps / r.bare_rps for r in rounds if r.bare_rps]
    def med(field: str) -> float:
        return median([getattr(r, field) for r in rounds])

    print(f"side by side, {len(rounds)} rounds: service/bare throughput ratio per round "
          + ", ".join(f"{x:.2f}" for x in ratios)
          + f"; median service {_fmt(med('service_rps'), 0)}/s (p99 {_fmt(med('service_p99'), 1)} ms, "
            f"CPU {med('service_cpu'):.2f} + postgres {med('pg_cpu'):.2f} cores), "
            f"bare {_fmt(med('bare_rps'), 0)}/s (p99 {_fmt(med('bare_p99'), 1)} ms, CPU {med('bare_cpu'):.2f}); "
            f"median ratio {median(ratios):.2f}", flush=True)


# --------------------------------------------------------------------------- main


def _fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_receiver", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per measured phase")
    parser.add_argument("--rounds", type=int, default=3,
                        help="closed-loop rounds, each the service then the bare app (alternating first)")
    parser.add_argument("--connections", type=int, default=16, help="wrk threads = connections")
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop rate of the Python phase")
    parser.add_argument("--python-connections", type=int, default=64, help="connections of the Python generator")
    parser.add_argument("--max-rate-guess", type=int, default=4000, help="sizes the pre-signed wrk plans")
    parser.add_argument("--ceiling-seconds", type=int, default=5)
    parser.add_argument("--skip-ceiling", action="store_true")
    parser.add_argument("--skip-wrk", action="store_true")
    parser.add_argument("--skip-rate", action="store_true")
    parser.add_argument("--pool-size", type=int, default=10, help="DB_POOL_SIZE of the service")
    parser.add_argument("--timeline", action="store_true", help="per-second answers and p99 of the open loop")
    parser.add_argument("--gc-report", action="store_true", help="record the service's garbage-collector pauses")
    parser.add_argument("--profile", type=Path, help="py-spy the service during the wrk phase; collapsed stacks here")
    parser.add_argument("--compare-rev", metavar="REV",
                        help="instead: HEAD's receiver beside REV's (a git revision) and the bare app, "
                             "alternating rounds (tests/benchmarks/receiver_compare.py)")
    parser.add_argument("--traced", action="store_true",
                        help="with --compare-rev: also HEAD exporting every trace over OTLP to a loopback "
                             "collector (tests/benchmarks/otlp_sink.py), a side of its own")
    args = parser.parse_args(argv)
    if args.compare_rev:
        from tests.benchmarks import receiver_compare

        return receiver_compare.main(args)

    print(f"== receiver benchmark: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
          f"{args.duration:g} s per phase", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_receiver_") as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_ceiling:
            ceiling = ceilings(args, tmp)
            for name, fig in ceiling.items():
                print(f"generator ceiling ({name} vs a fixed-200 server): {_fmt(fig['rps'], 0)} req/s, "
                      f"p99 {_fmt(fig['p99_ms'], 2)} ms, generator CPU {fig['cpu']:.0%} of a core", flush=True)
        if not wrk.available() and not args.skip_wrk:
            print("wrk is not installed (apt-get install -y wrk): skipping the closed-loop phase")
            args.skip_wrk = True

        plan, bare_plan = Plan(seed=2), Plan(seed=3)
        wrk_len = math.ceil(args.max_rate_guess * args.duration / args.connections)
        rate_len = math.ceil(args.rate * args.duration) + 10
        warm_len = 3000
        # Plans are built now (to know how many jobs to seed) and re-signed per phase.
        wrk_hooks = 0 if args.skip_wrk else wrk_len * args.connections * args.rounds
        n_jobs = math.ceil((wrk_hooks + rate_len + warm_len) * 0.95) + 100
        log_path = Path(tempfile.gettempdir()) / f"bench_receiver_serve_{os.getpid()}.log"
        phases: list[Sent] = []
        with database.fresh_database("wsj_bench_receiver") as url, embedded_s3() as s3_endpoint:
            seconds = seed_jobs(url, n_jobs)
            print(f"seeded {n_jobs:,} jobs in 'submitted' in {seconds:.1f} s", flush=True)
            gc_path = tmp / "gc.json" if args.gc_report else None
            with serve(url, s3_endpoint, args.pool_size, log_path, gc_path) as (port, proc):
                host = f"127.0.0.1:{port}"
                load_started = time.time()
                # Warm-up: imports, pool connections, prepared statements. Not measured.
                warm = plan.stream(warm_len)
                res = loadgen.run("127.0.0.1", port, [raw_request(h, host) for h in warm],
                                  connections=args.connections, duration=3.0)
                phases.append(python_sent(warm, res))
                print(f"warm-up: {res.figures()['answered']:,} webhooks", flush=True)

                if not args.skip_wrk:
                    with bare_app() as (bare_port, bare_proc):
                        rounds = [alternate(args, tmp, r, plan, bare_plan, (host, proc), (bare_port, bare_proc),
                                            url, phases)
                                  for r in range(args.rounds)]
                    summarize(rounds)

                if not args.skip_rate:
                    hooks = plan.stream(rate_len)
                    requests = [raw_request(h, host) for h in hooks]
                    meter, cpu, machine = CpuMeter(proc), time.process_time(), MachineMeter(url)
                    res = loadgen.run("127.0.0.1", port, requests, connections=args.python_connections,
                                      duration=args.duration, rate=args.rate)
                    service_cpu, gen_cpu = meter.share(), (time.process_time() - cpu) / res.elapsed
                    busy, pg = machine.cores()
                    sent = python_sent(hooks, res)
                    phases.append(sent)
                    f = res.figures()
                    print(f"open loop at {args.rate:g}/s ({args.python_connections} connections): {_fmt(f['rps'], 0)} "
                          f"webhooks/s answered; latency from due time p50 {_fmt(f['p50_ms'], 2)} / p95 "
                          f"{_fmt(f['p95_ms'], 2)} / p99 {_fmt(f['p99_ms'], 2)} / max {_fmt(f['max_ms'], 2)} ms "
                          f"(service time p50 {_fmt(f['service_p50_ms'], 2)}, p99 {_fmt(f['service_p99_ms'], 2)} ms); "
                          f"errors {f['errors']:,.0f}", flush=True)
                    print(f"  CPU in cores: service {service_cpu:.2f}, generator {gen_cpu:.2f}, "
                          f"its postgres backends {pg:.2f}, "
                          f"whole machine {busy:.2f} of {os.cpu_count()}", flush=True)
                    if args.timeline:
                        print("  second: answers, p99 ms  " + "; ".join(
                            f"{t:.0f}: {n}, {p99:.0f}" for t, n, p99 in res.timeline()))
            if gc_path is not None and gc_path.exists():
                report = json.loads(gc_path.read_text())
                during = [(gen, ms) for at, gen, ms in report["long"] if at >= load_started]
                print("service GC: " + ", ".join(f"gen {g} {r['passes']} passes ({r['total_ms']:.0f} ms)"
                                                 for g, r in sorted(report["generations"].items()))
                      + f"; pauses of 5 ms or more under load: {len(during)}"
                      + (f", longest {max(ms for _, ms in during):.1f} ms" if during else ""))
            problems, stored = verify(url, phases, n_jobs)
        accepted = sum(len(s.accepted) for s in phases)
        unique = len({h.webhook_id for s in phases for h in s.accepted})
        unknown = {h.webhook_id for s in phases for h in s.unknown}
        in_flight = len(unknown - {h.webhook_id for s in phases for h in s.accepted})
        rejected = [status for s in phases for _, status in s.rejected]
        print(f"all phases: {accepted:,} webhooks answered 2xx ({unique:,} unique webhook-ids), "
              f"{len(rejected)} answered with an error{' ' + str(sorted(set(rejected))) if rejected else ''}, "
              f"{in_flight} unanswered when a phase ended; webhook_events holds {stored:,} rows")
        if problems:
            print("VERIFY FAILED:\n  " + "\n  ".join(problems))
            print(f"service log: {log_path}")
            return 1
        print("verified with SQL: every accepted webhook-id is stored once, each job moved once and forward, "
              "failed jobs have exactly one callback queued, metadata rows and job counts in step")
        with contextlib.suppress(FileNotFoundError):
            log_path.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
