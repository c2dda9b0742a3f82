"""Pipeline: N jobs through `serve` (and `serve` + `worker`) against the naive script
(tests/benchmarks/pipeline_script.py: the official SDK's run(), requests, boto3, 32
threads) on the same simulator and the same S3, sides alternating in one run.

    .venv/bin/python -m tests.benchmarks.bench_pipeline [--jobs 400] [--rate 20] [--reps 3]

Every part is a real process on 127.0.0.1, started here and stopped at the end: moto's
S3 under uvicorn (tests/benchmarks/s3server.py: keep-alive, as S3), the WaveSpeed
simulator (`wavespeed-jobs simulator`), the service (fresh for each run), the script;
the parent submits, catches the callbacks and measures.

Per run it measures, from outside:
- CPU per job: the service's processes (psutil, from after start-up to the last
  callback), Postgres apart (the backends of the benchmark's database; Postgres's shared
  background writers are left out), the script's own process (its threads, after start-up);
- latencies: for the service, provider webhook received → job completed (every output in
  S3, from the job's events) → callback received by the backend; for the script, task
  done at the provider (the simulator's task creation + its completion delay) → last
  object in S3 (the SDK polls, once a second by default);
- jobs/s: jobs ÷ (first submit → last callback, or the script's wall time);
- for each service side, where the machine's CPU went (tests/benchmarks/cpu_shares.py):
  per job, the CPU of each process (``serve``, ``worker``, the database's backends, the
  rest of Postgres, the S3 emulator, the simulator, the delay proxy, py-spy, this process
  and its callback catcher), the time each was runnable without a core (run-queue wait),
  the machine's busy cores and idle share; which process did which part of the work
  (tests/benchmarks/work_split.py, from each one's ``/metrics``); behind ``--db-delay-ms``,
  the writes per job the service sent its database (about one round trip each) and a
  ``SELECT 1``'s round trip with and without the proxy. The summary ends with one line per
  side: the machine's CPU per job × jobs/s = the cores in use.

The measured phase begins once the submitters' start-up is done (the provider's slot and
token rows: see ``_wait_capacity_ready``).

Logs: every service process writes its log (``--log-level``, JSON) to a directory that is
kept after the run (its path is printed first). For every job not called back within
``--timeout``, the run prints its status, lease, events and deliveries from the database.

Scenarios: a burst (all N submitted at once by 32 concurrent clients), a steady rate
(``--rate`` jobs/s for N/rate seconds), and ``slow``: the provider takes 1–3 s per task
(the simulator's delay 1 s plus up to 2 s of jitter) while ``--slow-jobs`` arrive at
``--slow-rate`` per second; there the service's side also prints where each job's time
went (tests/benchmarks/timeline.py: webhook sent → received → copy → completed →
callback, p50/p90/p99 per segment) and what Postgres's backends waited on meanwhile
(``pg_stat_activity`` sampled every 25 ms), and the script's latency is measured from the
task's real end. The second process (``serve`` + ``worker``) runs
the burst only. Medians over ``--reps`` repetitions are printed with their ratios.

``--traced`` adds a side: this checkout's ``serve`` exporting every trace over OTLP/HTTP to
a loopback collector (tests/benchmarks/otlp_sink.py), beside the same ``serve`` with
nothing configured (``--baseline`` adds the one before a change, all in one run).

``--baseline`` runs the other checkout's ``serve`` on this checkout's database, so a schema
change shows on both sides; ``--baseline-schema`` gives the baseline a database of its own,
migrated by its checkout's own revisions (its figures then read that database's backends).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import psutil

from devtools.devstack import DEV_ACCESS_KEY, DEV_SECRET_KEY, free_port
from service.db.keys import create_key_blocking
from tests.benchmarks import database, delay_proxy, otlp_sink, procs, timeline, work_split
from tests.benchmarks.cpu_shares import Phase, Shares, postgres_pids
from tests.benchmarks.loadgen import percentile
from tests.servers import WebhookCatcher

BUCKET = "wavespeed-jobs-bench"
MODEL = "wavespeed-ai/flux-dev-lora"
SIM_KEY = "sim-key"
SIM_SECRET = "whsec_simulator_0123456789abcdef"
INPUT = {"prompt": "a lighthouse at dusk", "size": "1024*1024", "seed": 7}  # one image: the simulator caches it


@dataclass
class Run:
    side: str
    scenario: str
    jobs: int
    cpu_ms: float  # per job, the side's own processes
    pg_ms: float = float("nan")  # per job, Postgres backends (service sides only)
    xacts: float = float("nan")  # transactions per job (pg_stat_database), load-independent
    # Postgres backends started during the run (pg_stat_database.sessions): one that also
    # ended before the run's end is missing from pg_ms, so a side that opens and closes
    # connections (a pool with overflow) looks cheaper there than it is.
    sessions: int = 0
    jobs_per_s: float = float("nan")
    latencies: dict[str, list[float]] = field(default_factory=dict)  # name → sorted seconds
    errors: int = 0
    phase: Phase | None = None  # where the machine's CPU went meanwhile (service sides)
    notes: list[str] = field(default_factory=list)  # printed under the run's line
    # Per job, the writes the service sent its database through the delay proxy (each about
    # one round trip: a statement, or messages sent together), --db-delay-ms sides only.
    round_trips: float = float("nan")


def _cpu(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def _pg_backends(meter: Any) -> dict[int, float]:
    pids = [r[0] for r in meter.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]
    return {pid: _cpu([pid]) for pid in pids}


def _transactions(meter: Any) -> tuple[int, int]:
    """(transactions, sessions) of the benchmark's database so far."""
    meter.execute("SELECT pg_stat_force_next_flush()")
    row = meter.execute("SELECT xact_commit + xact_rollback, sessions FROM pg_stat_database "
                        "WHERE datname = current_database()").fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _pg_used(before: dict[int, float], after: dict[int, float]) -> float:
    # A backend that appeared during the run counts from zero; one that ended is missed.
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def _service_env(args: argparse.Namespace, db_url: str, s3_url: str, sim_url: str, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": db_url, "S3_BUCKET": BUCKET, "S3_ENDPOINT_URL": s3_url,
        "AWS_ACCESS_KEY_ID": DEV_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": DEV_SECRET_KEY,
        "WAVESPEED_API_KEY": SIM_KEY, "WAVESPEED_BASE_URL": sim_url, "WAVESPEED_WEBHOOK_SECRET": SIM_SECRET,
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}", "ALLOW_PRIVATE_NETWORKS": "true",
        # The script has no account limits: neither does the service here.
        "PROVIDER_MAX_IN_FLIGHT": "100000", "PROVIDER_MAX_PER_MINUTE": "1000000",
        "LOG_LEVEL": args.log_level, "LOG_FORMAT": "json",
    }


def _submit_all(url: str, key: str, n: int, rate: float, callback: str) -> tuple[list[str], float]:
    """Submit ``n`` jobs with 32 concurrent clients (at ``rate`` per second when > 0)."""
    body = {"model": MODEL, "input": INPUT, "callback_url": callback}
    started = time.time()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30,
                      limits=httpx.Limits(max_connections=32)) as client:
        def one(i: int) -> str:
            if rate > 0:
                delay = started + i / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
            answer = client.post("/v1/jobs", json=body)
            answer.raise_for_status()
            return str(answer.json()["id"])

        with ThreadPoolExecutor(32 if rate <= 0 else 64) as pool:
            return list(pool.map(one, range(n))), started


def _event_times(meter: Any, ids: list[str]) -> dict[str, tuple[float, float]]:
    """job id → (webhook received, completed), epoch seconds, from the job's events."""
    rows = meter.execute(
        """
        SELECT job_id,
               min(at) FILTER (WHERE type = 'webhook.received'),
               min(at) FILTER (WHERE type = 'status.changed' AND detail->>'to' = 'completed')
        FROM job_events WHERE job_id = ANY(%s) GROUP BY job_id
        """, (ids,)).fetchall()
    return {r[0]: (r[1].timestamp(), r[2].timestamp()) for r in rows if r[1] and r[2]}


def run_service(args: argparse.Namespace, env_base: dict[str, Any], scenario: str, processes: int,
                catcher: WebhookCatcher, key: str, logs: Path, label: str, cwd: Path | None = None,
                traced: str | None = None) -> Run:
    """``traced``: a collector's URL, to export every trace to (the side is then "traced")."""
    port = free_port()
    # "service_db": the database as the service reaches it (through the delay proxy, for
    # the --db-delay-ms side); the benchmark's own readings always go straight to it.
    env = _service_env(args, env_base.get("service_db", env_base["db"]), env_base["s3"], env_base["sim"], port)
    side = env_base.get("side") or (("serve" if processes == 1 else "serve+worker") if cwd is None else "baseline")
    if side == "baseline":
        env.update(dict(setting.split("=", 1) for setting in args.baseline_env))
    if traced is not None:
        env.update(otlp_sink.traced_env(traced))
        side = "traced"
    entry = "tests.benchmarks.statement_counter" if args.count_statements else "service"
    counts = logs / f"{label}-statements.json"
    env["STATEMENT_COUNTS"] = str(counts)
    with (
        procs.running([procs.PYTHON, "-m", entry, "serve", "--host", "127.0.0.1", "--port", str(port)],
                      env=env, ready_url=f"http://127.0.0.1:{port}/healthz",
                      log_path=logs / f"{label}-serve.log", cwd=cwd or procs.ROOT) as serve,
        contextlib.ExitStack() as stack,
    ):
        pids = [serve.pid]
        worker = None
        metrics_urls = {"serve": f"http://127.0.0.1:{port}"}
        if processes > 1:
            worker_log = stack.enter_context(open(logs / f"{label}-worker.log", "wb"))
            worker_port = free_port()  # its /metrics: what it did (work_split)
            worker = procs.spawn([procs.PYTHON, "-m", entry, "worker", "--host", "127.0.0.1", "--port",
                                  str(worker_port)], env={**env, "STATEMENT_COUNTS": ""},
                                 stdout=worker_log, stderr=worker_log)
            pids.append(worker.pid)
            metrics_urls["worker"] = f"http://127.0.0.1:{worker_port}"
            procs.wait_http(metrics_urls["worker"] + "/healthz", worker, 30, logs / f"{label}-worker.log")
            time.sleep(2.0)  # its start-up (imports, pools) is not charged to the jobs
        spies = [_spy(pid, logs / f"{label}-{name}.pyspy") for pid, name in zip(pids, ("serve", "worker"),
                                                                                  strict=False)
                 if args.profile]
        try:
            catcher.clear()
            meter = env_base["meter"]  # one connection held all along: Postgres's slots are shared
            ready_after = _wait_capacity_ready(meter)
            shares = _shares(env_base, dict(zip(("serve", "worker"), pids, strict=False)), spies, catcher)
            done0 = {name: work_split.counts(url) for name, url in metrics_urls.items()}
            cpu0, pg0, tx0 = _cpu(pids), _pg_backends(meter), _transactions(meter)
            proxy = env_base.get("proxy")
            chunks0 = proxy.counts() if proxy else (0, 0)
            reading0, wall0 = shares.read(), time.monotonic()
            rate = {"steady": args.rate, "slow": args.slow_rate}.get(scenario, 0.0)
            sampler = timeline.sampled(env_base["db"], scenario == "slow" or args.waits)
            ids, started = _submit_all(f"http://127.0.0.1:{port}", key, _jobs(args, scenario), rate,
                                       catcher.url("/cb"))
            wanted = set(ids)
            try:
                _wait_callbacks(catcher, wanted, args.timeout)
            except TimeoutError as exc:
                print(f"  ! {exc}", flush=True)
            cpu1, pg1 = _cpu(pids), _pg_backends(meter)
            phase = Shares.between(reading0, shares.read(), time.monotonic() - wall0)
            chunks1 = proxy.counts() if proxy else (0, 0)
            split = {name: work_split.difference(done0[name], work_split.counts(url))
                     for name, url in metrics_urls.items()}
            if sampler is not None:
                sampler.stop()
            for spy in spies:
                _stop_spy(spy)
            time.sleep(1.0)  # backends report their counters at most once a second
            tx1 = _transactions(meter)
        finally:
            if worker is not None:
                procs.stop(worker)
    if args.count_statements and counts.exists():  # written by serve as it stopped
        _print_counts(json.loads(counts.read_text()), len(ids))
    callbacks: dict[str, float] = {}
    caught = [r for r in catcher.snapshot() if r.json()["data"]["id"] in wanted]
    for request in caught:
        callbacks.setdefault(request.json()["data"]["id"], request.received_at)
    if len(caught) > len(callbacks):  # the same job's event twice: a duplicate callback
        print(f"  ! {len(caught) - len(callbacks)} duplicate callback(s)", flush=True)
    events = _event_times(env_base["meter"], ids)
    first, last_in = env_base["meter"].execute("SELECT min(created_at), max(created_at) FROM jobs WHERE id = ANY(%s)",
                                               (ids,)).fetchone()
    admitted = (last_in - first).total_seconds() if first and last_in else float("nan")
    # Admitted → accepted by the provider (its task id recorded): what the submitter's
    # pace, and any backpressure on it, cost a job before the provider starts on it.
    accepted = sorted(float(r[0]) for r in env_base["meter"].execute(
        "SELECT extract(epoch FROM submitted_at - created_at) FROM jobs WHERE id = ANY(%s) "
        "AND submitted_at IS NOT NULL", (ids,)))
    created = dict(env_base["meter"].execute(
        "SELECT id, extract(epoch FROM created_at)::float8 FROM jobs WHERE id = ANY(%s)", (ids,)).fetchall())
    done = [i for i in ids if i in events and i in callbacks]
    # Not measured: never called back, or called back without the webhook's event (the
    # reconciler fetched the result, so there is no webhook → completed latency).
    unmeasured = [i for i in ids if i not in done]
    if unmeasured:
        _report_unfinished(env_base["meter"], unmeasured, callbacks, logs / f"{label}-unmeasured.txt")
    last = max(callbacks[i] for i in done) if done else float("nan")
    if sampler is not None:
        timeline.print_breakdown(timeline.breakdown(timeline.job_timelines(env_base["meter"], env_base["sim"], ids,
                                                                           callbacks)))
        sampler.report()
    return Run(
        side=side, scenario=scenario, jobs=len(ids), cpu_ms=(cpu1 - cpu0) / len(ids) * 1000,
        pg_ms=_pg_used(pg0, pg1) / len(ids) * 1000, xacts=(tx1[0] - tx0[0]) / len(ids), sessions=tx1[1] - tx0[1],
        jobs_per_s=len(done) / (last - started),
        latencies={
            "webhook→completed": sorted(events[i][1] - events[i][0] for i in done),
            "webhook→callback": sorted(callbacks[i] - events[i][0] for i in done),
            "admitted→accepted": accepted,
            "admitted→callback": sorted(callbacks[i] - created[i] for i in done),
        },
        errors=len(ids) - len(done) + len(caught) - len(callbacks),  # unmeasured, and duplicates
        phase=phase, notes=[f"     submitters' start-up (provider slots and tokens) done {ready_after:.1f} s after the "
                            f"processes answered; the {len(ids)} jobs admitted in {admitted:.1f} s",
                            work_split.line(split), *phase.lines(len(ids))],
        round_trips=(chunks1[0] - chunks0[0]) / len(ids) if proxy else float("nan"),
    )


# A submitter's first claim makes sure the provider's slot and rate-token rows exist
# (service/db/submits.py::ensure_capacity): with the limits this benchmark sets (none, in
# effect: 100,000 slots and 1,000,000 tokens) that is seconds of Postgres's CPU in each
# process that starts, and a second process's insert waits for the first one's. The
# measured phase begins once no session of the database is at it.
_CAPACITY_WORK = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle'
  AND (query LIKE '%%provider_slots%%' OR query LIKE '%%provider_rate_tokens%%')
"""


def _wait_capacity_ready(meter: Any, quiet_polls: int = 3, timeout: float = 60.0) -> float:
    """Seconds until no session ran the submitters' start-up for ``quiet_polls`` polls in a row."""
    began, quiet = time.monotonic(), 0
    while quiet < quiet_polls and time.monotonic() - began < timeout:
        busy = meter.execute(_CAPACITY_WORK).fetchone()[0]
        quiet = 0 if busy else quiet + 1
        time.sleep(0.1)
    return time.monotonic() - began


def _shares(env_base: dict[str, Any], service: dict[str, int], spies: list[subprocess.Popen[bytes]],
            catcher: WebhookCatcher) -> Shares:
    """The groups of processes a run's CPU is read from (see cpu_shares.py)."""
    meter = env_base["meter"]

    def fixed(*pids: int) -> Callable[[], list[int]]:
        return lambda: list(pids)

    groups: dict[str, Callable[[], Iterable[int]]] = {name: fixed(pid) for name, pid in service.items()}
    groups |= {"postgres: this database": lambda: list(_pg_backends(meter)), "postgres: the rest": postgres_pids,
               "S3 emulator (moto)": fixed(env_base["pids"]["s3"]), "simulator": fixed(env_base["pids"]["sim"])}
    if env_base.get("proxy"):
        groups["db delay proxy"] = fixed(env_base["proxy"].pid)
    if spies:
        groups["py-spy"] = fixed(*(spy.pid for spy in spies))
    groups["benchmark: submits, waits"] = fixed(os.getpid())
    # The catcher's uvicorn thread: the backend receiving the callbacks, apart from the rest.
    thread = getattr(getattr(catcher, "_server", None), "_thread", None)
    threads = {"benchmark: callback catcher": fixed(thread.native_id)} if thread and thread.native_id else {}
    return Shares(groups, threads)


def _wait_callbacks(catcher: WebhookCatcher, wanted: set[str], timeout: float) -> None:
    """Wait until every job in ``wanted`` was called back. Each callback's body is parsed
    once (the catcher's ``wait_for`` runs its predicate on every request at every arrival,
    under the lock its server thread needs to record the next one: n² parses in the
    benchmark's process, while the service's callbacks wait for their answers)."""
    deadline, seen, found = time.monotonic() + timeout, 0, set()
    while True:
        caught = catcher.snapshot()
        for request in caught[seen:]:
            job_id = request.json()["data"]["id"]
            if job_id in wanted:
                found.add(job_id)
        seen = len(caught)
        if len(found) >= len(wanted):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"expected {len(wanted)} callback(s), got {len(found)} in {timeout} s")
        time.sleep(0.05)


def _round_trips(direct: str, proxied: str, n: int = 200) -> str:
    """A ``SELECT 1``'s round trip straight to Postgres and through the delay proxy: what
    the delay really adds (the proxy's timers and the machine's load add to the nominal
    2 × delay)."""
    figures = []
    for url in (direct, proxied):
        with database.connect(url) as conn:
            conn.execute("SELECT 1")
            took = []
            for _ in range(n):
                began = time.perf_counter()
                conn.execute("SELECT 1")
                took.append(time.perf_counter() - began)
        took.sort()
        figures.append(f"p50 {percentile(took, 50) * 1000:.2f} ms, p90 {percentile(took, 90) * 1000:.2f} ms")
    return f"     SELECT 1 round trip: direct {figures[0]}; through the proxy {figures[1]}"


def _print_counts(counts: dict[str, int], jobs: int) -> None:
    print(f"  statements per job through SQLAlchemy (serve, start-up included): {sum(counts.values()) / jobs:.1f}")
    for statement, n in list(counts.items())[:25]:
        print(f"  {n / jobs:6.2f}  {statement[:140]}")


def _spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """``py-spy record`` on ``pid`` until _stop_spy (collapsed stacks in ``out``)."""
    spy = Path(procs.PYTHON).with_name("py-spy")
    argv = [str(spy), "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "--nonblocking",
            "--output", str(out)]
    # BENCH_PYSPY_ARGS: more py-spy flags, e.g. "--gil" (only samples holding the GIL: Python's
    # CPU, not threads waiting for it on a busy machine) or "--native".
    argv += os.environ.get("BENCH_PYSPY_ARGS", "").split()
    return procs.spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop_spy(spy: subprocess.Popen[bytes]) -> None:
    # SIGINT makes py-spy write what it sampled; SIGTERM would lose it.
    with contextlib.suppress(ProcessLookupError):
        os.kill(spy.pid, signal.SIGINT)
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        procs.stop(spy)


def _report_unfinished(meter: Any, ids: list[str], callbacks: dict[str, float], path: Path) -> None:
    """Print (and keep in ``path``) what the database says of jobs not measured: their
    row, events and deliveries."""
    states = dict(meter.execute(
        "SELECT j.status || CASE WHEN d.status IS NULL THEN '' ELSE ', callback ' || d.status END, count(*) "
        "FROM jobs j LEFT JOIN deliveries d ON d.job_id = j.id WHERE j.id = ANY(%s) GROUP BY 1", (ids,)).fetchall())
    lines = [f"{len(ids)} job(s) not measured ({sum(i not in callbacks for i in ids)} never called back); "
             f"where they are: {states}"]
    for job_id in ids:
        lines.append(f"- job {job_id}: {'called back' if job_id in callbacks else 'NOT called back'}")
        job = meter.execute(
            "SELECT status, provider_task_id, provider_status, locked_by, locked_until, run_after, attempts, "
            "callback_status, callback_attempts, created_at, updated_at FROM jobs WHERE id = %s", (job_id,)).fetchone()
        lines.append(f"    row {job}")
        for at, kind, detail in meter.execute(
                "SELECT at, type, detail FROM job_events WHERE job_id = %s ORDER BY at, id", (job_id,)):
            lines.append(f"    event {at.isoformat()} {kind} {json.dumps(detail)}")
        for row in meter.execute(
                "SELECT id, status, attempts, next_attempt_at, locked_by, locked_until, last_status_code, last_error, "
                "created_at, delivered_at FROM deliveries WHERE job_id = %s ORDER BY created_at", (job_id,)):
            lines.append(f"    delivery {tuple(row)}")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:200]), flush=True)
    print(f"  (kept in {path})", flush=True)


def run_script(args: argparse.Namespace, env_base: dict[str, Any], scenario: str) -> Run:
    env = {**os.environ, "WAVESPEED_API_KEY": SIM_KEY, "WAVESPEED_BASE_URL": env_base["sim"],
           "S3_ENDPOINT_URL": env_base["s3"], "S3_BUCKET": BUCKET,
           "AWS_ACCESS_KEY_ID": DEV_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": DEV_SECRET_KEY}
    argv = [procs.PYTHON, "-m", "tests.benchmarks.pipeline_script", "--jobs", str(_jobs(args, scenario))]
    if scenario in ("steady", "slow"):
        argv += ["--rate", str(args.rate if scenario == "steady" else args.slow_rate)]
    child = procs.spawn(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = child.communicate(timeout=args.timeout + 60)
    finally:
        procs.stop(child)
    line = next((ln for ln in out.decode().splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"the script failed (exit {child.returncode}): {err.decode()[-2000:]}")
    figures = json.loads(line[len("BENCH_JSON "):])
    tasks = {t["id"]: t for t in httpx.get(env_base["sim"] + "/_sim/tasks", timeout=60).json()}
    latency = []
    for job in figures["jobs"]:
        task = tasks.get(job["task_id"])
        if task:
            done_at = task.get("ended_at") or (dt.datetime.fromisoformat(task["created_at"]).timestamp()
                                               + args.completion_delay)
            latency.append(job["stored_at"] - done_at)
    n = len(figures["jobs"])
    return Run(side="script", scenario=scenario, jobs=n, cpu_ms=figures["cpu_s"] / max(n, 1) * 1000,
               jobs_per_s=n / figures["wall_s"], latencies={"done→in S3": sorted(latency)},
               errors=figures["error_count"])


def _jobs(args: argparse.Namespace, scenario: str) -> int:
    return int(args.slow_jobs if scenario == "slow" else args.jobs)


@contextlib.contextmanager
def _provider_for(args: argparse.Namespace, sim_url: str, scenario: str) -> Any:
    """The simulator's task time for ``scenario``: 1–3 s for ``slow``, else --completion-delay."""
    slow = scenario == "slow"
    knobs = {"completion_delay": 1.0 if slow else args.completion_delay, "completion_jitter": 2.0 if slow else 0.0}
    httpx.post(sim_url + "/_sim/config", json=knobs, timeout=30).raise_for_status()
    yield


def _fmt(run: Run) -> str:
    parts = [f"{run.side:<13} {run.scenario:<6} cpu/job {run.cpu_ms:6.1f} ms"]
    if run.side != "script":
        parts.append(f"postgres/job {run.pg_ms:5.1f} ms  {run.xacts:4.1f} tx/job  {run.sessions:3d} backends started")
    if run.round_trips == run.round_trips:  # not NaN: the side's database was behind the delay proxy
        parts.append(f"{run.round_trips:4.1f} round trips/job")
    parts.append(f"{run.jobs_per_s:6.1f} jobs/s")
    for name, values in run.latencies.items():
        parts.append(f"{name} p50 {percentile(values, 50) * 1000:6.0f} ms p99 {percentile(values, 99) * 1000:6.0f} ms")
    if run.errors:
        parts.append(f"UNFINISHED {run.errors}")
    return "  ".join(parts)


def _median(runs: list[Run], pick: Any) -> float:
    values = [pick(r) for r in runs]
    return statistics.median(values) if values else float("nan")


def _paired(these: list[Run], those: list[Run], pick: Any) -> str:
    """Each repetition's ratio (the sides of a repetition ran back to back) and their
    median: what the verdict reads, the medians of each side apart being only context."""
    ratios = [pick(a) / pick(b) for a, b in zip(these, those, strict=False) if pick(b)]
    if not ratios:
        return "no ratio"
    return ", ".join(f"{x:.2f}" for x in ratios) + f" (median {statistics.median(ratios):.2f})"


def summary(runs: list[Run], args_delay_ms: float = 0.0) -> None:
    def of(side: str, scenario: str) -> list[Run]:
        return [r for r in runs if r.side == side and r.scenario == scenario]

    print("\n== medians over repetitions")
    for scenario in ("burst", "steady", "slow"):
        service, two, script = of("serve", scenario), of("serve+worker", scenario), of("script", scenario)
        if not service:
            continue
        s_cpu, s_pg = _median(service, lambda r: r.cpu_ms), _median(service, lambda r: r.pg_ms)
        c_cpu = _median(script, lambda r: r.cpu_ms)  # nan without the script's side
        print(f"{scenario}: service cpu/job {s_cpu:.1f} ms + postgres {s_pg:.1f} ms "
              f"({_median(service, lambda r: r.xacts):.1f} transactions/job); script {c_cpu:.1f} ms "
              f"→ service/script {s_cpu / c_cpu:.2f}× ({(s_cpu + s_pg) / c_cpu:.2f}× with postgres)")
        for name in ("webhook→completed", "webhook→callback", "admitted→accepted", "admitted→callback"):
            p99 = _median(service, lambda r, n=name: percentile(r.latencies[n], 99) * 1000)
            p50 = _median(service, lambda r, n=name: percentile(r.latencies[n], 50) * 1000)
            print(f"  service {name}: p50 {p50:.0f} ms, p99 {p99:.0f} ms")
        if script:
            p99 = _median(script, lambda r: percentile(r.latencies["done→in S3"], 99) * 1000)
            print(f"  script done→in S3: p99 {p99:.0f} ms; jobs/s service "
                  f"{_median(service, lambda r: r.jobs_per_s):.1f}, "
                  f"script {_median(script, lambda r: r.jobs_per_s):.1f}")
        traced = of("traced", scenario)
        if service and traced:
            t_cpu = _median(traced, lambda r: r.cpu_ms)

            def p99_of(runs: list[Run]) -> float:
                return _median(runs, lambda r: percentile(r.latencies["webhook→callback"], 99)) * 1000

            print(f"  traced vs this checkout untraced: cpu/job {t_cpu:.1f} vs {s_cpu:.1f} ms ({t_cpu / s_cpu:.2f}×), "
                  f"postgres {_median(traced, lambda r: r.pg_ms):.1f} vs {s_pg:.1f} ms, jobs/s "
                  f"{_median(traced, lambda r: r.jobs_per_s):.1f} vs {_median(service, lambda r: r.jobs_per_s):.1f}, "
                  f"webhook→callback p99 {p99_of(traced):.0f} vs {p99_of(service):.0f} ms; per rep cpu/job "
                  f"{_paired(traced, service, lambda r: r.cpu_ms)}, jobs/s "
                  f"{_paired(traced, service, lambda r: r.jobs_per_s)}")
        base = of("baseline", scenario)
        if service and base:
            print(f"  this checkout vs baseline: cpu/job {s_cpu:.1f} vs {_median(base, lambda r: r.cpu_ms):.1f} ms "
                  f"({s_cpu / _median(base, lambda r: r.cpu_ms):.2f}×), postgres {s_pg:.1f} vs "
                  f"{_median(base, lambda r: r.pg_ms):.1f} ms, tx/job {_median(service, lambda r: r.xacts):.1f} vs "
                  f"{_median(base, lambda r: r.xacts):.1f}, jobs/s {_median(service, lambda r: r.jobs_per_s):.1f} vs "
                  f"{_median(base, lambda r: r.jobs_per_s):.1f}, backends started "
                  f"{_median(service, lambda r: r.sessions):.0f} vs {_median(base, lambda r: r.sessions):.0f}; "
                  f"per rep cpu/job {_paired(service, base, lambda r: r.cpu_ms)}, jobs/s "
                  f"{_paired(service, base, lambda r: r.jobs_per_s)}")
            for name in ("webhook→callback", "admitted→accepted", "admitted→callback"):
                print(f"  baseline {name}: p50 "
                      f"{_median(base, lambda r, n=name: percentile(r.latencies[n], 50) * 1000):.0f} ms, p99 "
                      f"{_median(base, lambda r, n=name: percentile(r.latencies[n], 99) * 1000):.0f} ms")
        delayed = of("serve+delay", scenario)
        if delayed:
            d_rate, s_rate = _median(delayed, lambda r: r.jobs_per_s), _median(service, lambda r: r.jobs_per_s)
            d_p50 = _median(delayed, lambda r: percentile(r.latencies["webhook→callback"], 50) * 1000)
            d_p99 = _median(delayed, lambda r: percentile(r.latencies["webhook→callback"], 99) * 1000)
            print(f"  database {args_delay_ms:.1f} ms away: {d_rate:.1f} jobs/s against {s_rate:.1f} "
                  f"({d_rate / s_rate:.2f}×; per rep {_paired(delayed, service, lambda r: r.jobs_per_s)}), "
                  f"webhook→callback p50 {d_p50:.0f} ms, p99 {d_p99:.0f} ms; "
                  f"{_median(delayed, lambda r: r.round_trips):.1f} round trips/job; cpu/job "
                  f"{_median(delayed, lambda r: r.cpu_ms):.1f} vs {s_cpu:.1f} ms")
            print(_machine_line("serve+delay", delayed))
        if two:
            one_rate, two_rate = _median(service, lambda r: r.jobs_per_s), _median(two, lambda r: r.jobs_per_s)
            print(f"  serve+worker {two_rate:.1f} jobs/s vs serve {one_rate:.1f}: {two_rate / one_rate:.2f}× "
                  f"(per rep {_paired(two, service, lambda r: r.jobs_per_s)}; cpu/job "
                  f"{_median(two, lambda r: r.cpu_ms):.1f} ms + postgres {_median(two, lambda r: r.pg_ms):.1f} ms)")
        for side, side_runs in (("serve", service), ("serve+worker", two)):
            if side_runs and (two or delayed):
                print(_machine_line(side, side_runs))


def _machine_line(side: str, runs: list[Run]) -> str:
    """The machine while ``side`` ran (medians of its repetitions): every process's CPU
    per job, and per job × jobs/s = the cores in use, against the cores there are."""
    measured = [r for r in runs if r.phase is not None]
    if not measured:
        return f"  {side}: no machine figures"

    def per_job(r: Run) -> float:
        assert r.phase is not None
        return r.phase.busy / r.jobs * 1000

    def cores(r: Run) -> float:
        assert r.phase is not None
        return r.phase.busy / r.phase.wall

    def idle(r: Run) -> float:
        assert r.phase is not None
        return r.phase.idle_share

    names = list(measured[0].phase.groups) if measured[0].phase else []
    parts = ", ".join(f"{name} {_median(measured, lambda r, n=name: r.phase.groups.get(n, 0.0) / r.jobs * 1000):.1f}"
                      for name in names)
    waited = ", ".join(
        f"{name} {_median(measured, lambda r, n=name: r.phase.waits.get(n, 0.0) / r.jobs * 1000):.1f}"
        for name in names if name in ("serve", "worker") or name.startswith("postgres: this"))
    return (f"  {side}: the machine {_median(measured, per_job):.1f} ms of CPU per job × "
            f"{_median(measured, lambda r: r.jobs_per_s):.1f} jobs/s = {_median(measured, cores):.2f} cores busy of "
            f"{psutil.cpu_count()}, idle {_median(measured, idle):.0%} (per job, ms: {parts}); "
            f"runnable without a core, ms per job: {waited}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=400, help="jobs per run")
    parser.add_argument("--rate", type=float, default=20.0, help="jobs/s of the steady scenario")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--completion-delay", type=float, default=0.5, help="the simulated provider's time per task")
    parser.add_argument("--timeout", type=float, default=180.0, help="longest wait for one run's jobs")
    parser.add_argument("--scenarios", default="burst,steady,slow", help="of burst, steady, slow")
    parser.add_argument("--slow-jobs", type=int, default=200, help="jobs per run of the slow-provider scenario")
    parser.add_argument("--slow-rate", type=float, default=26.0, help="jobs/s of the slow-provider scenario")
    parser.add_argument("--db-delay-ms", type=float, default=0.0,
                        help="also run `serve` with its database behind a loopback proxy that holds every chunk "
                             "this long each way (tests/benchmarks/delay_proxy.py), alternating with plain `serve`")
    parser.add_argument("--waits", action="store_true",
                        help="sample Postgres's waits and print the per-job timeline in every scenario")
    parser.add_argument("--no-second-process", action="store_true")
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                        help="also run `serve` from this other checkout (e.g. `git worktree add /tmp/base main~3`), "
                             "alternating with this one, on the same database schema: before/after a change")
    parser.add_argument("--baseline-schema", action="store_true",
                        help="the baseline side on a database of its own, migrated by the baseline checkout")
    parser.add_argument("--baseline-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of the baseline side's service only (repeatable): with --baseline . the same "
                             "code under two settings, e.g. SUBMIT_DOWNSTREAM_LIMIT=0")
    parser.add_argument("--sides", default="serve,script,serve+worker", help="which sides to run")
    parser.add_argument("--traced", action="store_true",
                        help="also run `serve` exporting every trace to a loopback OTLP collector, alternating")
    parser.add_argument("--count-statements", action="store_true",
                        help="count serve's SQL statements by text (tests/benchmarks/statement_counter.py)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy each service process during its runs (pip install py-spy); stacks in the log dir")
    parser.add_argument("--log-level", default="warning",
                        help="the service's LOG_LEVEL (info logs every step of every job, at a cost in CPU)")
    args = parser.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    print(f"== pipeline: {args.jobs} jobs per run, {args.reps} reps, load {os.getloadavg()[0]:.2f}, "
          f"{psutil.cpu_count()} cpus", flush=True)
    s3_port, sim_port = free_port(), free_port()
    s3_url, sim_url = f"http://127.0.0.1:{s3_port}", f"http://127.0.0.1:{sim_port}"
    sim_env = {**os.environ, "SIM_WEBHOOK_SECRET": SIM_SECRET, "SIM_API_KEY": SIM_KEY}
    runs: list[Run] = []
    # Kept after the run, so a job that went wrong can be read about afterwards.
    logs = Path(tempfile.mkdtemp(prefix="wsj-pipeline-logs-"))
    print(f"   service logs (kept): {logs}", flush=True)
    with (
        database.fresh_database("wsj_bench_pipeline") as db_url,
        # moto under uvicorn: connections kept alive, as S3, MinIO and R2 keep them
        # (moto's own server closes each one), for the service and the script alike.
        procs.running([procs.PYTHON, "-m", "tests.benchmarks.s3server", str(s3_port)], ready_url=s3_url) as s3,
        procs.running([procs.PYTHON, "-m", "service", "simulator", "--port", str(sim_port),
                       "--completion-delay", str(args.completion_delay), "--processing-delay", "0.1",
                       "--max-tasks", "100000"], env=sim_env, ready_url=sim_url + "/_sim/stats") as sim,
        WebhookCatcher() as catcher,
        contextlib.ExitStack() as stack,
    ):
        boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id=DEV_ACCESS_KEY,
                     aws_secret_access_key=DEV_SECRET_KEY).create_bucket(Bucket=BUCKET)
        key = create_key_blocking(db_url, "bench")
        meter = database.connect(db_url)
        env_base = {"db": db_url, "s3": s3_url, "sim": sim_url, "meter": meter, "key": key,
                    "pids": {"s3": s3.pid, "sim": sim.pid},
                    "sink": stack.enter_context(otlp_sink.running()) if args.traced else None}
        if args.baseline and args.baseline_schema:
            base_url = stack.enter_context(database.fresh_database("wsj_bench_pipeline_base", database.migrate_checkout(
                args.baseline, _service_env(args, "", s3_url, sim_url, 9), procs.PYTHON)))
            base_meter = stack.enter_context(database.connect(base_url))
            env_base["baseline"] = {"db": base_url, "meter": base_meter, "key": create_key_blocking(base_url, "bench")}
        try:
            _all_runs(args, env_base, scenarios, catcher, key, logs, runs)
        except Exception as exc:  # noqa: BLE001  a crashed run must not hide the figures measured so far
            print(f"STOPPED: {type(exc).__name__}: {exc}", flush=True)
            runs.append(Run(side="crashed", scenario="", jobs=0, cpu_ms=float("nan"), errors=1))
        finally:
            meter.close()
    summary(runs, args.db_delay_ms)
    return 0 if all(r.errors == 0 for r in runs) else 1


def _all_runs(args: argparse.Namespace, env_base: dict[str, Any], scenarios: list[str], catcher: WebhookCatcher,
              key: str, logs: Path, runs: list[Run]) -> None:
    for rep in range(args.reps):
        for scenario in scenarios:
            sides = ["serve", "script"] + (["serve+worker"] if scenario == "burst" and not
                                           args.no_second_process else [])
            if args.baseline:
                sides.insert(1, "baseline")
            if args.db_delay_ms > 0:
                sides.insert(1, "serve+delay")
            if args.traced:
                sides.insert(1, "traced")
            if rep % 2:
                sides.reverse()
            for side in sides:
                if side not in args.sides.split(",") and side not in ("baseline", "serve+delay", "traced"):
                    continue
                with _provider_for(args, env_base["sim"], scenario):
                    run = _run_side(args, env_base, scenario, side, catcher, key, logs, rep)
                runs.append(run)
                print(f"rep {rep + 1}: {_fmt(run)}  (load {os.getloadavg()[0]:.2f})", flush=True)
                for note in run.notes:
                    print(note, flush=True)


def _run_side(args: argparse.Namespace, env_base: dict[str, Any], scenario: str, side: str,
              catcher: WebhookCatcher, key: str, logs: Path, rep: int) -> Run:
    if side == "script":
        return run_script(args, env_base, scenario)
    if side == "serve+delay":
        with delay_proxy.delayed(env_base["db"], args.db_delay_ms) as proxy:
            probe = _round_trips(env_base["db"], proxy.url)
            run = run_service(args, {**env_base, "service_db": proxy.url, "side": side, "proxy": proxy}, scenario,
                              1, catcher, key, logs, f"rep{rep + 1}-serve-delay-{scenario}")
            run.notes.insert(0, probe)
            return run
    if side == "baseline" and "baseline" in env_base:  # --baseline-schema: its own database
        env_base = {**env_base, **env_base["baseline"]}
        key = env_base["key"]
    return run_service(args, env_base, scenario, 2 if side == "serve+worker" else 1,
                       catcher, key, logs, f"rep{rep + 1}-{side.replace('+', '-')}-{scenario}",
                       cwd=args.baseline if side == "baseline" else None,
                       traced=env_base.get("sink") if side == "traced" else None)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
