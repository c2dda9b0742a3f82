"""The receiver, POST /webhooks/wavespeed/{job_id}, over real HTTP, Postgres, S3 and the
simulator: a bad signature changes nothing, and duplicate, reordered and late events
change nothing but the event log — checked on the job row, its outputs, the S3 objects,
its events and the raw webhook log.

Most tests put a job into a known state by inserting its row (status ``submitted``, a
task id, ``run_after`` a day away so no worker touches it) and then post webhooks by
hand, signed with the simulator's secret exactly as the provider signs them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from service.db.jobs import new_job_id
from service.domain.signing import wavespeed_signature
from tests.conftest import BUCKET, SIM_SECRET, Service, sim_config
from tests.integration.helpers import eventually, s3_object, sha256, submit, wait_terminal

DEV = "wavespeed-ai/flux-dev-lora"
INPUT = {"prompt": "a red fox", "size": "256*256", "num_images": 2, "output_format": "png"}


# --------------------------------------------------------------------------- helpers


def owner_of(service: Service, client: httpx.Client) -> str:
    return service.keys[client.headers["authorization"].split(" ", 1)[1]]


def submitted_job(sql: psycopg.Connection[Any], owner: str, task_id: str | None = None) -> str:
    """A job the provider has accepted as ``task_id``; no worker will pick it up."""
    job_id = new_job_id()
    sql.execute(
        "INSERT INTO jobs (id, owner, model, status, input, provider_task_id, provider_status, run_after,"
        " submitted_at, submit_sent_at, deadline_at) VALUES (%s, %s, %s, 'submitted', %s, %s, 'created',"
        " now() + interval '1 day', now(), now(), now() + interval '1 day')",
        (job_id, owner, DEV, Jsonb({**INPUT, "seed": -1}), task_id or "task_" + uuid.uuid4().hex),
    )
    return job_id


def sim_task(simulator_url: str) -> dict[str, Any]:
    """A real, completed task in the simulator (submitted without a webhook), whose
    prediction object has real output URLs the storer can download."""
    response = httpx.post(
        f"{simulator_url}/api/v3/{DEV}", json=INPUT, headers={"Authorization": "Bearer sim-key"}, timeout=10
    )
    assert response.status_code == 200, response.text
    task_id = response.json()["data"]["id"]

    def done() -> dict[str, Any] | None:
        detail = httpx.get(f"{simulator_url}/_sim/tasks/{task_id}", timeout=5).json()
        return detail["prediction"] if detail["status"] == "completed" else None

    return eventually(done, timeout=20)


def sign(body: bytes, webhook_id: str, *, secret: str = SIM_SECRET, at: float | None = None) -> dict[str, str]:
    timestamp = str(int(time.time() if at is None else at))
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": wavespeed_signature(secret, webhook_id, timestamp, body),
    }


def encode(prediction: dict[str, Any]) -> bytes:
    return json.dumps(prediction, separators=(",", ":")).encode()


def post(service: Service, job_id: str, prediction: dict[str, Any], webhook_id: str) -> httpx.Response:
    body = encode(prediction)
    return httpx.post(f"{service.url}/webhooks/wavespeed/{job_id}", content=body, headers=sign(body, webhook_id))


def as_status(prediction: dict[str, Any], status: str) -> dict[str, Any]:
    """The same task as an event of another status (what a stale or reordered event says)."""
    outputs = prediction["outputs"] if status == "completed" else []
    return {**prediction, "status": status, "outputs": outputs, "has_nsfw_contents": [False] * len(outputs),
            "error": "boom" if status == "failed" else "", "timings": {"inference": 0}}


def snapshot(sql: psycopg.Connection[Any], s3: Any, service: Service, job_id: str) -> dict[str, Any]:
    """Everything a webhook could change about a job, except the append-only logs."""
    with sql.cursor(row_factory=dict_row) as cur:
        job = cur.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
        outputs = cur.execute("SELECT * FROM job_outputs WHERE job_id = %s ORDER BY index", (job_id,)).fetchall()
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{service.settings.s3_prefix}{job_id}/")
    objects = {o["Key"]: (o["ETag"], o["LastModified"], o["Size"]) for o in listing.get("Contents", [])}
    return {"job": job, "outputs": outputs, "objects": objects}


def job_events(sql: psycopg.Connection[Any], job_id: str) -> list[tuple[int, str, dict[str, Any]]]:
    rows = sql.execute("SELECT id, type, detail FROM job_events WHERE job_id = %s ORDER BY id", (job_id,)).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def webhook_rows(sql: psycopg.Connection[Any], where: str, value: str) -> list[tuple[str, str | None, str]]:
    rows = sql.execute(
        f"SELECT webhook_id, job_id, outcome FROM webhook_events WHERE {where} = %s ORDER BY id", (value,)
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def transitions(sql: psycopg.Connection[Any], job_id: str) -> list[str]:
    return [detail["to"] for _, type_, detail in job_events(sql, job_id) if type_ == "status.changed"]


def received(sql: psycopg.Connection[Any], job_id: str) -> list[tuple[str, bool]]:
    return [(d["webhook_id"], d["duplicate"]) for _, t, d in job_events(sql, job_id) if t == "webhook.received"]


@pytest.fixture
def owner(service: Service, client: httpx.Client) -> str:
    return owner_of(service, client)


# --------------------------------------------------------------------------- idempotency


def test_duplicate_reordered_and_late_webhooks_change_nothing_twice(
    service: Service, client: httpx.Client, owner: str, sql: psycopg.Connection[Any], s3: Any, simulator: Any
) -> None:
    prediction = sim_task(simulator.url)
    job_id = submitted_job(sql, owner, prediction["id"])

    # Reordered: the final event first, then its duplicate, then a stale "processing".
    first = post(service, job_id, prediction, "evt_final")
    assert first.status_code == 200 and first.json()["outcome"] == "advanced", first.text
    again = post(service, job_id, prediction, "evt_final")
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate", again.text
    stale = post(service, job_id, as_status(prediction, "processing"), "evt_stale")
    assert stale.status_code == 200, stale.text
    assert stale.json()["outcome"] in ("unchanged", "late")

    done = wait_terminal(client, job_id)
    assert done["status"] == "completed", done
    before = snapshot(sql, s3, service, job_id)
    events_before = job_events(sql, job_id)

    # Late: the same event again, the same result under a new id, a contradicting failure,
    # and another stale "processing" — all after the job is final.
    late = [
        (prediction, "evt_final", "duplicate"),
        (prediction, "evt_final_resent", "late"),
        (as_status(prediction, "failed"), "evt_failed", "late"),
        (as_status(prediction, "processing"), "evt_stale_2", "late"),
    ]
    for body, webhook_id, outcome in late:
        response = post(service, job_id, body, webhook_id)
        assert response.status_code == 200, response.text
        assert response.json()["outcome"] == outcome, (webhook_id, response.text)

    after = snapshot(sql, s3, service, job_id)
    assert after == before  # job row, outputs and S3 objects: not one byte changed
    events_after = job_events(sql, job_id)
    assert events_after[: len(events_before)] == events_before
    new_events = events_after[len(events_before) :]
    assert [(t, d["webhook_id"], d["duplicate"]) for _, t, d in new_events] == [
        ("webhook.received", "evt_final", True),
        ("webhook.received", "evt_final_resent", False),
        ("webhook.received", "evt_failed", False),
        ("webhook.received", "evt_stale_2", False),
    ]

    # Over the whole story: each status once, forward only, and the provider's final word kept.
    assert transitions(sql, job_id) == ["storing", "completed"]
    assert [w for w, _, _ in webhook_rows(sql, "job_id", job_id)] == [
        "evt_final", "evt_stale", "evt_final_resent", "evt_failed", "evt_stale_2"
    ]
    assert done["provider"]["status"] == "completed"
    assert done["has_nsfw_contents"] == [False, False]
    assert done["provider"]["inference_ms"] == prediction["timings"]["inference"]
    # Outputs landed once per index, with what the provider served.
    assert [o["index"] for o in done["outputs"]] == [0, 1]
    keys = set(after["objects"])
    for output in done["outputs"]:
        data = s3_object(s3, BUCKET, output["key"])
        assert output["sha256"] == sha256(data) and output["size_bytes"] == len(data)
        assert output["key"] in keys
    assert len([k for k in keys if not k.endswith(".thumb.webp")]) == 2


def test_a_stale_event_while_storing_does_not_roll_back_the_provider_status(
    service: Service, client: httpx.Client, owner: str, sql: psycopg.Connection[Any], simulator: Any,
    sim_defaults: Any,
) -> None:
    # Slow downloads keep the job in "storing" while the stale event arrives.
    sim_config(sim_defaults, download_delay=1.5)
    prediction = sim_task(simulator.url)
    job_id = submitted_job(sql, owner, prediction["id"])
    assert post(service, job_id, prediction, "evt_done").json()["outcome"] == "advanced"
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "storing"
    stale = post(service, job_id, as_status(prediction, "processing"), "evt_old")
    assert stale.status_code == 200 and stale.json()["outcome"] == "unchanged", stale.text
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "storing"
    assert job["provider"]["status"] == "completed"
    assert job["has_nsfw_contents"] == [False, False]
    done = wait_terminal(client, job_id)
    assert done["status"] == "completed"
    assert done["provider"] == {"task_id": prediction["id"], "status": "completed",
                                "inference_ms": prediction["timings"]["inference"]}
    assert transitions(sql, job_id) == ["storing", "completed"]


def test_simulator_duplicates_and_out_of_order_webhooks_complete_the_job_once(
    client: httpx.Client, sql: psycopg.Connection[Any], s3: Any, service: Service, simulator: Any,
    sim_defaults: Any,
) -> None:
    sim_config(sim_defaults, webhook_duplicate_count=2, webhook_out_of_order=True)
    job = submit(client, input={"num_images": 3, "output_format": "jpeg"})
    done = wait_terminal(client, job["id"])
    assert done["status"] == "completed", done
    task_id = done["provider"]["task_id"]

    def all_sent() -> dict[str, Any] | None:
        task = httpx.get(f"{simulator.url}/_sim/tasks/{task_id}", timeout=5).json()
        deliveries = task["deliveries"]
        return task if len(deliveries) == 4 and all(d["http_status"] == 200 for d in deliveries) else None

    task = eventually(all_sent, timeout=20)
    kinds = [d["kind"] for d in task["deliveries"]]
    assert kinds == ["final", "duplicate", "duplicate", "stale"]
    final_id, stale_id = task["deliveries"][0]["webhook_id"], task["deliveries"][3]["webhook_id"]

    assert received(sql, job["id"]) == [(final_id, False), (final_id, True), (final_id, True), (stale_id, False)]
    assert [w for w, _, _ in webhook_rows(sql, "job_id", job["id"])] == [final_id, stale_id]
    statuses = transitions(sql, job["id"])
    assert statuses.count("completed") == 1 and statuses.count("storing") == 1
    assert statuses == sorted(set(statuses), key=statuses.index)  # no status twice
    after = client.get(f"/v1/jobs/{job['id']}").json()
    assert after["status"] == "completed"
    assert after["provider"]["status"] == "completed"
    assert after["has_nsfw_contents"] == [False, False, False]
    outputs = sql.execute("SELECT index, stored_at IS NOT NULL FROM job_outputs WHERE job_id = %s ORDER BY index",
                          (job["id"],)).fetchall()
    assert outputs == [(0, True), (1, True), (2, True)]
    stored = [e for _, t, e in job_events(sql, job["id"]) if t == "output.stored"]
    assert sorted(e["index"] for e in stored) == [0, 1, 2]  # each output stored once
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{service.settings.s3_prefix}{job['id']}/")
    originals = sorted(o["Key"] for o in listing["Contents"] if not o["Key"].endswith(".thumb.webp"))
    assert originals == sorted(o["key"] for o in after["outputs"])
    assert len(originals) == 3


# --------------------------------------------------------------------------- refused webhooks


def _completed(task_id: str) -> dict[str, Any]:
    return {"id": task_id, "model": DEV, "status": "completed", "outputs": ["http://127.0.0.1:9/x.png"],
            "has_nsfw_contents": [False], "error": "", "timings": {"inference": 5}}


def _bad(case: str, task_id: str) -> tuple[bytes, dict[str, str]]:
    body = encode(_completed(task_id))
    webhook_id = f"evt_bad_{case}"
    now = time.time()
    if case == "forged":
        return body, sign(body, webhook_id, secret="whsec_not_the_account_secret")
    if case == "tampered":
        headers = sign(body, webhook_id)
        return body.replace(b'"completed"', b'"failed"   '), headers
    if case == "stale":
        return body, sign(body, webhook_id, at=now - 400)
    if case == "future":
        return body, sign(body, webhook_id, at=now + 400)
    if case == "wrong-version":
        headers = sign(body, webhook_id)
        return body, {**headers, "webhook-signature": "v1," + headers["webhook-signature"].split(",", 1)[1]}
    if case == "no-headers":
        return body, {"content-type": "application/json"}
    missing = case.removeprefix("no-")
    return body, {k: v for k, v in sign(body, webhook_id).items() if k != missing}


BAD_CASES = ["forged", "tampered", "stale", "future", "wrong-version", "no-headers", "no-webhook-id",
             "no-webhook-timestamp", "no-webhook-signature"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_unverifiable_webhooks_are_401_and_change_nothing(
    service: Service, owner: str, sql: psycopg.Connection[Any], s3: Any, case: str
) -> None:
    task_id = "task_" + uuid.uuid4().hex
    job_id = submitted_job(sql, owner, task_id)
    before, events_before = snapshot(sql, s3, service, job_id), job_events(sql, job_id)
    body, headers = _bad(case, task_id)
    response = httpx.post(f"{service.url}/webhooks/wavespeed/{job_id}", content=body, headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["type"] == "invalid_signature"
    assert SIM_SECRET.removeprefix("whsec_") not in response.text
    assert snapshot(sql, s3, service, job_id) == before
    assert before["job"]["status"] == "submitted"
    assert job_events(sql, job_id) == events_before
    assert webhook_rows(sql, "job_id", job_id) == []
    assert webhook_rows(sql, "webhook_id", f"evt_bad_{case}") == []


def test_a_valid_webhook_after_refused_ones_still_works(
    service: Service, owner: str, sql: psycopg.Connection[Any]
) -> None:
    """The 401s above are not a receiver that refuses everything."""
    task_id = "task_" + uuid.uuid4().hex
    job_id = submitted_job(sql, owner, task_id)
    forged_body, forged_headers = _bad("forged", task_id)
    assert httpx.post(f"{service.url}/webhooks/wavespeed/{job_id}", content=forged_body,
                      headers=forged_headers).status_code == 401
    failed = {**_completed(task_id), "status": "failed", "outputs": [], "error": "the GPU caught fire"}
    response = post(service, job_id, failed, "evt_good")
    assert response.status_code == 200 and response.json()["outcome"] == "advanced"
    row = sql.execute("SELECT status, error FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row == ("failed", "the GPU caught fire")


def _oversized(service: Service, task_id: str) -> bytes:
    prediction = {**_completed(task_id), "padding": "x" * (service.settings.webhook_max_body_bytes + 1)}
    return encode(prediction)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversized_webhook_is_413_and_changes_nothing(
    service: Service, owner: str, sql: psycopg.Connection[Any], s3: Any, chunked: bool
) -> None:
    task_id = "task_" + uuid.uuid4().hex
    job_id = submitted_job(sql, owner, task_id)
    before, events_before = snapshot(sql, s3, service, job_id), job_events(sql, job_id)
    body = _oversized(service, task_id)
    headers = sign(body, "evt_big")  # correctly signed: the size alone is refused

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    response = httpx.post(f"{service.url}/webhooks/wavespeed/{job_id}", content=chunks() if chunked else body,
                          headers=headers)
    assert response.status_code == 413, response.text
    assert snapshot(sql, s3, service, job_id) == before
    assert job_events(sql, job_id) == events_before
    assert webhook_rows(sql, "webhook_id", "evt_big") == []


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"completed"'], ids=["not-json", "array", "string"])
def test_a_verified_webhook_that_is_not_a_json_object_is_400(
    service: Service, owner: str, sql: psycopg.Connection[Any], s3: Any, raw: bytes
) -> None:
    job_id = submitted_job(sql, owner)
    before, events_before = snapshot(sql, s3, service, job_id), job_events(sql, job_id)
    response = httpx.post(f"{service.url}/webhooks/wavespeed/{job_id}", content=raw, headers=sign(raw, "evt_nj"))
    assert response.status_code == 400, response.text
    assert snapshot(sql, s3, service, job_id) == before
    assert job_events(sql, job_id) == events_before


def test_a_verified_webhook_for_an_unknown_job_is_2xx_and_logged(
    service: Service, sql: psycopg.Connection[Any]
) -> None:
    job_id = "job_nobody_" + uuid.uuid4().hex
    task_id = "task_" + uuid.uuid4().hex
    webhook_id = "evt_unknown_" + uuid.uuid4().hex
    for _ in range(2):  # the provider may send it again: still 2xx, still one row
        response = post(service, job_id, _completed(task_id), webhook_id)
        assert response.status_code == 200, response.text
        assert response.json()["outcome"] == "unknown_job"
    assert webhook_rows(sql, "webhook_id", webhook_id) == [(webhook_id, None, "unknown_job")]
    body = sql.execute("SELECT task_id, body FROM webhook_events WHERE webhook_id = %s", (webhook_id,)).fetchone()
    assert body == (task_id, _completed(task_id))
    assert sql.execute("SELECT count(*) FROM jobs WHERE id = %s", (job_id,)).fetchone() == (0,)


def test_an_event_for_another_task_is_2xx_and_does_not_touch_the_job(
    service: Service, owner: str, sql: psycopg.Connection[Any], s3: Any
) -> None:
    job_id = submitted_job(sql, owner, "task_mine_" + uuid.uuid4().hex)
    before = snapshot(sql, s3, service, job_id)
    response = post(service, job_id, _completed("task_someone_else"), "evt_" + uuid.uuid4().hex)
    assert response.status_code == 200 and response.json()["outcome"] == "task_mismatch", response.text
    assert snapshot(sql, s3, service, job_id) == before
    assert [t for _, t, _ in job_events(sql, job_id)][-2:] == ["webhook.received", "provider.task_mismatch"]


def test_a_verified_webhook_with_text_postgres_cannot_store_is_400_and_changes_nothing(
    service: Service, owner: str, sql: psycopg.Connection[Any], s3: Any
) -> None:
    task_id = "task_" + uuid.uuid4().hex
    job_id = submitted_job(sql, owner, task_id)
    before, events_before = snapshot(sql, s3, service, job_id), job_events(sql, job_id)
    webhook_id = "evt_nul_body_" + uuid.uuid4().hex
    response = post(service, job_id, {**_completed(task_id), "error": "a\u0000b"}, webhook_id)
    assert response.status_code == 400, response.text
    assert "NUL" in response.json()["error"]["message"]
    assert snapshot(sql, s3, service, job_id) == before
    assert job_events(sql, job_id) == events_before
    assert webhook_rows(sql, "webhook_id", webhook_id) == []
