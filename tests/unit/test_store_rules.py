"""The storer's decisions on typed records (service/work/storer.py): which failures are
retried and after how long, which fail the job, which are left to the runner; the
retention warning; which outputs are stored at all. No S3, no database."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from service.clients.storage import StorageError
from service.domain.errors import EgressRefused, ProviderError, Retry
from service.domain.records import OutputRecord
from service.work.storer import (
    NotAnImage,
    StoreRefused,
    StoreRetry,
    after_failure,
    outputs_to_store,
    retention_warning_hours,
)
from tests.unit.records_factory import T0, job


def test_a_retry_that_names_its_delay_waits_exactly_that() -> None:
    # An output over MAX_OUTPUT_BYTES waits an hour, whatever the attempt count.
    assert after_failure(Retry("output 0 is larger than MAX_OUTPUT_BYTES", delay=3600), attempts=9) == StoreRetry(
        3600, "output 0 is larger than MAX_OUTPUT_BYTES")


@pytest.mark.parametrize("exc", [
    StorageError("S3 refused the upload"),
    httpx.ReadTimeout("read timed out"),
    httpx.RemoteProtocolError("peer closed connection"),
])
def test_s3_and_download_hiccups_are_retried_with_growing_backoff(exc: Exception) -> None:
    first, fifth = after_failure(exc, attempts=1), after_failure(exc, attempts=5)
    assert isinstance(first, StoreRetry) and isinstance(fifth, StoreRetry)
    assert 1.0 <= first.delay <= 2.0 and 16.0 <= fifth.delay <= 32.0
    capped = after_failure(exc, attempts=40)
    assert isinstance(capped, StoreRetry) and 150.0 <= capped.delay <= 300.0  # never more than 5 minutes


def test_a_retried_failure_without_a_message_is_named_by_its_type() -> None:
    verdict = after_failure(httpx.ReadTimeout(""), attempts=1)
    assert isinstance(verdict, StoreRetry) and verdict.message == "ReadTimeout: "


@pytest.mark.parametrize("exc", [EgressRefused("output 0 refused: 10.0.0.1 is private"),
                                 NotAnImage("output 1 is not a JPEG, PNG or WebP image")])
def test_what_no_retry_can_change_fails_the_job_with_its_reason(exc: EgressRefused | NotAnImage) -> None:
    assert after_failure(exc, attempts=1) == StoreRefused(exc.message)


@pytest.mark.parametrize("exc", [ValueError("a bug"), KeyError("key"), ProviderError("not a store failure")])
def test_other_failures_are_not_the_storers_to_handle(exc: Exception) -> None:
    # They propagate: the runner logs the crash, the lease lapses, the job is claimed again.
    assert after_failure(exc, attempts=1) is None


@pytest.mark.parametrize(("news_age", "hours"), [
    (dt.timedelta(days=5, hours=23), None),
    (dt.timedelta(days=6), None),  # exactly a day before the provider deletes: not yet
    (dt.timedelta(days=6, hours=1), 145.0),
    (dt.timedelta(days=9), 216.0),
])
def test_a_retry_warns_once_the_outputs_are_within_a_day_of_the_providers_deletion(
    news_age: dt.timedelta, hours: float | None
) -> None:
    record = job(status="storing", created_at=T0 - dt.timedelta(days=30), last_news_at=T0)
    assert retention_warning_hours(record, T0 + news_age) == hours


def test_without_news_the_retention_warning_counts_from_creation() -> None:
    record = job(status="storing", created_at=T0, last_news_at=None)
    assert retention_warning_hours(record, T0 + dt.timedelta(days=6, hours=12)) == 156.0


def _output(index: int) -> OutputRecord:
    return OutputRecord(job_id="job_1", index=index, source_url=f"https://cdn/{index}", key=None,
                        content_type=None, size_bytes=None, sha256=None, thumbnail_key=None, stored_at=None)


def test_outputs_beyond_what_the_job_asked_for_are_never_stored() -> None:
    kept, extra = outputs_to_store([_output(i) for i in (0, 1, 2, 3, 7)], asked=2)
    assert [o.index for o in kept] == [0, 1] and extra == [2, 3, 7]
    kept, extra = outputs_to_store([_output(0)], asked=4)
    assert [o.index for o in kept] == [0] and extra == []
