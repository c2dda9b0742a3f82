"""The whole pipeline for both models over real parts: API → Postgres → simulator →
signed webhook → S3 → completed."""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import BUCKET, Service, sim_config
from tests.integration.helpers import s3_object, sha256, sim_tasks, submit, wait_terminal


@pytest.mark.parametrize(
    ("model", "extra", "count"),
    [
        ("wavespeed-ai/flux-dev-lora", {"num_images": 4, "output_format": "png", "size": "320*256"}, 4),
        ("wavespeed-ai/flux-krea-dev-lora", {"output_format": "webp", "size": "256*384"}, 1),
        ("wavespeed-ai/flux-dev-lora", {"enable_base64_output": True}, 1),
    ],
    ids=["dev-lora-4-png", "krea-webp", "base64-requested"],
)
def test_job_completes_with_every_output_in_s3(
    client: httpx.Client, s3: Any, simulator: Any, model: str, extra: dict[str, Any], count: int
) -> None:
    job = submit(client, model=model, input=extra)
    assert job["status"] == "queued"
    done = wait_terminal(client, job["id"])
    assert done["status"] == "completed", done
    assert len(done["outputs"]) == count
    fmt = extra.get("output_format", "jpeg")
    width, height = (int(x) for x in extra.get("size", "256*256").split("*"))
    for output in done["outputs"]:
        data = s3_object(s3, BUCKET, output["key"])
        assert output["size_bytes"] == len(data)
        assert output["sha256"] == sha256(data)
        assert output["key"].endswith(f".{fmt}")
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == (width, height)
        # The presigned URL serves the same bytes.
        assert httpx.get(output["url"]).content == data
        # A thumbnail beside it, at most 256 px, made once at store time.
        with Image.open(io.BytesIO(httpx.get(output["thumbnail_url"]).content)) as thumb:
            assert thumb.format == "WEBP" and max(thumb.size) == 256
    assert Decimal(done["cost_usd"]) == Decimal("0.015") * count
    assert done["provider"]["task_id"]
    assert done["completed_at"] and done["submitted_at"]
    # Upstream always got URL outputs and an async task, whatever the client asked.
    [task] = [t for t in sim_tasks(simulator.url) if t["id"] == done["provider"]["task_id"]]
    detail = httpx.get(f"{simulator.url}/_sim/tasks/{task['id']}").json()
    assert detail["prediction"]["input"]["enable_base64_output"] is False
    assert detail["prediction"]["input"]["enable_sync_mode"] is False
    assert detail["prediction"]["input"]["guidance_scale"] == 3.5  # defaults filled in upstream


def test_failed_task_fails_the_job_with_the_provider_error(client: httpx.Client, sim_defaults: Any) -> None:
    sim_config(sim_defaults, failure_rate=1.0)
    job = submit(client)
    done = wait_terminal(client, job["id"])
    assert done["status"] == "failed"
    assert done["error"]
    assert done["outputs"] == []


def test_events_record_the_whole_story_oldest_first(client: httpx.Client) -> None:
    job = submit(client)
    wait_terminal(client, job["id"])
    events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    types = [e["type"] for e in events]
    assert types[0] == "job.created"
    assert "submit.accepted" in types and "webhook.received" in types and "output.stored" in types
    statuses = [e["detail"]["to"] for e in events if e["type"] == "status.changed"]
    assert statuses[-1] == "completed"
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)


def test_outputs_endpoint_redirects_to_the_stored_object(client: httpx.Client, s3: Any) -> None:
    job = wait_terminal(client, submit(client)["id"])
    response = client.get(f"/v1/jobs/{job['id']}/outputs/0", follow_redirects=False)
    assert response.status_code == 302
    assert httpx.get(response.headers["location"]).content == s3_object(s3, BUCKET, job["outputs"][0]["key"])
    assert client.get(f"/v1/jobs/{job['id']}/outputs/7").status_code == 404


def test_another_owner_gets_404_for_every_job_call(service: Service, client: httpx.Client) -> None:
    job = wait_terminal(client, submit(client)["id"])
    with service.client() as stranger:
        for method, path in [
            ("GET", f"/v1/jobs/{job['id']}"),
            ("GET", f"/v1/jobs/{job['id']}/events"),
            ("POST", f"/v1/jobs/{job['id']}/cancel"),
            ("GET", f"/v1/jobs/{job['id']}/outputs/0"),
        ]:
            response = stranger.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
        assert stranger.get("/v1/jobs").json()["data"] == []


def test_requests_without_a_valid_key_are_401(service: Service) -> None:
    assert httpx.get(service.url + "/v1/jobs").status_code == 401
    bad = httpx.get(service.url + "/v1/jobs", headers={"Authorization": "Bearer wsj_nope"})
    assert bad.status_code == 401
    assert bad.json()["error"]["type"] == "unauthorized"
