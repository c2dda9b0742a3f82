"""GET /v1/jobs/{id}/events tells a job's whole story, oldest first: every status change
(each one starting where the previous ended), every webhook received with its duplicates
marked, every output stored (with the size and sha256 the job shows), and every callback
attempt, failed ones included."""

from __future__ import annotations

import itertools
from typing import Any

import httpx

from devtools.serverthread import ServerThread
from tests.conftest import sim_config
from tests.integration.helpers import eventually, submit, wait_terminal
from tests.servers import WebhookCatcher


def test_events_show_transitions_webhooks_outputs_and_callback_attempts_in_order(
    client: httpx.Client, sim_defaults: ServerThread
) -> None:
    sim_config(sim_defaults, webhook_duplicate_count=1)  # each webhook arrives twice
    with WebhookCatcher() as catcher:
        catcher.answer_next([500])  # the first callback attempt fails, the retry succeeds
        job = submit(client, callback_url=catcher.url(), input={"num_images": 2})
        done = wait_terminal(client, job["id"])
        assert done["status"] == "completed"

        def settled() -> list[dict[str, Any]] | None:
            events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
            types = [e["type"] for e in events]
            duplicates = [e for e in events if e["type"] == "webhook.received" and e["detail"]["duplicate"]]
            return events if "callback.delivered" in types and duplicates else None

        events = eventually(settled, timeout=20)

    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    assert events[0]["type"] == "job.created"

    changes = [e["detail"] for e in events if e["type"] == "status.changed"]
    assert changes[0]["from"] == "queued" and changes[-1]["to"] == "completed"
    assert all(a["to"] == b["from"] for a, b in itertools.pairwise(changes))  # no gap, no repeat
    assert [c["to"] for c in changes][-2:] == ["storing", "completed"]

    hooks = [e["detail"] for e in events if e["type"] == "webhook.received"]
    firsts = {h["webhook_id"] for h in hooks if not h["duplicate"]}
    repeats = {h["webhook_id"] for h in hooks if h["duplicate"]}
    assert firsts and repeats <= firsts  # a duplicate repeats a webhook-id already recorded
    assert len([h for h in hooks if not h["duplicate"]]) == len(firsts)  # each id counted new once

    stored = {e["detail"]["index"]: e["detail"] for e in events if e["type"] == "output.stored"}
    assert sorted(stored) == [0, 1]
    for output in done["outputs"]:
        assert stored[output["index"]]["sha256"] == output["sha256"]
        assert stored[output["index"]]["size_bytes"] == output["size_bytes"]

    attempts = [e["detail"] for e in events if e["type"] == "callback.attempt"]
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in attempts] == [
        (1, 500, "retrying"), (2, 200, "delivered")]
    types = [e["type"] for e in events]
    assert types.index("status.changed") < types.index("output.stored") < types.index("callback.attempt")
