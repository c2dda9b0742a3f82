"""Per-owner gauges for /metrics: the month's spend and the outstanding reservations
(both summed from the ledger, service/db/ledger.py), the monthly budget, and the jobs
waiting to be sent, by owner and priority. Owners are made by operators, so the label set stays bounded. The
figures come from the database through service/db/gauges.py; this module only shows them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "wavespeed_jobs"


@dataclass
class OwnerSnapshot:
    """The per-owner figures of one scrape."""

    spent: dict[str, float] = field(default_factory=dict)
    reserved: dict[str, float] = field(default_factory=dict)
    budget: dict[str, float] = field(default_factory=dict)  # owners with a monthly budget only
    waiting: dict[tuple[str, int], int] = field(default_factory=dict)


class OwnerCollector(Collector):
    def __init__(self, snap: OwnerSnapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        spent = GaugeMetricFamily(f"{PREFIX}_owner_spent_usd",
                                  "USD spent by completed jobs this UTC calendar month, per owner (from the ledger).",
                                  labels=["owner"])
        reserved = GaugeMetricFamily(f"{PREFIX}_owner_reserved_usd",
                                     "USD reserved by the owner's jobs that have not ended yet (from the ledger).",
                                     labels=["owner"])
        for name in sorted(self.snap.spent):
            spent.add_metric([name], self.snap.spent[name])
            reserved.add_metric([name], self.snap.reserved[name])
        budget = GaugeMetricFamily(f"{PREFIX}_owner_budget_usd",
                                   "The owner's monthly budget in USD (owners with a budget only).",
                                   labels=["owner"])
        for name, usd in sorted(self.snap.budget.items()):
            budget.add_metric([name], usd)
        yield spent
        yield reserved
        yield budget
        waiting = GaugeMetricFamily(f"{PREFIX}_owner_jobs_waiting",
                                    "Queued jobs not yet sent upstream, per owner and priority.",
                                    labels=["owner", "priority"])
        for (name, priority), n in sorted(self.snap.waiting.items()):
            waiting.add_metric([name, str(priority)], float(n))
        yield waiting
