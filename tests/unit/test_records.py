"""The typed job record (service/domain/records.py), the answer serialize builds from it,
and a worker decision taken on records alone (the reconciler's lost-task matching):
no database, seconds to run."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from service.domain.records import JobRecord, OutputRecord
from service.domain.serialize import Job, job_dict
from service.domain.states import JobStatus
from service.work.reconciler import SEARCH_AFTER, SEARCH_BEFORE, matches

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def row(**changes: Any) -> dict[str, Any]:
    """A ``jobs`` row as the database hands it over, plus a column the record does not know."""
    base: dict[str, Any] = dict.fromkeys(JobRecord._fields)
    base.update(id="job_1", owner="acme", model="wavespeed-ai/flux-dev-lora", status="completed",
                input={"prompt": "a fox", "seed": -1, "size": "1024*1024"}, metadata={"u": "1"},
                callback_url="https://backend.example/hook", attempts=0, callback_status="delivered",
                callback_attempts=1, created_at=T0, updated_at=T0, cost_usd=Decimal("0.0150"),
                a_column_added_later=42)
    base.update(changes)
    return base


def output(index: int, stored: bool = True) -> OutputRecord:
    return OutputRecord(job_id="job_1", index=index, source_url=f"https://cdn/{index}", key=f"o/job_1/{index}.jpeg",
                        content_type="image/jpeg", size_bytes=10, sha256="ab", thumbnail_key=None,
                        stored_at=T0 if stored else None)


def test_a_row_becomes_a_record_with_an_enum_status_and_unknown_columns_ignored() -> None:
    record = JobRecord.from_row(row())
    assert record.status is JobStatus.COMPLETED
    assert not hasattr(record, "a_column_added_later")


@pytest.mark.parametrize(("column", "value"), [("status", "paused"), ("callback_status", "sent"),
                                               ("deleted_reason", "whim")])
def test_a_value_outside_the_schema_sets_is_refused_loudly(column: str, value: str) -> None:
    with pytest.raises(ValueError):
        JobRecord.from_row(row(**{column: value}))


def test_a_record_is_immutable() -> None:
    record = JobRecord.from_row(row())
    with pytest.raises(AttributeError):
        record.status = JobStatus.FAILED  # type: ignore[misc]
    output = OutputRecord(job_id="j", index=0, source_url="u", key=None, content_type=None, size_bytes=None,
                          sha256=None, thumbnail_key=None, stored_at=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        output.key = "k"  # type: ignore[misc]


def test_the_answer_has_exactly_the_documented_fields_and_only_stored_outputs() -> None:
    answer = job_dict(JobRecord.from_row(row()), [output(0), output(1, stored=False)], lambda key: "https://s3/" + key)
    assert set(answer) == set(Job.__annotations__)
    assert [o["index"] for o in answer["outputs"]] == [0]
    assert answer["cost_usd"] == "0.015" and answer["created_at"] == "2026-12-01T12:00:00Z"
    assert answer["callback"] == {"status": "delivered", "attempts": 1}


def test_a_deleted_job_answers_as_a_tombstone() -> None:
    answer = job_dict(JobRecord.from_row(row(deleted_at=T0, deleted_reason="request")), [output(0)], str)
    assert (answer["input"], answer["metadata"], answer["outputs"]) == ({}, {}, [])
    assert answer["deleted_reason"] == "request"


def _item(**changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"model": "wavespeed-ai/flux-dev-lora", "created_at": T0.isoformat(),
                            "input": {"prompt": "a fox", "seed": 1234, "size": "1024*1024"}}
    item.update(changes)
    return item


@pytest.mark.parametrize(("item", "expected"), [
    (_item(), True),  # a random seed may come back as the one the provider picked
    (_item(model="wavespeed-ai/flux-krea-dev-lora"), False),
    (_item(input={"prompt": "a cat", "seed": 1, "size": "1024*1024"}), False),
    (_item(created_at=(T0 + SEARCH_AFTER + dt.timedelta(seconds=1)).isoformat()), False),
    (_item(created_at=(T0 - SEARCH_BEFORE - dt.timedelta(seconds=1)).isoformat()), False),
    (_item(input=None), False),  # the documented list shows no input: too weak to adopt on
])
def test_the_reconciler_adopts_a_listed_task_only_on_model_time_and_input(item: dict[str, Any], expected: bool) -> None:
    job = JobRecord.from_row(row(status="submitted", submit_sent_at=T0))
    assert matches(job, item) is expected
