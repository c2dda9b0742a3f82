"""Storer memory: one 100 MB output moved from the provider into S3.

Goal: peak process memory grows by less than 30 MB while a 100 MB output
moves to S3. The measured process is a child that runs the real storing path and
nothing else: the service's resources (``open_resources``), the ``Storer`` duty, its
claim and its ``run`` on a job whose output URL is the simulator's streamed
``GET /_sim/blob/{n}``. The simulator and moto's S3 server run here, in the parent, so
their memory is not counted.

The child reads VmRSS before the big job, resets the kernel's peak counter
(``/proc/self/clear_refs``) and afterwards reads the peak (VmHWM); a sampling thread
watches VmRSS too, in case the reset is not allowed. A small job stored first warms
the code paths, so lazy imports are not charged to the big one.

Then the parent checks the result where it landed: the job is ``completed``, the S3
object's size is exact and its sha256 equals the recorded one and that of a fresh
download of the same blob.

``python -m tests.benchmarks.bench_storer [--mb 100]``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import boto3
import httpx

from devtools.devstack import DEV_ACCESS_KEY, DEV_SECRET_KEY, embedded_s3, embedded_simulator
from tests.benchmarks import database, procs

BUCKET = "wavespeed-jobs-bench"
MODEL = "wavespeed-ai/flux-dev-lora"
WARM_JOB, BIG_JOB = "job_bench_store_warm", "job_bench_store_big"
GOAL_MB = 30

SEED_JOB = """
INSERT INTO jobs (id, owner, model, status, input, provider_task_id, provider_status, submitted_at,
                  last_news_at, run_after)
VALUES (%(id)s, 'bench', %(model)s, 'storing', '{"prompt": "a lighthouse", "output_format": "jpeg"}',
        %(task)s, 'completed', now(), now(), %(run_after)s)
"""
SEED_OUTPUT = "INSERT INTO job_outputs (job_id, index, source_url) VALUES (%(id)s, 0, %(url)s)"


def _mib(n_bytes: float) -> float:
    return n_bytes / (1024 * 1024)


# --------------------------------------------------------------------------- the child


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class RssSampler(threading.Thread):
    """The highest VmRSS seen, sampled every few milliseconds (a floor for the peak)."""

    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.interval = interval
        self.peak_kib = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak_kib = max(self.peak_kib, _status_kib("VmRSS"))
            time.sleep(self.interval)


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


async def _child() -> dict[str, Any]:
    from sqlalchemy import text

    from service.app import open_resources
    from service.settings import Settings
    from service.work.storer import Storer

    settings = Settings()
    async with open_resources(settings) as res:
        storer = Storer(res)
        warm = await storer.claim(1)  # only the small job is due yet
        assert warm == [WARM_JOB], warm
        await storer.run(WARM_JOB)
        async with res.engine.begin() as conn:
            await conn.execute(text("UPDATE jobs SET run_after = now() WHERE id = :id"), {"id": BIG_JOB})

        baseline = _status_kib("VmRSS")
        reset = _reset_peak()
        sampler = RssSampler()
        sampler.start()
        started = time.perf_counter()
        claimed = await storer.claim(1)
        assert claimed == [BIG_JOB], claimed
        await storer.run(BIG_JOB)
        elapsed = time.perf_counter() - started
        sampler.stop.set()
        sampler.join()
        return {
            "baseline_kib": baseline,
            "hwm_kib": _status_kib("VmHWM") if reset else None,
            "sampled_peak_kib": sampler.peak_kib,
            "after_kib": _status_kib("VmRSS"),
            "seconds": elapsed,
            "part_size": settings.s3_part_size_bytes,
        }


# --------------------------------------------------------------------------- the parent


def _env(database_url: str, s3_endpoint: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "S3_BUCKET": BUCKET,
        "S3_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": DEV_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": DEV_SECRET_KEY,
        "WAVESPEED_API_KEY": "bench-not-used",
        "WAVESPEED_BASE_URL": "http://127.0.0.1:9",  # never called: the secret is given
        "WAVESPEED_WEBHOOK_SECRET": "whsec_bench_storer_0123456789",
        "PUBLIC_BASE_URL": "http://127.0.0.1:9",
        "ALLOW_PRIVATE_NETWORKS": "true",  # the simulator's blob is on loopback
        "LOG_LEVEL": "warning",
        "LOG_FORMAT": "json",
    }


def _sha256_of_stream(chunks: Any) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def verify(url: str, s3: Any, simulator: str, blob_url: str, size: int) -> tuple[list[str], str]:
    problems: list[str] = []
    with database.connect(url) as conn:
        status = conn.execute("SELECT status FROM jobs WHERE id = %s", (BIG_JOB,)).fetchone()
        output = conn.execute("SELECT key, size_bytes, sha256 FROM job_outputs WHERE job_id = %s AND index = 0",
                              (BIG_JOB,)).fetchone()
    if status is None or status[0] != "completed":
        problems.append(f"the job is {status and status[0]!r}, not 'completed'")
    if output is None or output[0] is None:
        return [*problems, "the output has no S3 key"], ""
    key, recorded_size, recorded_sha = output
    obj = s3.get_object(Bucket=BUCKET, Key=key)
    s3_sha, s3_size = _sha256_of_stream(obj["Body"].iter_chunks(1024 * 1024))
    with httpx.stream("GET", blob_url, timeout=60) as response:
        source_sha, source_size = _sha256_of_stream(response.iter_bytes(1024 * 1024))
    if not (s3_size == recorded_size == source_size == size):
        problems.append(f"sizes differ: S3 {s3_size}, recorded {recorded_size}, source {source_size}, asked {size}")
    if not (s3_sha == recorded_sha == source_sha):
        problems.append(f"sha256 differ: S3 {s3_sha}, recorded {recorded_sha}, source {source_sha}")
    return problems, s3_sha


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_storer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=100, help="size of the output in MiB")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("BENCH_JSON " + json.dumps(asyncio.run(_child())), flush=True)
        return 0

    size = args.mb * 1024 * 1024
    print(f"== storer benchmark: one {args.mb} MiB output ({size:,} bytes), load {os.getloadavg()[0]:.2f}",
          flush=True)
    with (
        database.fresh_database("wsj_bench_storer") as url,
        embedded_s3() as s3_endpoint,
        embedded_simulator() as simulator,
    ):
        s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id=DEV_ACCESS_KEY, aws_secret_access_key=DEV_SECRET_KEY)
        s3.create_bucket(Bucket=BUCKET)
        blob_url = f"{simulator}/_sim/blob/{size}?seed=7"
        with database.connect(url) as conn:
            for job in (
                {"id": WARM_JOB, "model": MODEL, "task": "task_bench_warm",
                 "url": f"{simulator}/_sim/blob/{1024 * 1024}?seed=1", "run_after": "2000-01-01"},
                {"id": BIG_JOB, "model": MODEL, "task": "task_bench_big", "url": blob_url,
                 "run_after": "2100-01-01"},  # made due by the child once warmed up
            ):
                conn.execute(SEED_JOB, job)
                conn.execute(SEED_OUTPUT, job)
        argv_child = [procs.PYTHON, "-m", "tests.benchmarks.bench_storer", "--child"]
        child = procs.spawn(argv_child, env=_env(url, s3_endpoint), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = child.communicate(timeout=300)
        finally:
            procs.stop(child)
        line = next((ln for ln in out.decode().splitlines() if ln.startswith("BENCH_JSON ")), None)
        if child.returncode != 0 or line is None:
            print(f"the storing child failed (exit {child.returncode}):\n{err.decode()[-3000:]}")
            return 1
        figures = json.loads(line[len("BENCH_JSON "):])
        problems, sha = verify(url, s3, simulator, blob_url, size)

    baseline = figures["baseline_kib"] * 1024
    peak = max(figures["hwm_kib"] or 0, figures["sampled_peak_kib"]) * 1024
    growth = peak - baseline
    how = "VmHWM after reset" if figures["hwm_kib"] else "sampled VmRSS only (clear_refs refused)"
    print(f"RSS before {_mib(baseline):.1f} MiB, peak {_mib(peak):.1f} MiB ({how}), after "
          f"{_mib(figures['after_kib'] * 1024):.1f} MiB: growth {_mib(growth):.1f} MiB "
          f"(goal < {GOAL_MB} MB; multipart part size {_mib(figures['part_size']):.0f} MiB)")
    print(f"moved {_mib(size):.0f} MiB in {figures['seconds']:.2f} s: {_mib(size) / figures['seconds']:.1f} MiB/s "
          f"(simulator → storer → moto S3, all on this machine)")
    if problems:
        print("VERIFY FAILED:\n  " + "\n  ".join(problems))
        return 1
    print(f"verified: job completed; S3 object {size:,} bytes, sha256 {sha[:16]}… = recorded = source")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
