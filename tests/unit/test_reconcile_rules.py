"""The reconciler's decisions on typed records (service/work/reconciler.py): reading the
provider's list for a job whose submit answer was lost, what that reading proves, and
what happens to the job then. The pages are data here; no database, no network."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from service.work.reconciler import (
    PAGE_SIZE,
    ListReading,
    LostSearch,
    lost_task_plan,
    matches,
    next_check,
    search_window,
)
from tests.unit.records_factory import MODEL, T0, job

LOST = job(status="submitted", submit_sent_at=T0, input={"prompt": "a fox", "seed": 5, "size": "1024*1024"})


def task(task_id: str, **changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"id": task_id, "model": MODEL, "created_at": (T0 + dt.timedelta(seconds=2)).isoformat(),
                            "input": {"prompt": "a fox", "seed": 5, "size": "1024*1024"}}
    item.update(changes)
    return item


def other(task_id: str) -> dict[str, Any]:
    return task(task_id, input={"prompt": "someone else's cat", "seed": 1, "size": "1024*1024"})


def read_all(*pages: dict[str, Any]) -> ListReading:
    reading = ListReading(LOST)
    for page in pages:
        if reading.read(page):
            return reading
    raise AssertionError("the reading wanted more pages than the test has")


def test_a_whole_window_with_inputs_and_no_match_proves_the_task_absent() -> None:
    reading = read_all({"items": [other("t1"), other("t2")], "total": 2})
    assert reading.verdict(owned=set()) == LostSearch(match=None, verified_absent=True)


def test_the_one_free_match_is_adopted() -> None:
    reading = read_all({"items": [other("t1"), task("t2")], "total": 2})
    assert reading.verdict(owned=set()) == LostSearch(match=task("t2"), verified_absent=False)


def test_a_match_already_owned_by_another_job_is_not_adopted_nor_proof_of_absence() -> None:
    reading = read_all({"items": [task("t2")], "total": 1})
    assert reading.verdict(owned={"t2"}) == LostSearch(match=None, verified_absent=False)


def test_two_identical_free_tasks_are_not_guessed_between() -> None:
    reading = read_all({"items": [task("t1"), task("t2")], "total": 2})
    assert reading.verdict(owned=set()) == LostSearch(match=None, verified_absent=False)
    assert reading.verdict(owned={"t1"}).match == task("t2")


def test_a_list_that_hides_inputs_never_proves_absence() -> None:
    reading = read_all({"items": [other("t1"), task("t2", input=None)], "total": 2})
    assert reading.verdict(owned=set()) == LostSearch(match=None, verified_absent=False)


def test_a_page_capped_below_the_asked_size_is_read_on_not_taken_for_the_end() -> None:
    reading = ListReading(LOST)
    assert reading.read({"items": [other(f"a{i}") for i in range(50)], "page_size": 50}) is True
    # Paged otherwise than asked and no total: completeness cannot be judged, so no proof.
    assert reading.verdict(owned=set()).verified_absent is False
    reading = ListReading(LOST)
    assert reading.read({"items": [other(f"a{i}") for i in range(50)], "total": 60}) is False
    assert reading.read({"items": [other(f"b{i}") for i in range(10)], "total": 60}) is True
    assert reading.verdict(owned=set()).verified_absent is True


def test_repeated_ids_across_pages_do_not_count_towards_the_total() -> None:
    reading = ListReading(LOST)
    assert reading.read({"items": [other("t1"), other("t2")], "total": 3}) is False
    assert reading.read({"items": [other("t2")], "total": 3}) is False  # the list shifted: t2 again
    assert reading.read({"items": [], "total": 3}) is True  # ran dry short of the total
    assert reading.verdict(owned=set()).verified_absent is False


def test_a_full_page_of_the_asked_size_without_a_total_means_read_on() -> None:
    reading = ListReading(LOST)
    assert reading.read({"items": [other(f"a{i}") for i in range(PAGE_SIZE)], "page_size": PAGE_SIZE}) is False
    assert reading.read({"items": [other("z")], "page_size": PAGE_SIZE}) is True
    assert reading.verdict(owned=set()).verified_absent is True


def test_a_task_without_an_id_is_neither_adopted_nor_counted_towards_the_total() -> None:
    reading = read_all({"items": ["junk", None, task("t1", id=None), other("t2")], "total": 2},
                       {"items": [], "total": 2})
    assert reading.candidates == [] and reading.seen == {"t2"}
    assert reading.verdict(owned=set()) == LostSearch(match=None, verified_absent=False)


def test_a_match_needs_the_job_to_have_been_marked_as_sent() -> None:
    assert matches(LOST, task("t1"))
    assert not matches(job(status="submitted", submit_sent_at=None, input=LOST.input), task("t1"))
    assert not matches(LOST, task("t1", created_at="not a time"))
    assert matches(LOST, task("t1", created_at="2026-12-01T12:00:30"))  # no zone: read as UTC
    assert not matches(LOST, task("t1", input={"prompt": "a fox", "seed": 6, "size": "1024*1024"}))  # seed was fixed


@pytest.mark.parametrize(("search", "lost_seconds", "plan"), [
    (LostSearch(match=task("t1"), verified_absent=False), 5, "adopt"),
    (LostSearch(match=task("t1"), verified_absent=False), 500, "adopt"),
    (LostSearch(match=None, verified_absent=True), 5, "wait"),  # its own webhook may still come
    (LostSearch(match=None, verified_absent=False), 60, "wait"),  # exactly at the deadline: still waits
    (LostSearch(match=None, verified_absent=True), 61, "resend"),  # proven never created: not a blind resend
    (LostSearch(match=None, verified_absent=False), 61, "fail"),  # unproven: never risk paying twice
])
def test_after_the_lost_submit_deadline_only_proven_absence_sends_again(
    search: LostSearch, lost_seconds: float, plan: str
) -> None:
    assert lost_task_plan(search, dt.timedelta(seconds=lost_seconds), 60.0) == plan


@pytest.mark.parametrize(("attempts", "delay"), [(0, 120), (1, 120), (2, 240), (3, 480), (4, 900), (9, 900)])
def test_silent_jobs_are_asked_about_doubling_and_at_most_every_15_minutes(attempts: int, delay: float) -> None:
    assert next_check(120.0, attempts) == delay
    assert next_check(2.0, attempts) == 2.0 * 2 ** min(max(attempts - 1, 0), 4)


def test_the_search_window_never_reaches_past_the_moment_of_the_search() -> None:
    # Read 20 s after the send (a short SUBMIT_LOST_DEADLINE_SECONDS): the window ends now,
    # so tasks arriving while its pages are read cannot make it grow.
    now = T0 + dt.timedelta(seconds=20)
    assert search_window(T0, now) == (T0 - dt.timedelta(minutes=1), now)


def test_the_search_window_is_the_full_margin_once_it_lies_in_the_past() -> None:
    now = T0 + dt.timedelta(minutes=10)
    assert search_window(T0, now) == (T0 - dt.timedelta(minutes=1), T0 + dt.timedelta(minutes=3))
