"""Which service process did which part of a run's work, for bench_pipeline: read from
each process's own ``/metrics`` (its counters count what that process did) before and
after the run.

With ``serve`` + ``worker`` on one database every duty claims from the same rows, but the
API and the receiver run only in ``serve``: the split says whether the second process
took its share of the submits, copies and callbacks, or sat idle beside a first process
that claimed everything.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

# (what, metric sample name, label filter): the counters of a job's path.
COUNTED: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("admissions", "wavespeed_jobs_admissions_total", {"outcome": "accepted"}),
    ("webhooks", "wavespeed_jobs_webhooks_received_total", {}),
    ("submits", "wavespeed_jobs_provider_request_seconds_count", {"operation": "submit"}),
    ("stored", "wavespeed_jobs_stored_outputs_total", {}),
    ("callbacks", "wavespeed_jobs_callback_attempts_total", {"outcome": "delivered"}),
)


def counts(base_url: str) -> dict[str, float]:
    """The counters of COUNTED in the process answering at ``base_url`` (all 0 when it
    does not answer: the split is then missing, not wrong)."""
    try:
        text = httpx.get(base_url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    out = {what: 0.0 for what, _, _ in COUNTED}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for what, name, labels in COUNTED:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    out[what] += sample.value
    return out


def difference(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}


def line(split: dict[str, dict[str, float]]) -> str:
    """``serve: admissions 400, … | worker: submits 190, …`` (counters at 0 left out)."""
    parts = []
    for process, done in split.items():
        shown = ", ".join(f"{k} {v:.0f}" for k, v in done.items() if v)
        parts.append(f"{process}: {shown or 'nothing'}")
    return "     work done by: " + " | ".join(parts)
