"""Soak: N jobs (default 2,000) through the dev stack with faults on, then the audit.

    .venv/bin/python -m tests.benchmarks.bench_soak --jobs 2000

Prints jobs per second, lost (not terminal, or completed without every output),
duplicated (more than one upstream task or completed callback per job) and the audit
of tests/integration/audit.py. Everything runs on 127.0.0.1 and stops at the end.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import boto3
import httpx

from devtools.devstack import dev_stack, free_port
from devtools.serverthread import ServerThread
from service.app import create_app
from service.db.engine import migrate
from service.observability.logs import configure
from service.settings import Settings
from tests.integration.audit import audit, submit_many, wait_all_terminal, wait_callbacks
from tests.servers import WebhookCatcher

FAULTS = {
    "webhook_drop_rate": 0.2,
    "webhook_duplicate_count": 2,
    "webhook_out_of_order": True,
    "submit_429_rate": 0.1,
    "submit_500_rate": 0.05,
    "submit_hang_rate": 0.02,
    "submit_hang_seconds": 4.0,
    "download_fail_rate": 0.05,
    "completion_jitter": 1.0,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("SOAK_JOBS", "2000")))
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    configure("warning", "console")

    with tempfile.TemporaryDirectory(prefix="wsj-soak-") as tmp, WebhookCatcher() as catcher, \
            dev_stack(Path(tmp), completion_delay=0.5) as stack:
        httpx.post(stack.simulator_url + "/_sim/config", json=FAULTS, timeout=5).raise_for_status()
        port = free_port()
        env = stack.environment(port)
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
        migrate(stack.database_url)
        settings = Settings(**{k.lower(): v for k, v in env.items() if not k.startswith("AWS_")},
                            reconcile_after_seconds=5.0, wavespeed_timeout_seconds=2.0,
                            callback_retry_schedule="0,1,2,5", log_level="warning")
        with ServerThread(create_app(settings), port=port) as server:
            from tests.integration.test_faults import new_key

            key = new_key(stack.database_url, "soak")
            started = time.monotonic()
            ids = submit_many(server.url, key, args.jobs, catcher.url("/cb"))
            submitted = time.monotonic() - started
            wait_all_terminal(stack.database_url, ids, args.timeout)
            finished = time.monotonic() - started
            wait_callbacks(catcher, stack.database_url, ids, 120)
            s3 = boto3.client("s3", endpoint_url=stack.s3_endpoint_url, region_name="us-east-1")
            report = audit(stack.database_url, s3, settings.s3_bucket or "", settings.s3_prefix,
                           stack.simulator_url, ids, catcher)
            stats = httpx.get(stack.simulator_url + "/_sim/stats", timeout=5).json()
    print(f"soak: {args.jobs} jobs with faults {FAULTS}")
    print(f"  submitted in {submitted:.1f} s; all terminal after {finished:.1f} s "
          f"→ {args.jobs / finished:.1f} jobs/s end to end")
    print(f"  lost: {report.lost}, duplicated: {report.duplicated}")
    print(f"  audit (every job terminal, one task and one completed callback id per job, every output in S3 "
          f"with matching sha256): {report}")
    print(f"  simulator: {stats}")
    return 0 if report.lost == 0 and report.duplicated == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
