"""``bench_receiver --compare-rev REV``: HEAD's receiver beside an earlier revision's, in
the same run, under the same load: the goal "no slower than an earlier revision" is
only judged from figures of both taken side by side.

REV is checked out into a temporary git worktree and served from there with this
checkout's venv: the working directory and PYTHONPATH point at REV's tree, so
``python -m service`` imports REV's package, not the editable install of HEAD. Each side
gets its own database, migrated by its own ``migrate`` and seeded with the same jobs.
Each round runs HEAD's receiver, REV's receiver and the bare app
(tests/benchmarks/bare_receiver.py) one after the other under the same wrk load, the
order rotating per round so a drift of the machine's load favours no side; HEAD and REV
get the same webhook stream (same seed). Printed: every side of every round, each round's
HEAD/REV throughput ratio, and medians. HEAD's database is verified as in the main
benchmark; REV's by what holds in every schema (each accepted webhook-id stored, each
job in the status its event asks for).

With ``--traced`` a fourth side runs HEAD again, exporting every trace over OTLP/HTTP to
a loopback collector (tests/benchmarks/otlp_sink.py): the cost of tracing on, beside off.
HEAD's jobs are seeded with a trace context each (as admission writes it), so each
webhook is a span of its job's trace on both HEAD sides.

``--profile FILE`` runs py-spy on each service side in every round (collapsed stacks in
FILE.<side>.<round>; py-spy's own CPU then competes with the sides, so a profiled run's
figures are for reading the stacks, not for the table).

``python -m tests.benchmarks.bench_receiver --compare-rev 5e763c9~1 [--duration 15] [--rounds 3] [--traced]``
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]  # comes with the dev extra

from devtools.devstack import embedded_s3
from tests.benchmarks import database, loadgen, otlp_sink, procs, wrk
from tests.benchmarks.bench_receiver import (
    Plan,
    Sent,
    _fmt,
    bare_app,
    profiling,
    python_sent,
    raw_request,
    seed_jobs,
    serve,
    serve_env,
    verify,
    wrk_phase,
    wrk_sent,
)

WARM_HOOKS = 3000


@contextlib.contextmanager
def checkout(rev: str) -> Iterator[tuple[Path, str]]:
    """REV's tree in a temporary git worktree (removed afterwards), and its commit."""
    sha = subprocess.run(["git", "-C", str(procs.ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                         check=True, capture_output=True, text=True).stdout.strip()
    parent = Path(tempfile.mkdtemp(prefix="bench_rev_"))
    path = parent / "tree"
    subprocess.run(["git", "-C", str(procs.ROOT), "worktree", "add", "--detach", str(path), sha],
                   check=True, capture_output=True)
    try:
        yield path, sha
    finally:
        subprocess.run(["git", "-C", str(procs.ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)
        shutil.rmtree(parent, ignore_errors=True)


def migrate_with(tree: Path, s3_endpoint: str) -> Callable[[str], None]:
    """REV's own ``migrate`` command, run from its tree (its migrations, its schema)."""
    return database.migrate_checkout(tree, serve_env("", s3_endpoint, 9, 2), procs.PYTHON)


def imported_from(tree: Path) -> str:
    """Where ``service`` comes from when run as REV's service is (proof it is REV's code)."""
    done = subprocess.run([procs.PYTHON, "-c", "import service; print(service.__file__)"], cwd=tree,
                          env={**os.environ, "PYTHONPATH": str(tree)}, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def verify_basic(url: str, phases: list[Sent]) -> list[str]:
    """What holds whatever the revision: accepted webhook-ids stored, nothing unsent
    stored, each job in the status its event asks for."""
    accepted = [h for s in phases for h in s.accepted]
    sent = {h.webhook_id for s in phases for h in s.accepted + s.unknown + [h for h, _ in s.rejected]}
    problems: list[str] = []
    with database.connect(url) as conn:
        stored = {r[0] for r in conn.execute("SELECT webhook_id FROM webhook_events")}
        missing = {h.webhook_id for h in accepted} - stored
        if missing:
            problems.append(f"{len(missing)} accepted webhook-ids are not stored, e.g. {sorted(missing)[:3]}")
        if stored - sent:
            problems.append(f"{len(stored - sent)} stored webhook-ids were never sent")
        for kind, status in (("completed", "storing"), ("failed", "failed")):
            want = sorted({h.job_id for h in accepted if h.kind == kind})
            row = conn.execute("SELECT count(*) FROM jobs WHERE id = ANY(%s) AND status = %s",
                               (want, status)).fetchone()
            if row is None or row[0] != len(want):
                problems.append(f"{len(want)} jobs got an accepted '{kind}' event but {row and row[0]} are '{status}'")
    return problems


@dataclass
class Side:
    name: str
    host: str
    proc: psutil.Process
    url: str  # its database (the bare app's: HEAD's, only to measure Postgres backends)
    plan: Plan | None  # None: the bare app, which keeps no state (wrk wraps round a short plan)
    phases: list[Sent]


@dataclass
class Figure:
    rps: float
    p99: float
    cpu: float  # the side's process, in cores
    pg: float = 0.0  # its database's Postgres backends, in cores

    def cpu_ms(self) -> float:
        """The side's CPU per webhook (ms): on a busy machine throughput measures the
        share of the cores a side got as much as its cost; this is its cost."""
        return self.cpu * 1000 / self.rps if self.rps else math.nan

    def pg_ms(self) -> float:
        return self.pg * 1000 / self.rps if self.rps else math.nan


def rounds(args: argparse.Namespace, tmp: Path, sides: list[Side]) -> list[dict[str, Figure]]:
    wrk_len = math.ceil(args.max_rate_guess * args.duration / args.connections)
    out: list[dict[str, Figure]] = []
    for n in range(args.rounds):
        order = sides[n % len(sides):] + sides[:n % len(sides)]
        figures: dict[str, Figure] = {}
        for side in order:
            plan = side.plan or Plan(seed=3)
            streams = [plan.stream(wrk_len if side.plan else 2000) for _ in range(args.connections)]
            spied = Path(f"{args.profile}.{side.name.split()[-1]}.{n + 1}") if args.profile and side.plan else None
            with profiling(spied, side.proc.pid, args.duration):
                result, cpu, pg, busy = wrk_phase(args, tmp / f"wrk_{side.name}_{n}", streams,
                                                  f"http://{side.host}", side.proc, side.url)
            errors = sum(result.errors.values())
            if side.plan is not None:
                sent = wrk_sent(streams, result)
                side.phases.append(sent)
                errors += len(sent.rejected)
            lat = result.latency_ms
            figures[side.name] = Figure(result.rps, lat["p99"], cpu, pg)
            print(f"round {n + 1} {side.name:>10}: {_fmt(result.rps, 0)} webhooks/s; latency p50 "
                  f"{_fmt(lat['p50'], 2)} / p99 {_fmt(lat['p99'], 2)} ms; errors {errors}; CPU in cores: "
                  f"{side.name} {cpu:.2f}, postgres backends {pg:.2f}, machine {busy:.2f}; "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
        out.append(figures)
    return out


def summarize(results: list[dict[str, Figure]], head: str, rev: str) -> None:
    ratios = [r[head].rps / r[rev].rps for r in results if r[rev].rps]
    def med(name: str, field: str) -> float:
        return statistics.median(getattr(r[name], field) for r in results)
    print(f"same run, {len(results)} rounds: {head}/{rev} throughput ratio per round "
          + ", ".join(f"{x:.2f}" for x in ratios)
          + f"; median {head} {_fmt(med(head, 'rps'), 0)}/s (p99 {_fmt(med(head, 'p99'), 1)} ms, "
            f"CPU {med(head, 'cpu'):.2f}), {rev} {_fmt(med(rev, 'rps'), 0)}/s (p99 {_fmt(med(rev, 'p99'), 1)} ms, "
            f"CPU {med(rev, 'cpu'):.2f}), bare {_fmt(med('bare', 'rps'), 0)}/s; median ratio {head}/{rev} "
            f"{statistics.median(ratios):.2f}; of the bare app: {head} "
            f"{statistics.median(r[head].rps / r['bare'].rps for r in results):.2f}, {rev} "
            f"{statistics.median(r[rev].rps / r['bare'].rps for r in results):.2f}", flush=True)
    cpu = [r[head].cpu_ms() / r[rev].cpu_ms() for r in results]
    print(f"same run: CPU per webhook {head}/{rev} per round " + ", ".join(f"{x:.2f}" for x in cpu)
          + f"; median {statistics.median(cpu):.2f} ({head} {statistics.median(r[head].cpu_ms() for r in results):.3f} "
            f"ms, {rev} {statistics.median(r[rev].cpu_ms() for r in results):.3f} ms; Postgres backends "
            f"{statistics.median(r[head].pg_ms() for r in results):.3f} and "
            f"{statistics.median(r[rev].pg_ms() for r in results):.3f} ms)", flush=True)


# A trace context per seeded job, as admission stores it (revision 0016).
SEED_TRACES = ("UPDATE jobs SET traceparent = '00-' || md5(id) || '-' || substr(md5(id || 'admit'), 1, 16) || '-01' "
               "WHERE traceparent IS NULL")


def main(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(otlp_sink.running()) if args.traced else None
        return _compare(args, sink)


def _compare(args: argparse.Namespace, sink: str | None) -> int:
    if not wrk.available():
        print("wrk is not installed (apt-get install -y wrk): --compare-rev needs it")
        return 2
    wrk_len = math.ceil(args.max_rate_guess * args.duration / args.connections)
    n_jobs = math.ceil((wrk_len * args.connections * args.rounds + WARM_HOOKS) * 0.95) + 100
    head_sha = subprocess.run(["git", "-C", str(procs.ROOT), "describe", "--always", "--dirty", "--abbrev=7"],
                              check=True, capture_output=True, text=True).stdout.strip()
    logs = Path(tempfile.mkdtemp(prefix="bench_receiver_compare_"))
    with tempfile.TemporaryDirectory(prefix="bench_receiver_") as tmp_name, \
            checkout(args.compare_rev) as (tree, rev_sha), embedded_s3() as s3_endpoint, \
            database.fresh_database("wsj_bench_head") as head_url, \
            database.fresh_database("wsj_bench_rev", migrate_with(tree, s3_endpoint)) as rev_url, \
            database.fresh_database("wsj_bench_traced") as traced_url:
        head, rev, traced = f"HEAD {head_sha}", f"REV {rev_sha[:7]}", "HEAD traced"
        print(f"== receiver, {head} beside {rev} ({args.compare_rev}) and the bare app: {os.cpu_count()} CPUs, "
              f"load {os.getloadavg()[0]:.2f}; {args.duration:g} s per phase, {args.rounds} rounds", flush=True)
        for url in (head_url, rev_url, traced_url):
            seed_jobs(url, n_jobs)
        for url in (head_url, traced_url):
            with database.connect(url) as conn:
                conn.execute(SEED_TRACES)
        print(f"seeded {n_jobs:,} jobs in 'submitted' in each database; {rev} runs {imported_from(tree)}",
              flush=True)
        if not imported_from(tree).startswith(str(tree)):
            print(f"{rev} would not import its own tree's service package: no comparison")
            return 2
        with serve(head_url, s3_endpoint, args.pool_size, logs / "head.log") as (head_port, head_proc), \
                serve(rev_url, s3_endpoint, args.pool_size, logs / "rev.log", checkout=tree) as (rev_port, rev_proc), \
                contextlib.ExitStack() as stack, bare_app() as (bare_port, bare_proc):
            sides = [Side(head, f"127.0.0.1:{head_port}", head_proc, head_url, Plan(seed=2), []),
                     Side(rev, f"127.0.0.1:{rev_port}", rev_proc, rev_url, Plan(seed=2), []),
                     Side("bare", f"127.0.0.1:{bare_port}", bare_proc, head_url, None, [])]
            if sink is not None:
                port, proc = stack.enter_context(serve(traced_url, s3_endpoint, args.pool_size, logs / "traced.log",
                                                       extra_env=otlp_sink.traced_env(sink)))
                sides.insert(2, Side(traced, f"127.0.0.1:{port}", proc, traced_url, Plan(seed=2), []))
            for side in sides:
                if side.plan is None:
                    continue
                hooks = side.plan.stream(WARM_HOOKS)
                res = loadgen.run("127.0.0.1", int(side.host.rsplit(":", 1)[1]),
                                  [raw_request(h, side.host) for h in hooks], connections=16, duration=3.0)
                side.phases.append(python_sent(hooks, res))
            results = rounds(args, Path(tmp_name), sides)
            summarize(results, head, rev)
            if sink is not None:
                summarize(results, traced, head)
                print(f"the collector received {httpx.get(sink + '/count', timeout=5).json()}", flush=True)
        problems = [f"{head}: {p}" for p in verify(head_url, sides[0].phases, n_jobs)[0]]
        problems += [f"{rev}: {p}" for p in verify_basic(rev_url, sides[1].phases)]
        if sink is not None:
            problems += [f"{traced}: {p}" for p in verify(traced_url, sides[2].phases, n_jobs)[0]]
    if problems:
        print("VERIFY FAILED:\n  " + "\n  ".join(problems) + f"\nservice logs: {logs}")
        return 1
    print("verified with SQL: every accepted webhook-id is stored on both sides, each job in the status its "
          "event asks for (HEAD: every check of the main benchmark)")
    shutil.rmtree(logs, ignore_errors=True)
    return 0
