"""The audit every fault scenario ends with:

* every job is terminal;
* each completed job has exactly its outputs in S3 — one object per index, sha256 and
  size matching the row;
* exactly one upstream task per job (counted at the simulator, by the job id in the
  task's webhook URL);
* exactly one distinct ``job.completed`` webhook-id per completed job with a callback
  URL (counted at the backend's catcher), and no ``job.completed`` for other jobs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg

from tests.servers import WebhookCatcher

TERMINAL = ("completed", "failed", "canceled", "timed_out")


@dataclass
class AuditReport:
    jobs: int
    by_status: dict[str, int]
    upstream_tasks: int
    callbacks: int
    lost: int  # not terminal, or completed without every output stored
    duplicated: int  # extra upstream tasks + extra completed-callback ids, over all jobs
    # For each job that did not complete: its error and its event trail, so a failing
    # fault scenario says why without rerunning it.
    unfinished: dict[str, str] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        text = (f"{self.jobs} jobs {self.by_status}, {self.upstream_tasks} upstream tasks, "
                f"{self.callbacks} callbacks, lost {self.lost}, duplicated {self.duplicated}")
        return text + "".join(f"\n  {job_id}: {why}" for job_id, why in self.unfinished.items())


def submit_many(base_url: str, key: str, n: int, callback_url: str | None, seed: int = 1) -> list[str]:
    """``n`` jobs over both models, 1–2 outputs each; returns their ids."""
    rng = random.Random(seed)
    ids: list[str] = []
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        for i in range(n):
            if rng.random() < 0.5:
                body: dict[str, Any] = {"model": "wavespeed-ai/flux-dev-lora",
                                        "input": {"prompt": f"job {i}", "size": "256*256",
                                                  "num_images": rng.choice([1, 2])}}
            else:
                body = {"model": "wavespeed-ai/flux-krea-dev-lora", "input": {"prompt": f"job {i}", "size": "256*256"}}
            if callback_url:
                body["callback_url"] = callback_url
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
    return ids


def wait_all_terminal(database_url: str, ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            try:
                left = conn.execute(
                    "SELECT status, count(*) FROM jobs WHERE id = ANY(%s) AND status NOT IN "
                    "('completed','failed','canceled','timed_out') GROUP BY status", (ids,)
                ).fetchall()
            except psycopg.OperationalError:
                left = [("database unreachable", -1)]  # a restart in progress: keep waiting
                conn = psycopg.connect(database_url, autocommit=True) if conn.closed else conn
            if not left:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs not terminal after {timeout} s: {left}")
            time.sleep(0.5)


def wait_callbacks(catcher: WebhookCatcher, database_url: str, ids: list[str], timeout: float) -> None:
    """Until every terminal job with a callback URL has had one delivered."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        deadline = time.monotonic() + timeout
        while True:
            pending = conn.execute(
                "SELECT count(*) FROM jobs WHERE id = ANY(%s) AND callback_url IS NOT NULL "
                "AND coalesce(callback_status, '') <> 'delivered'", (ids,)
            ).fetchone()
            if pending and pending[0] == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{pending[0] if pending else '?'} callbacks not delivered after {timeout} s")
            time.sleep(0.5)


def audit(
    database_url: str, s3: Any, bucket: str, prefix: str, simulator_url: str, ids: list[str],
    catcher: WebhookCatcher | None = None,
) -> AuditReport:
    with psycopg.connect(database_url, autocommit=True) as conn:
        jobs = {r[0]: r for r in conn.execute(
            "SELECT id, status, provider_task_id, callback_url FROM jobs WHERE id = ANY(%s)", (ids,)).fetchall()}
        outputs: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for row in conn.execute(
            "SELECT job_id, index, key, size_bytes, sha256, stored_at FROM job_outputs WHERE job_id = ANY(%s)", (ids,)
        ).fetchall():
            outputs[row[0]].append(row)
    assert set(jobs) == set(ids), "a submitted job is missing from the database"
    not_terminal = {i: j[1] for i, j in jobs.items() if j[1] not in TERMINAL}
    unstored = [i for i, j in jobs.items()
                if j[1] == "completed" and (not outputs[i] or any(r[5] is None for r in outputs[i]))]
    lost = len(set(ids) - set(jobs)) + len(not_terminal) + len(unstored)
    assert not not_terminal, f"jobs not terminal: {not_terminal}"

    # S3: exactly one object per output index (thumbnails aside), matching the row.
    for job_id, job in jobs.items():
        listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}{job_id}/")
        keys = {o["Key"] for o in listing.get("Contents", []) if not o["Key"].endswith(".thumb.webp")}
        if job[1] != "completed":
            continue
        rows = outputs[job_id]
        assert rows and all(r[5] is not None for r in rows), f"{job_id} completed with unstored outputs"
        assert keys == {r[2] for r in rows}, f"{job_id}: S3 has {sorted(keys)}, rows say {[r[2] for r in rows]}"
        assert sorted(r[1] for r in rows) == list(range(len(rows)))
        for _, _, key, size, digest, _ in rows:
            data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert len(data) == size and hashlib.sha256(data).hexdigest() == digest, f"{key} differs from its row"

    # Upstream: one task per job, counted by the job id in the webhook URL given upstream.
    tasks = httpx.get(simulator_url + "/_sim/tasks", timeout=10).json()
    per_job = Counter()
    for task in tasks:
        url = task.get("webhook_url") or task.get("webhook") or ""
        job_id = url.rstrip("/").rsplit("/", 1)[-1] if "/webhooks/wavespeed/" in url else None
        if job_id in jobs:
            per_job[job_id] += 1
    doubled = {j: c for j, c in per_job.items() if c > 1}
    duplicated = sum(c - 1 for c in doubled.values())
    assert not doubled, f"jobs submitted more than once: {doubled}"
    for job_id, job in jobs.items():
        if job[1] == "completed":
            assert per_job[job_id] == 1, f"{job_id} completed without exactly one upstream task"

    callbacks = 0
    if catcher is not None:
        completed_ids: dict[str, set[str]] = defaultdict(set)
        for request in catcher.snapshot():
            event = json.loads(request.body)
            callbacks += 1
            if event["type"] == "job.completed":
                completed_ids[event["data"]["id"]].add(request.headers["webhook-id"])
        duplicated += sum(max(0, len(v) - 1) for v in completed_ids.values())
        for job_id, job in jobs.items():
            if job[3] is None:
                continue
            if job[1] == "completed":
                assert len(completed_ids[job_id]) == 1, f"{job_id}: completed webhook-ids {completed_ids[job_id]}"
            else:
                assert not completed_ids[job_id], f"{job_id} is {job[1]} but a job.completed was sent"

    by_status = Counter(j[1] for j in jobs.values())
    return AuditReport(jobs=len(jobs), by_status=dict(by_status), upstream_tasks=sum(per_job.values()),
                       callbacks=callbacks, lost=lost, duplicated=duplicated,
                       unfinished=_unfinished(database_url, [i for i, j in jobs.items() if j[1] != "completed"]))


def _unfinished(database_url: str, ids: list[str]) -> dict[str, str]:
    if not ids:
        return {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        errors = dict(conn.execute("SELECT id, coalesce(error, '') FROM jobs WHERE id = ANY(%s)", (ids,)).fetchall())
        trail: dict[str, list[str]] = defaultdict(list)
        for job_id, kind, at, detail in conn.execute(
            "SELECT job_id, type, at, detail FROM job_events WHERE job_id = ANY(%s) ORDER BY id", (ids,)
        ).fetchall():
            trail[job_id].append(f"{at:%H:%M:%S.%f} {kind} {json.dumps(detail)[:300]}")
    return {i: errors.get(i, "") + "".join(f"\n    {line}" for line in trail[i]) for i in ids}
