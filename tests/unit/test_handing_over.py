"""The one bracket around a statement that may lease new rows to this process's duties
(service/db/leases.py ``handing_over``): what is reserved before, adopted or given back after."""

from __future__ import annotations

import pytest

from service.db.leases import handing_over


class RecordingHandoff:
    lease = 30.0

    def __init__(self, free: dict[str, int]) -> None:
        self.free = dict(free)
        self.calls: list[tuple[str, str, str | None]] = []

    def reserve(self, duty: str) -> str | None:
        if self.free.get(duty, 0) == 0:
            return None
        self.free[duty] -= 1
        self.calls.append(("reserve", duty, None))
        return f"{duty}-holder"

    def adopt(self, duty: str, row_id: str) -> None:
        self.calls.append(("adopt", duty, row_id))

    def give_back(self, duty: str) -> None:
        self.free[duty] += 1
        self.calls.append(("give_back", duty, None))


def test_rows_leased_to_their_slot_are_adopted_and_every_other_slot_goes_back() -> None:
    handoff = RecordingHandoff({"store": 1, "deliver": 5})
    with handing_over(handoff, ["store", None, "store", "deliver", "deliver"]) as slots:
        # the second "store" found no free slot: that row is claimed as usual
        assert slots.holders == ["store-holder", None, None, "deliver-holder", "deliver-holder"]
        slots.adopted = ["job_a", None, None, "dlv_b", None]
    assert [c for c in handoff.calls if c[0] != "reserve"] == [
        ("adopt", "store", "job_a"), ("adopt", "deliver", "dlv_b"), ("give_back", "deliver", None)]
    assert handoff.free == {"store": 0, "deliver": 4}  # the adopted ones are running


def test_a_statement_that_failed_gives_every_reserved_slot_back() -> None:
    handoff = RecordingHandoff({"store": 2, "deliver": 1})
    with pytest.raises(RuntimeError), handing_over(handoff, ["store", "deliver", "store"]):
        raise RuntimeError("the statement failed")
    assert handoff.free == {"store": 2, "deliver": 1}
    assert not [c for c in handoff.calls if c[0] == "adopt"]


def test_without_a_handoff_nothing_is_reserved_and_the_statement_leases_nothing() -> None:
    with handing_over(None, ["store", "deliver"]) as slots:
        assert slots.holders is None
        slots.adopted = ["job_a", "dlv_b"]  # ignored: there is no one to adopt it
