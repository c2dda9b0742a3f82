"""Typed job records for the unit tests of the workers' decisions: a row as the database
hands it over, with only what a test cares about changed."""

from __future__ import annotations

import datetime as dt
from typing import Any

from service.domain.records import JobRecord

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
MODEL = "wavespeed-ai/flux-dev-lora"


def job(**changes: Any) -> JobRecord:
    row: dict[str, Any] = dict.fromkeys(JobRecord._fields)
    row.update(id="job_1", owner="acme", model=MODEL, status="queued",
               input={"prompt": "a fox", "seed": -1, "size": "1024*1024"}, metadata={},
               attempts=1, callback_attempts=0, created_at=T0, updated_at=T0, priority=0, vtag=0.0)
    row.update(changes)
    return JobRecord.from_row(row)
