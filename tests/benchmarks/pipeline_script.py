"""The naive script a backend writes without wavespeed-jobs, for bench_pipeline's other
side: the official ``wavespeed`` SDK's ``run()`` (submit, then poll the result), a
``requests`` download of each output and a boto3 ``put_object``, on 32 threads.

    python -m tests.benchmarks.pipeline_script --jobs 400 [--rate 20]

Reads WAVESPEED_BASE_URL, WAVESPEED_API_KEY, S3_ENDPOINT_URL, S3_BUCKET and the AWS_*
variables; prints one ``BENCH_JSON`` line: the CPU seconds this process used from the
first job to the last (every thread; start-up and imports excluded, as they are for the
service), and per job the task id and the moment its last object landed in S3.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import requests
import wavespeed

MODEL = "wavespeed-ai/flux-dev-lora"


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--rate", type=float, default=0.0, help="jobs started per second (0: all at once)")
    parser.add_argument("--size", default="1024*1024")
    args = parser.parse_args(argv)

    client = wavespeed.Client(api_key=os.environ["WAVESPEED_API_KEY"], base_url=os.environ["WAVESPEED_BASE_URL"])
    s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"], region_name="us-east-1")
    bucket = os.environ["S3_BUCKET"]
    session = threading.local()
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        http = getattr(session, "http", None) or requests.Session()
        session.http = http
        prediction = client.run(MODEL, {"prompt": "a lighthouse at dusk", "size": args.size, "seed": 7})
        # run() answers only the outputs; the simulator's output URLs name the task
        # (…/outputs/{task id}/{index}.jpeg), which the benchmark needs for timing.
        task_id = prediction["outputs"][0].rsplit("/", 2)[-2]
        for i, url in enumerate(prediction["outputs"]):
            body = http.get(url, timeout=30).content
            s3.put_object(Bucket=bucket, Key=f"script/{task_id}/{i}.jpeg", Body=body, ContentType="image/jpeg")
        with lock:
            results.append({"task_id": task_id, "stored_at": time.time()})

    cpu0, wall0 = time.process_time(), time.time()
    with ThreadPoolExecutor(args.threads) as pool:
        futures = []
        for n in range(args.jobs):
            if args.rate > 0:
                delay = wall0 + n / args.rate - time.time()
                if delay > 0:
                    time.sleep(delay)
            futures.append(pool.submit(one, n))
        errors = [repr(f.exception()) for f in futures if f.exception() is not None]
    cpu, wall = time.process_time() - cpu0, time.time() - wall0
    print("BENCH_JSON " + json.dumps({"cpu_s": cpu, "wall_s": wall, "started_at": wall0, "jobs": results,
                                      "errors": errors[:5], "error_count": len(errors)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
