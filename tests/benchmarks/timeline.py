"""Where a job's time goes, for bench_pipeline: a per-job timeline from what the service
already records, and what Postgres's backends wait on meanwhile.

- ``job_timelines``: per job, the moments of its path — the provider's webhook sent (the
  simulator's own clock, same machine), received (``webhook.received``), the copy into S3
  (``output.stored``, whose detail says how long the copy itself took when the service
  records it), ``completed``, the callback's attempt (``callback.attempt``, with its
  latency) and the backend receiving it (the catcher) — and the segments between them,
  printed as p50 / p90 / p99 per segment by ``print_breakdown``.
- ``WaitSampler``: a thread that reads ``pg_stat_activity`` every ``interval`` seconds
  during a run and counts, per (state, wait event), how many of the database's client
  backends were there on average; for lock waits it also names the statement waiting and
  the relation whose lock it waits for, so "which row does every job queue on" is read
  off the report.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.benchmarks.loadgen import percentile

SEGMENTS = (
    # (name, from, to): each a moment of the timeline below
    ("webhook sent → received", "sent", "received"),
    ("received → copy begins (storer's wait)", "received", "copy_begins"),
    ("copy (download, S3, thumbnail)", "copy_begins", "stored"),
    ("stored → completed", "stored", "completed"),
    ("completed → callback POST (deliverer's wait)", "completed", "callback_posted"),
    ("callback POST → backend has it", "callback_posted", "caught"),
    ("webhook sent → backend has it", "sent", "caught"),
)

_EVENTS = """
SELECT job_id,
       min(at) FILTER (WHERE type = 'webhook.received'),
       max(at) FILTER (WHERE type = 'output.stored'),
       max((detail->>'copy_seconds')::float) FILTER (WHERE type = 'output.stored'),
       min(at) FILTER (WHERE type = 'status.changed' AND detail->>'to' = 'completed'),
       min(at) FILTER (WHERE type = 'callback.attempt'),
       min((detail->>'latency_ms')::float) FILTER (WHERE type = 'callback.attempt')
FROM job_events WHERE job_id = ANY(%s) GROUP BY job_id
"""


def job_timelines(meter: Any, sim_url: str, ids: list[str], caught: dict[str, float]) -> list[dict[str, float]]:
    """One dict of moments (epoch seconds) per job that went the whole way."""
    tasks = httpx.get(sim_url + "/_sim/tasks", timeout=60).json()
    sent_by_job: dict[str, float] = {}
    for task in tasks:
        url = task.get("webhook_url") or ""
        finals = [d["sent_at"] for d in task.get("deliveries", []) if d.get("kind") == "final" and d.get("sent_at")]
        if url and finals:
            sent_by_job[url.rstrip("/").rsplit("/", 1)[-1].split("?")[0]] = min(finals)
    out = []
    for job_id, received, stored, copy_s, completed, attempt_at, attempt_ms in meter.execute(_EVENTS, (ids,)):
        if not (received and stored and completed and attempt_at) or job_id not in caught:
            continue
        moments = {"received": received.timestamp(), "stored": stored.timestamp(),
                   "completed": completed.timestamp(), "caught": caught[job_id]}
        # The attempt's event is written after its answer: the POST began its latency earlier.
        moments["callback_posted"] = attempt_at.timestamp() - (attempt_ms or 0.0) / 1000
        if job_id in sent_by_job:
            moments["sent"] = sent_by_job[job_id]
        if copy_s is not None:
            moments["copy_begins"] = moments["stored"] - copy_s
        out.append(moments)
    return out


def breakdown(timelines: list[dict[str, float]]) -> dict[str, list[float]]:
    """Segment name → sorted durations (seconds) over the jobs that have both ends."""
    result: dict[str, list[float]] = {}
    for name, start, end in SEGMENTS:
        values = sorted(t[end] - t[start] for t in timelines if start in t and end in t)
        if values:
            result[name] = values
    return result


def print_breakdown(segments: dict[str, list[float]], indent: str = "  ") -> None:
    for name, values in segments.items():
        print(f"{indent}{name:<46} p50 {percentile(values, 50) * 1000:7.0f}  p90 "
              f"{percentile(values, 90) * 1000:7.0f}  p99 {percentile(values, 99) * 1000:7.0f} ms  "
              f"(n={len(values)})", flush=True)


_ACTIVITY = """
SELECT a.state, coalesce(a.wait_event_type || ':' || a.wait_event, 'CPU'),
       left(regexp_replace(a.query, '\\s+', ' ', 'g'), 90),
       (SELECT string_agg(DISTINCT coalesce(l.relation::regclass::text, l.locktype), ',')
        FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted)
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'
  AND a.state IS DISTINCT FROM 'idle'
"""


@dataclass
class WaitSampler:
    """Samples the database's busy client backends until ``stop``; see the module's doc."""

    meter_url: str
    interval: float = 0.025
    samples: int = 0
    states: Counter[str] = field(default_factory=Counter)
    locks: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> WaitSampler:
        from tests.benchmarks import database  # the benchmark's own connection helper

        conn = database.connect(self.meter_url)

        def run() -> None:
            with conn:
                while not self._stop.wait(self.interval):
                    rows = conn.execute(_ACTIVITY).fetchall()
                    self.samples += 1
                    for state, wait, query, relation in rows:
                        self.states[f"{state} {wait}"] += 1
                        if wait.startswith("Lock:"):
                            self.locks[f"{wait} on {relation}: {query}"] += 1
                        elif state == "idle in transaction":  # the statement before the wait
                            self.locks[f"idle in transaction after: {query}"] += 1

        self._thread = threading.Thread(target=run, name="pg-wait-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def report(self, indent: str = "  ") -> None:
        n = max(self.samples, 1)
        print(f"{indent}postgres backends, average over {self.samples} samples "
              f"({self.interval * 1000:.0f} ms apart), by state and wait:", flush=True)
        for key, count in self.states.most_common(10):
            print(f"{indent}  {count / n:5.2f}  {key}", flush=True)
        for key, count in self.locks.most_common(12):
            print(f"{indent}  {count / n:5.2f}  {key}", flush=True)


def sampled(meter_url: str, enabled: bool) -> WaitSampler | None:
    return WaitSampler(meter_url).start() if enabled else None
