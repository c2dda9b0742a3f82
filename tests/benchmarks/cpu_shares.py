"""Where the machine's CPU went during one benchmark phase, for bench_pipeline.

The service shares two cores with Postgres, the S3 emulator, the simulator, the callback
catcher and the load generator (the benchmark's own process), and with whatever else runs
on the machine. Whether a second service process can add capacity depends on what is left:
``Shares`` reads, at the start and the end of a phase, the CPU time of each named group of
processes and the whole machine's busy and idle time (``/proc/stat`` through psutil), so a
phase reports per job what each part cost, how many cores were in use and how much stayed
idle. "postgres, other" is every Postgres process that is not a backend of the
benchmark's database (the WAL writer, the checkpointer, other databases' sessions);
"unaccounted" is the machine's busy time nobody named here took (other work on the
machine, kernel threads).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import psutil

# Machine-wide busy time: everything but idle and iowait (steal is time the hypervisor
# gave to another guest: the core was not ours, so it counts as busy, not as idle).
_IDLE = ("idle", "iowait")


def _process_cpu(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0
    return float(times.user + times.system)


def _runqueue_wait(pid: int) -> float:
    """Seconds the threads of ``pid`` (those alive now) spent runnable, waiting for a core
    (the second field of /proc/PID/task/TID/schedstat): a process that is slow because the
    machine is out of CPU waits here, one that waits for work or I/O does not."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def postgres_pids() -> list[int]:
    """Every process of the Postgres server on this machine (name ``postgres``)."""
    out = []
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "postgres":
            out.append(proc.pid)
    return out


@dataclass
class Reading:
    busy: float  # machine-wide core-seconds busy so far
    idle: float  # machine-wide core-seconds idle so far
    groups: dict[str, dict[int, float]]  # group → pid → CPU seconds of that process so far
    waits: dict[str, dict[int, float]]  # group → pid → seconds runnable without a core so far


@dataclass
class Phase:
    """One phase's figures: CPU seconds per group, machine busy and idle core-seconds."""

    wall: float
    busy: float
    idle: float
    groups: dict[str, float] = field(default_factory=dict)
    waits: dict[str, float] = field(default_factory=dict)  # group → seconds runnable without a core

    def unaccounted(self) -> float:
        return max(0.0, self.busy - sum(self.groups.values()))

    @property
    def idle_share(self) -> float:
        total = self.busy + self.idle
        return self.idle / total if total else float("nan")

    def lines(self, jobs: int) -> list[str]:
        """Per group: ms of CPU per job and cores in use; then the machine's busy and idle."""
        out = []
        for name, cpu in [*self.groups.items(), ("unaccounted", self.unaccounted())]:
            line = f"     {name:<24} {cpu / max(jobs, 1) * 1000:6.1f} ms/job  {cpu / self.wall:4.2f} cores"
            if name in self.waits:
                waited = self.waits[name]
                # waited / wall: how many of its threads were runnable without a core, on average
                line += (f"  waiting for a core {waited / max(jobs, 1) * 1000:6.1f} ms/job, "
                         f"{waited / self.wall:4.2f} threads")
            out.append(line)
        out.append(f"     {'machine busy':<24} {self.busy / max(jobs, 1) * 1000:6.1f} ms/job  "
                   f"{self.busy / self.wall:4.2f} of {psutil.cpu_count()} cores, idle {self.idle_share:.0%} "
                   f"over {self.wall:.1f} s")
        return out


class Shares:
    """``groups``: name → a callable giving that group's pids now (called at each reading:
    Postgres backends and helper processes start and end during a run). A pid named by two
    groups counts in the first only. ``threads``: name → a callable giving native thread
    ids of this very process (the catcher's server thread, say): each is a group of its
    own, and a group holding this process counts it without them."""

    def __init__(self, groups: Mapping[str, Callable[[], Iterable[int]]],
                 threads: Mapping[str, Callable[[], Iterable[int]]] | None = None) -> None:
        self.groups = groups
        self.threads = threads or {}

    def read(self) -> Reading:
        times = psutil.cpu_times()
        idle = sum(getattr(times, name, 0.0) for name in _IDLE)
        # The fields that partition the clock (guest time is already inside user on Linux).
        busy = sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))
        own = {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}
        groups: dict[str, dict[int, float]] = {}
        # Thread groups are keyed by the negated thread id, never a pid.
        for name, ids in self.threads.items():
            groups[name] = {-tid: own.get(tid, 0.0) for tid in ids()}
        in_threads = sum(sum(g.values()) for g in groups.values())
        seen: set[int] = set()
        me = os.getpid()
        waits: dict[str, dict[int, float]] = {}
        for name, pids in self.groups.items():
            groups[name] = {pid: _process_cpu(pid) - (in_threads if pid == me else 0.0)
                            for pid in pids() if pid not in seen}
            waits[name] = {pid: _runqueue_wait(pid) for pid in groups[name]}
            seen.update(groups[name])
        return Reading(busy=busy, idle=idle, groups=groups, waits=waits)

    @staticmethod
    def between(first: Reading, last: Reading, wall: float) -> Phase:
        """What each group used between two readings. A process that appeared meanwhile
        counts from zero; one that ended before the last reading is missing (its time
        shows as unaccounted)."""
        def used(a: dict[str, dict[int, float]], b: dict[str, dict[int, float]]) -> dict[str, float]:
            return {name: sum(max(0.0, v - a.get(name, {}).get(pid, 0.0)) for pid, v in now.items())
                    for name, now in b.items()}

        return Phase(wall=wall, busy=last.busy - first.busy, idle=last.idle - first.idle,
                     groups=used(first.groups, last.groups), waits=used(first.waits, last.waits))
