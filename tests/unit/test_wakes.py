"""Work notifications wake only the duties they concern (service/db/listen.py, WAKES):
waking all seven duties on every notification cost each a claim that found nothing."""

from __future__ import annotations

import pytest

from service.db.listen import WAKES, Notifications
from service.db.queries import CHANNEL_DONE, CHANNEL_WORK

DUTIES = ("submit", "store", "reconcile", "deliver", "erase", "retention", "start_timeout")


def woken_by(channel: str, payload: str) -> set[str]:
    hub = Notifications("postgresql://unused")
    for duty in DUTIES:  # as the runner's loops do: each duty waits on its own event
        hub._work[duty].clear()
    hub._on_notify(None, 0, channel, payload)
    return {duty for duty in DUTIES if hub._work[duty].is_set()}


@pytest.mark.parametrize(
    ("payload", "woken"),
    [
        ("submit", {"submit"}),
        ("queued", {"submit"}),
        ("storing", {"store"}),
        ("deliver", {"deliver"}),
        ("erase", {"erase"}),
        ("submitted", set()),
        ("processing", set()),
        ("something new", set(DUTIES)),  # unknown payloads wake everyone: never a lost wake-up
    ],
)
def test_a_work_notification_wakes_only_the_duties_of_its_payload(payload: str, woken: set[str]) -> None:
    assert woken_by(CHANNEL_WORK, payload) == woken


def test_a_done_notification_wakes_no_duty() -> None:
    assert woken_by(CHANNEL_DONE, "job_x") == set()


def test_kick_without_names_wakes_every_duty_and_with_names_only_those() -> None:
    hub = Notifications("postgresql://unused")
    for duty in DUTIES:
        hub._work[duty].clear()
    hub.kick("store")
    assert {d for d in DUTIES if hub._work[d].is_set()} == {"store"}
    hub.kick()
    assert all(hub._work[d].is_set() for d in DUTIES)


def test_every_duty_a_payload_names_exists() -> None:
    names = {d for duties in WAKES.values() for d in duties}
    assert names <= set(DUTIES)
    assert set(DUTIES) == {cls.name for cls in _duty_classes()}


def _duty_classes() -> list[type]:
    # The classes service/app.py::build_duties runs (their names, without opening resources).
    import service.work.deliverer as deliverer
    import service.work.eraser as eraser
    import service.work.reconciler as reconciler
    import service.work.retention as retention
    import service.work.start_timeout as start_timeout
    import service.work.storer as storer
    import service.work.submitter as submitter

    return [submitter.Submitter, storer.Storer, reconciler.Reconciler, deliverer.Deliverer, eraser.Eraser,
            retention.Retention, start_timeout.StartTimeouts]
