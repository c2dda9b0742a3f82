"""Drive ``wrk`` (Debian's package) with pre-signed requests, one connection per thread.

One connection per wrk thread keeps answers in send order, so receiver.lua can say
exactly which requests (by position in each thread's file) were accepted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.benchmarks import procs

SCRIPT = Path(__file__).with_name("receiver.lua")


def available() -> bool:
    return shutil.which("wrk") is not None


@dataclass(frozen=True)
class WrkRequest:
    path: str
    headers: tuple[str, str, str]  # webhook-id, webhook-timestamp, webhook-signature
    body: bytes


@dataclass
class WrkThread:
    tid: int
    available: int
    sent: int
    answered: int
    ok: int
    bad: dict[int, int]  # 1-based position → HTTP status


@dataclass
class WrkResult:
    requests: int
    seconds: float
    errors: dict[str, int]
    latency_ms: dict[str, float]
    threads: list[WrkThread]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def wrapped(self) -> bool:
        """A thread ran out of pre-signed requests and started over (duplicates)."""
        return any(t.sent > t.available for t in self.threads)


def write_plans(directory: Path, plans: Sequence[Sequence[WrkRequest]]) -> None:
    for tid, plan in enumerate(plans):
        with open(directory / f"requests.{tid}.tsv", "wb") as out:
            for r in plan:
                assert b"\t" not in r.body and b"\n" not in r.body
                out.write("\t".join((r.path, *r.headers)).encode() + b"\t" + r.body + b"\n")


def run(url: str, directory: Path, *, threads: int, duration: float, timeout: float = 10.0) -> WrkResult:
    argv = ["wrk", "-t", str(threads), "-c", str(threads), "-d", f"{duration:g}s", "--timeout", f"{timeout:g}s",
            "-s", str(SCRIPT), url, "--", str(directory)]
    proc = procs.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=duration + 60)
    finally:
        procs.stop(proc)
    line = next((ln for ln in out.decode().splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary (exit {proc.returncode}): {err.decode()[-2000:]}")
    data = json.loads(line[len("BENCH_JSON "):])
    parsed = []
    for t in data["threads"]:
        bad = {}
        for item in filter(None, t["bad_at"].split(",")):
            pos, _, status = item.partition(":")
            bad[int(pos)] = int(status)
        parsed.append(WrkThread(t["tid"], t["available"], t["sent"], t["answered"], t["ok"], bad))
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        errors=data["errors"],
        latency_ms={k: v / 1000 for k, v in data["latency_us"].items()},
        threads=sorted(parsed, key=lambda t: t.tid),
    )
