"""What the typed job record costs on the history page's path: one page of 200 jobs (one
stored output each) turned into answers, three ways, in alternating rounds:

* ``row``: the answer built from SQLAlchemy rows directly (``job_dict`` as it was before
  the record, kept here verbatim as the baseline);
* ``record``: rows → ``JobRecord``/``OutputRecord`` → ``job_dict`` (what runs now);
* the record's construction alone, as the NamedTuple it is and (``frozen``) as the frozen
  slots dataclass it replaced (service/domain/records.py says why); the frozen figure
  includes building the NamedTuple first, so subtract the record-build figure.

Prints the median time per page of each and the ratios to ``row``. CPU only: rows are
built in memory the way a result hands them over, no database.
``python -m tests.benchmarks records`` (``python tests/benchmarks/bench_records.py --rounds N``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import statistics
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy.engine.result import SimpleResultMetaData
from sqlalchemy.engine.row import Row

from service.db.models import Job, JobOutput, table
from service.domain.records import JobRecord, OutputRecord
from service.domain.serialize import iso, job_dict
from service.domain.states import JobStatus

PAGE = 200
T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def _rows(columns: list[str], values: list[dict[str, Any]]) -> list[Row[Any]]:
    meta = SimpleResultMetaData(columns)
    return [Row(meta, meta._effective_processors, meta._key_to_index, tuple(v[c] for c in columns))
            for v in values]


def page_rows() -> tuple[list[Row[Any]], list[Row[Any]]]:
    job_cols = [c.name for c in table(Job).columns]
    out_cols = [c.name for c in table(JobOutput).columns]
    jobs, outputs = [], []
    for n in range(PAGE):
        job = dict.fromkeys(job_cols)
        job.update(id=f"job_{n}", owner="acme", model="wavespeed-ai/flux-dev-lora", status="completed",
                   input={"prompt": f"a fox {n}", "size": "1024*1024", "seed": n}, metadata={"user": str(n)},
                   callback_url="https://backend.example/hook", attempts=0, callback_status="delivered",
                   callback_attempts=1, created_at=T0, updated_at=T0, submitted_at=T0, completed_at=T0,
                   provider_task_id=f"task_{n}", provider_status="completed", inference_ms=800,
                   has_nsfw_contents=[False], cost_usd=Decimal("0.0150"))
        jobs.append(job)
        outputs.append({"job_id": f"job_{n}", "index": 0, "source_url": "https://cdn/x", "key": f"o/job_{n}/0.jpeg",
                        "content_type": "image/jpeg", "size_bytes": 1000, "sha256": "ab" * 32,
                        "thumbnail_key": None, "stored_at": T0})
    return _rows(job_cols, jobs), _rows(out_cols, outputs)


def presign(key: str) -> str:
    return "https://s3.example/" + key


def row_job_dict(job: Any, outputs: Sequence[Any]) -> dict[str, Any]:
    """The baseline: serialize.job_dict before the typed record, on rows."""
    deleted = job.deleted_at is not None
    stored = [] if deleted else [o for o in outputs if o.stored_at is not None]
    return {
        "id": job.id, "object": "job", "model": job.model, "status": JobStatus(job.status),
        "input": {} if deleted else job.input, "metadata": {} if deleted else job.metadata,
        "callback_url": job.callback_url,
        "provider": {"task_id": job.provider_task_id, "status": job.provider_status,
                     "inference_ms": job.inference_ms},
        "outputs": [{"index": o._mapping["index"], "url": presign(o.key) if o.key else None, "key": o.key,
                     "content_type": o.content_type, "size_bytes": o.size_bytes, "sha256": o.sha256,
                     "thumbnail_url": presign(o.thumbnail_key) if o.thumbnail_key else None} for o in stored],
        "has_nsfw_contents": None if deleted else job.has_nsfw_contents, "error": job.error,
        "cost_usd": format(job.cost_usd.normalize(), "f") if job.cost_usd is not None else None,
        "callback": {"status": job.callback_status, "attempts": job.callback_attempts} if job.callback_url else None,
        "created_at": iso(job.created_at), "updated_at": iso(job.updated_at),
        "submitted_at": iso(job.submitted_at), "completed_at": iso(job.completed_at),
        "deleted_at": iso(job.deleted_at), "deleted_reason": job.deleted_reason, "retry_of": job.retry_of,
    }


FrozenJob = dataclasses.make_dataclass("FrozenJob", JobRecord._fields, frozen=True, slots=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_records")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    jobs, outputs = page_rows()

    def by_row() -> int:
        return len([row_job_dict(j, [o]) for j, o in zip(jobs, outputs, strict=True)])

    def by_record() -> int:
        return len([job_dict(JobRecord.from_row(j._mapping), [OutputRecord.from_row(o._mapping)], presign)
                    for j, o in zip(jobs, outputs, strict=True)])

    def by_record_build() -> int:
        return len([JobRecord.from_row(j._mapping) for j in jobs])

    def by_frozen_build() -> int:
        # The same conversion, then the frozen dataclass built from its fields.
        return len([FrozenJob(*JobRecord.from_row(j._mapping)) for j in jobs])

    ways: dict[str, Callable[[], int]] = {"row": by_row, "record": by_record,
                                          "record build only": by_record_build, "frozen build only": by_frozen_build}
    assert by_row() == by_record() == PAGE  # the work really happened
    assert row_job_dict(jobs[0], [outputs[0]]) == job_dict(
        JobRecord.from_row(jobs[0]._mapping), [OutputRecord.from_row(outputs[0]._mapping)], presign)
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, way in ways.items():  # alternating: load changes hit every way alike
            started = time.perf_counter()
            way()
            times[name].append(time.perf_counter() - started)
    base = statistics.median(times["row"])
    print(f"records: one page of {PAGE} jobs → answers, median of {args.rounds} alternating rounds")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"  {name:<18} {median * 1e3:7.2f} ms/page  ({median / base:.2f}× row)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
