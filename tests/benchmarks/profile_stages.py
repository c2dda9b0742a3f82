"""A job's CPU by stage, from the py-spy stacks `bench_pipeline --profile` keeps.

    BENCH_PYSPY_ARGS=--gil .venv/bin/python -m tests.benchmarks.bench_pipeline \
        --scenarios burst --jobs 400 --reps 1 --sides serve --no-second-process --profile
    .venv/bin/python -m tests.benchmarks.profile_stages LOGDIR/rep1-serve-burst-serve.pyspy CPU_MS

Each sampled stack goes to the first stage whose frames it holds (the duty or route that
runs it, then what it was doing: the database is any SQLAlchemy, asyncpg or service/db
frame), and a stage's share of the samples is its share of ``CPU_MS``, the run's service
CPU per job. With ``--gil`` only the thread holding the GIL is sampled: Python's own
work, not threads waiting for the GIL on a busy machine; native work that releases it
(image decoding in the thumbnail thread, socket calls) is under-counted, so the
thumbnail's cost is also measured apart (`thread_time` around the thumbnail of the
simulator's image). SQLAlchemy runs a statement's Python in a greenlet whose stack py-spy
sees apart from the caller's: those samples are "database, unattributed".
"""

from __future__ import annotations

import sys
from collections import Counter

_DB = ("sqlalchemy", "asyncpg", "service/db/")
_HTTP_OUT = ("_download", "egress.py", "httpx", "httpcore", "anyio")
_S3 = ("botocore", "boto3", "urllib3", "s3transfer", "storage.py")
_S3_CALLS = ("Storage._put_object", "botocore", "boto3", "urllib3", "s3transfer")
_WORK = (("store", "Storer."), ("callback", "Deliverer."), ("submit", "Submitter."))
_OUTGOING = {"store": "download from the provider", "callback": "body, signature, POST",
             "submit": "POST to the provider"}


def _has(stack: str, keys: tuple[str, ...]) -> bool:
    return any(k in stack for k in keys)


def stage(stack: str) -> str:
    """The stage one sampled stack (py-spy's raw line without its count) belongs to."""
    # A PUT first: the thumbnail's is sent from thumbnails.py's frames, and it is S3's work.
    if _has(stack, _S3_CALLS):
        return "store: S3 PUTs (output + thumbnail)"
    if _has(stack, ("PIL/", "thumbnails.py")):
        return "store: thumbnail (decode, resize, WebP)"
    if _has(stack, _S3):
        return "store: S3 PUTs (output + thumbnail)"
    for name, frame in _WORK:
        if frame in stack:
            if _has(stack, _DB):
                return f"{name}: database"
            return f"{name}: {_OUTGOING[name]}" if _has(stack, _HTTP_OUT) or name != "store" else "store: other"
    if _has(stack, ("job_api.py", "admission.py")):
        return "admission: database" if _has(stack, _DB) else "admission: HTTP, validation"
    if _has(stack, ("receiver.py", "NewsWriter", "news.py")):
        return "webhook: database (group commit, NOTIFY)" if _has(stack, _DB) else "webhook: HTTP, verify"
    if _has(stack, ("Runner._loop", "Runner._renew_leases", "Notifications", "listen.py")):
        return "claims, leases, wake-ups"
    if _has(stack, _DB):
        return "database, unattributed (SQLAlchemy's greenlet stacks)"
    if _has(stack, ("uvicorn", "starlette", "httptools", "HeaderGuard", "HeaderCap")):
        return "HTTP server, unattributed"
    return "other (event loop, thread pool)"


def stages(lines: list[str]) -> Counter[str]:
    samples: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            samples[stage(stack)] += int(count)
    return samples


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    path, cpu_ms = argv[0], float(argv[1])
    with open(path, encoding="utf-8") as f:
        samples = stages(f.readlines())
    total = sum(samples.values()) or 1
    for name, n in sorted(samples.items()):
        print(f"{name:56s} {n:6d} samples {n / total * cpu_ms * 1000:8.0f} µs/job")
    print(f"{'total':56s} {total:6d} samples {cpu_ms * 1000:8.0f} µs/job")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
