"""Capacity: what one job costs Postgres and each of the service's processes, for the sizing
table of docs/deploy.md.

    .venv/bin/python -m tests.benchmarks.bench_capacity [--jobs 400] [--idle-seconds 30] [--through-pgbouncer]

Postgres is a cluster of this benchmark's own (the machine's PostgreSQL binaries, initdb
into a temporary directory, a free 127.0.0.1 port, ``pg_stat_statements`` loaded), so the
WAL, transactions and statements counted are this benchmark's alone on a shared machine.
S3 (moto's server), the WaveSpeed simulator (one 1024×1024 image a job, 0.5 s a task) and
the service are real processes on 127.0.0.1; the parent submits and catches the callbacks.

Three runs, each on a fresh service, measured after a first burst (``--warm-up`` jobs) that
opened the pools a running service has open:
- idle: ``serve`` alone, no jobs, ``--idle-seconds``: what a process costs Postgres doing
  nothing (its duties poll every POLL_INTERVAL_SECONDS);
- serve: one ``serve`` (API and duties), ``--jobs`` submitted at once by 32 clients;
- split: ``serve --no-workers`` and one ``worker``, the same burst: which process spends
  the CPU a job costs.

Per job, from the first submit to the last callback: statements (pg_stat_statements'
calls, top level, what the service sends), transactions (pg_stat_database, read after the
service stopped, so every backend has reported), WAL bytes (``pg_current_wal_lsn()``),
CPU of each service process and of Postgres (every process of the cluster: backends,
WAL writer, checkpointer), and jobs/s. The idle run's rates are subtracted from the job
runs' totals ("net"): what a job adds to a process that is there anyway.

Each burst also prints, for the tables a job writes most, its row updates per job and the
share of them that were HOT (heap-only: no new entry in any index, pg_stat_user_tables),
and the statements that took the most of the backends' time (pg_stat_statements, reset
before the burst): where the database's CPU per job goes. ``--runs serve`` skips the split run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import boto3
import psutil
import psycopg

from devtools.devstack import DEV_ACCESS_KEY, DEV_SECRET_KEY, free_port
from service.db.engine import migrate
from service.db.keys import create_key_blocking
from tests.benchmarks import procs
from tests.benchmarks.bench_pipeline import BUCKET, SIM_KEY, SIM_SECRET, _cpu, _service_env, _submit_all
from tests.servers import WebhookCatcher

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DB = "capacity"


@dataclass
class Counters:
    statements: int
    wal_bytes: int
    service_cpu: dict[str, float]  # process name → CPU seconds
    pg_cpu: float
    at: float


# The tables whose updates per job and HOT share a burst reports.
HOT_TABLES = ("jobs", "deliveries", "job_outputs", "job_metadata", "provider_slots", "provider_rate_tokens")
TOP_STATEMENTS = 12


@dataclass
class Result:
    run: str
    jobs: int
    seconds: float
    statements: float  # per job (per second for the idle run)
    transactions: float
    wal_bytes: float
    pg_cpu_ms: float
    service_cpu_ms: dict[str, float]
    jobs_per_s: float
    updates: dict[str, tuple[float, float]] | None = None  # table → (updates per job, HOT share)
    top: list[tuple[str, float, float, float]] | None = None  # (statement, calls, exec ms, WAL bytes) per job


@contextlib.contextmanager
def own_postgres() -> Iterator[tuple[str, psutil.Process]]:
    """A Postgres cluster of our own; yields its URL (database ``capacity``, migrated) and
    its postmaster. Run as ``postgres`` when we are root (initdb refuses root)."""
    data = Path(tempfile.mkdtemp(prefix="wsj-capacity-pg-"))
    as_user = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(data, "postgres", "postgres")
    subprocess.run([*as_user, str(PG_BIN / "initdb"), "-D", str(data / "pg"), "-U", "postgres", "--auth=trust",
                    "-E", "UTF8"], check=True, capture_output=True, timeout=120)
    port = free_port()
    server = procs.spawn([*as_user, str(PG_BIN / "postgres"), "-D", str(data / "pg"), "-p", str(port),
                          "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={data}",
                          "-c", "shared_preload_libraries=pg_stat_statements", "-c", "pg_stat_statements.track=top",
                          "-c", "max_connections=300"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE {DB}")
                    conn.execute("CREATE EXTENSION pg_stat_statements")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        url = f"postgresql://postgres@127.0.0.1:{port}/{DB}"
        migrate(url)
        yield url, psutil.Process(server.pid)  # setpriv and the launcher exec'd into the postmaster
    finally:
        procs.stop(server, grace=30)
        shutil.rmtree(data, ignore_errors=True)


def read(meter: psycopg.Connection[Any], postmaster: psutil.Process, service: dict[str, int]) -> Counters:
    statements = meter.execute(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
        "WHERE d.datname = %s", (DB,)).fetchone()
    wal = meter.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')").fetchone()
    assert statements and wal
    return Counters(int(statements[0]), int(wal[0]), {name: _cpu([pid]) for name, pid in service.items()},
                    _cluster_cpu(postmaster), time.monotonic())


def _cluster_cpu(postmaster: psutil.Process) -> float:
    """CPU seconds of the whole cluster so far: the postmaster, its live children, and the
    children it has reaped (a backend whose client went away)."""
    own = postmaster.cpu_times()
    return own.user + own.system + own.children_user + own.children_system + _cpu(
        [p.pid for p in postmaster.children()])


def table_updates(url: str) -> dict[str, tuple[int, int]]:
    """Rows updated and rows HOT-updated so far, per table of HOT_TABLES (read in the
    database itself: pg_stat_user_tables shows only the current database's tables)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                            "WHERE relname = ANY(%s)", (list(HOT_TABLES),)).fetchall()
    return {name: (int(upd), int(hot)) for name, upd, hot in rows}


def top_statements(meter: psycopg.Connection[Any], jobs: int) -> list[tuple[str, float, float, float]]:
    """The statements with the most execution time since the last reset, per job."""
    rows = meter.execute(
        "SELECT regexp_replace(left(s.query, 400), '\\s+', ' ', 'g'), s.calls, s.total_exec_time, s.wal_bytes "
        "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s "
        "ORDER BY s.total_exec_time DESC LIMIT %s", (DB, TOP_STATEMENTS)).fetchall()
    return [(q, calls / jobs, ms / jobs, float(wal) / jobs) for q, calls, ms, wal in rows]


def transactions(meter: psycopg.Connection[Any]) -> int:
    row = meter.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                        (DB,)).fetchone()
    return int(row[0]) if row else 0


def measure(args: argparse.Namespace, env: dict[str, Any], run: str, jobs: int) -> Result:
    """One run on a fresh service: ``jobs`` at once (0: sit idle for --idle-seconds)."""
    port = free_port()
    service_env = _service_env(args, env["db"], env["s3"], env["sim"], port)
    # Provider limits above what the service reaches here (100 jobs/s), so its own costs
    # are measured; not bench_pipeline's 1,000,000 a minute, whose rate tokens are a
    # million-row insert at start (200 MB of WAL).
    service_env.update(PROVIDER_MAX_IN_FLIGHT="1000", PROVIDER_MAX_PER_MINUTE="6000", **env["route"])
    meter, postmaster = env["meter"], env["postmaster"]
    serve_args = ["serve", "--host", "127.0.0.1", "--port", str(port)] + (["--no-workers"] if run == "split" else [])
    logs: Path = env["logs"]
    with contextlib.ExitStack() as stack:
        serve = stack.enter_context(procs.running([procs.PYTHON, "-m", "service", *serve_args], env=service_env,
                                                  ready_url=f"http://127.0.0.1:{port}/healthz",
                                                  log_path=logs / f"{run}-serve.log"))
        pids = {"serve": serve.pid, **env["pooler"]}
        if run == "split":
            worker = stack.enter_context(procs.running([procs.PYTHON, "-m", "service", "worker"], env=service_env,
                                                       log_path=logs / f"{run}-worker.log"))
            pids["worker"] = worker.pid
        time.sleep(args.settle_seconds)  # start-up (pools, the first claims, autovacuum after it) is not charged
        if jobs:  # a first burst, not charged either: a running service's pools are already open
            burst(args, env, port, min(jobs, args.warm_up))
        if jobs:
            meter.execute("SELECT pg_stat_statements_reset()")
        tx0, upd0, before = transactions(meter), table_updates(env["db"]), read(meter, postmaster, pids)
        if jobs:
            burst(args, env, port, jobs)
        else:
            time.sleep(args.idle_seconds)
        after = read(meter, postmaster, pids)
    time.sleep(1.0)  # the service's backends ended with it and reported their counters
    tx = transactions(meter) - tx0
    per = jobs or (after.at - before.at)
    upd1 = table_updates(env["db"])
    updates = {t: ((upd1[t][0] - upd0[t][0]) / per,
                   (upd1[t][1] - upd0[t][1]) / max(upd1[t][0] - upd0[t][0], 1)) for t in HOT_TABLES if t in upd1}
    return Result(run=run, jobs=jobs, seconds=round(after.at - before.at, 2),
                  statements=(after.statements - before.statements) / per, transactions=tx / per,
                  wal_bytes=(after.wal_bytes - before.wal_bytes) / per,
                  pg_cpu_ms=(after.pg_cpu - before.pg_cpu) / per * 1000,
                  service_cpu_ms={n: (after.service_cpu[n] - before.service_cpu[n]) / per * 1000 for n in pids},
                  jobs_per_s=jobs / (after.at - before.at) if jobs else 0.0,
                  updates=updates, top=top_statements(meter, jobs) if jobs else None)


def burst(args: argparse.Namespace, env: dict[str, Any], port: int, jobs: int) -> None:
    """``jobs`` submitted at once by 32 clients; back when every callback has arrived."""
    catcher = env["catcher"]
    catcher.clear()
    ids, _ = _submit_all(f"http://127.0.0.1:{port}", env["key"], jobs, 0.0, catcher.url("/cb"))
    wanted = set(ids)
    catcher.wait_for(len(ids), timeout=args.timeout, predicate=lambda r: r.json()["data"]["id"] in wanted)


def net(result: Result, idle: Result) -> Result:
    """``result`` less what its one polling process (``serve``, or ``worker`` in the split
    run) costs doing nothing over the same time (the idle run's rates)."""
    share = result.seconds / result.jobs  # idle seconds charged to each job
    poller = "worker" if "worker" in result.service_cpu_ms else "serve"
    return Result(
        run=result.run + " net", jobs=result.jobs, seconds=result.seconds,
        statements=result.statements - idle.statements * share,
        transactions=result.transactions - idle.transactions * share,
        wal_bytes=result.wal_bytes - idle.wal_bytes * share,
        pg_cpu_ms=result.pg_cpu_ms - idle.pg_cpu_ms * share,
        service_cpu_ms={n: v - (idle.service_cpu_ms["serve"] * share if n == poller else 0.0)
                        for n, v in result.service_cpu_ms.items()},
        jobs_per_s=result.jobs_per_s)


def show(result: Result) -> None:
    unit = "s" if result.jobs == 0 else "job"
    cpu = ", ".join(f"{name} {ms:.1f} ms" for name, ms in result.service_cpu_ms.items())
    print(f"{result.run:<12} per {unit}: {result.statements:7.1f} statements  {result.transactions:6.1f} transactions  "
          f"{result.wal_bytes / 1024:7.1f} KiB WAL  postgres CPU {result.pg_cpu_ms:6.1f} ms  service CPU {cpu}"
          + (f"  {result.jobs_per_s:.1f} jobs/s over {result.seconds:.0f} s" if result.jobs else ""), flush=True)
    if result.jobs and result.updates and not result.run.endswith(" net"):
        print("   updates per job (HOT share): " + ", ".join(
            f"{t} {n:.2f} ({hot:.0%})" for t, (n, hot) in result.updates.items() if n), flush=True)
    if result.jobs and result.top and not result.run.endswith(" net"):
        print("   statements by execution time, per job:  calls      ms  WAL bytes", flush=True)
        for query, calls, ms, wal in result.top:
            print(f"   {calls:6.2f} {ms:7.3f} {wal:9.0f}  {query[:150]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=400, help="jobs per burst")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--settle-seconds", type=float, default=10.0, help="after a service starts, before measuring")
    parser.add_argument("--warm-up", type=int, default=100, help="jobs of a first burst, not measured")
    parser.add_argument("--timeout", type=float, default=300.0, help="longest wait for one burst's callbacks")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--runs", default="serve,split", help="which bursts, of serve and split")
    parser.add_argument("--through-pgbouncer", action="store_true",
                        help="the service behind PgBouncer in transaction mode (DATABASE_POOL_MODE=transaction)")
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=procs.ROOT).stdout.strip()
    print(f"== capacity: {args.jobs} jobs a burst, {time.strftime('%Y-%m-%d')}, commit {commit}, "
          f"load {os.getloadavg()[0]:.2f}, {psutil.cpu_count()} cpus", flush=True)
    s3_port, sim_port = free_port(), free_port()
    s3_url, sim_url = f"http://127.0.0.1:{s3_port}", f"http://127.0.0.1:{sim_port}"
    sim_env = {**os.environ, "SIM_WEBHOOK_SECRET": SIM_SECRET, "SIM_API_KEY": SIM_KEY}
    logs = Path(tempfile.mkdtemp(prefix="wsj-capacity-logs-"))
    print(f"   service logs (kept): {logs}", flush=True)
    with (
        own_postgres() as (db_url, postmaster),
        procs.running([procs.PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)], ready_url=s3_url),
        procs.running([procs.PYTHON, "-m", "service", "simulator", "--port", str(sim_port), "--completion-delay",
                       "0.5", "--processing-delay", "0.1", "--max-tasks", "100000"], env=sim_env,
                      ready_url=sim_url + "/_sim/stats"),
        WebhookCatcher() as catcher,
        psycopg.connect(db_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as meter,
    ):
        boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id=DEV_ACCESS_KEY,
                     aws_secret_access_key=DEV_SECRET_KEY).create_bucket(Bucket=BUCKET)
        pooled = contextlib.ExitStack()
        env = {"db": db_url, "s3": s3_url, "sim": sim_url, "meter": meter, "postmaster": postmaster,
               "catcher": catcher, "logs": logs, "key": create_key_blocking(db_url, "capacity"),
               "route": {}, "pooler": {}}
        if args.through_pgbouncer:
            env.update(through_pgbouncer(pooled, meter, db_url))
        with pooled:
            results = runs(args, env)
    print("BENCH_JSON " + json.dumps([asdict(r) for r in results]))
    return 0


def through_pgbouncer(stack: contextlib.ExitStack, meter: psycopg.Connection[Any], db_url: str) -> dict[str, Any]:
    """PgBouncer (tests/pgbouncer.py: transaction mode) in front of the cluster, and the
    service's settings for it; its CPU is counted beside the service's."""
    from tests.pgbouncer import PgBouncer

    bouncer = stack.enter_context(PgBouncer.start(db_url, pool_size=20))
    meter.execute(f"ALTER DATABASE {DB} SET jit = off")  # as docs/deploy.md asks behind a pooler
    return {"route": {"DATABASE_URL": bouncer.url(db_url), "DATABASE_DIRECT_URL": db_url,
                      "DATABASE_POOL_MODE": "transaction"},
            "pooler": {"pgbouncer": bouncer.process.pid}}


def runs(args: argparse.Namespace, env: dict[str, Any]) -> list[Result]:
    """The idle run, then each burst, and each less the idle cost."""
    idle = measure(args, env, "idle", 0)
    show(idle)
    results = [idle]
    for run in args.runs.split(","):
        result = measure(args, env, run, args.jobs)
        show(result)
        show(net(result, idle))
        results += [result, net(result, idle)]
    return results


if __name__ == "__main__":
    raise SystemExit(main())
