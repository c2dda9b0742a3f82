"""The WaveSpeed-compatible facade driven by the official ``wavespeed`` SDK, unmodified,
with only ``base_url`` pointed at this service — and by plain HTTP for what the SDK
does not expose (``?webhook=``, the error envelope)."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
import standardwebhooks
import wavespeed  # type: ignore[import-untyped]  # the SDK ships no type information

from devtools.serverthread import ServerThread
from tests.conftest import BUCKET, Service, run_service, sim_config
from tests.integration.helpers import eventually, s3_object, sha256
from tests.servers import WebhookCatcher

DEV = "wavespeed-ai/flux-dev-lora"
KREA = "wavespeed-ai/flux-krea-dev-lora"
SMALL = {"size": "256*256"}


@pytest.fixture
def sdk(service: Service, owner_key: str) -> wavespeed.Client:
    """The official client, changed in one place: base_url."""
    return wavespeed.Client(api_key=owner_key, base_url=service.url, retry_interval=0.2)


def only_job(api: httpx.Client) -> dict[str, Any]:
    [job] = api.get("/v1/jobs").json()["data"]
    return job  # type: ignore[no-any-return]


def facade_post(service: Service, owner_key: str, path: str, body: Any, **params: str) -> httpx.Response:
    return httpx.post(
        f"{service.url}/api/v3/{path}",
        json=body,
        params=params,
        headers={"Authorization": f"Bearer {owner_key}"},
        timeout=70,
    )


# --------------------------------------------------------------------------- the SDK


@pytest.mark.parametrize(
    ("model", "input_", "count"),
    [
        (DEV, {"prompt": "a red fox", **SMALL, "num_images": 2, "output_format": "png"}, 2),
        (KREA, {"prompt": "a blue heron", **SMALL, "output_format": "webp"}, 1),
    ],
    ids=["flux-dev-lora", "flux-krea-dev-lora"],
)
def test_sdk_run_returns_stored_urls_whose_bytes_are_the_s3_objects(
    sdk: wavespeed.Client,
    api: httpx.Client,
    s3: Any,
    s3_endpoint: str,
    simulator: ServerThread,
    model: str,
    input_: dict[str, Any],
    count: int,
) -> None:
    result = sdk.run(model, input_, timeout=30, poll_interval=0.2)

    job = only_job(api)
    assert job["status"] == "completed" and job["model"] == model
    assert len(result["outputs"]) == count == len(job["outputs"])
    for url, stored in zip(result["outputs"], job["outputs"], strict=True):
        # This service's stored copy (a presigned S3 URL), not the provider's CDN.
        assert url.startswith(s3_endpoint) and not url.startswith(simulator.url)
        assert urlsplit(url).path == f"/{BUCKET}/{stored['key']}"
        data = httpx.get(url).content
        assert data == s3_object(s3, BUCKET, stored["key"])
        assert sha256(data) == stored["sha256"]
        assert stored["key"].endswith("." + input_["output_format"])


def test_sdk_result_query_is_the_prediction_of_the_job(
    sdk: wavespeed.Client, api: httpx.Client, service: Service
) -> None:
    sdk.run(DEV, {"prompt": "a fox", **SMALL}, timeout=30, poll_interval=0.2)
    job = only_job(api)

    answer = sdk.get_result(job["id"])

    assert answer["code"] == 200 and answer["message"] == "success"
    data = answer["data"]
    assert data["id"] == job["id"] and data["model"] == DEV and data["status"] == "completed"
    assert data["urls"]["get"] == f"{service.url}/api/v3/predictions/{job['id']}/result"
    # Presigned afresh on each read: the same objects, maybe another signature.
    assert [urlsplit(u).path for u in data["outputs"]] == [f"/{BUCKET}/{o['key']}" for o in job["outputs"]]
    assert data["has_nsfw_contents"] == job["has_nsfw_contents"]
    assert data["timings"]["inference"] == job["provider"]["inference_ms"] > 0
    assert data["created_at"] == job["created_at"]
    assert data["error"] == ""
    # Defaults filled in, as /v1/jobs stores them.
    assert data["input"]["guidance_scale"] == 3.5 and data["input"]["num_inference_steps"] == 28


@pytest.mark.parametrize(
    ("model", "input_", "field"),
    [
        (DEV, {"prompt": "x", "size": "100*100"}, "size"),
        (DEV, {"size": "256*256"}, "prompt"),
        (DEV, {"prompt": "x", "loras": [{"path": "a/b", "scale": 9}]}, "loras.0.scale"),
        (KREA, {"prompt": "x", "num_images": 2}, "num_images"),
        (KREA, {"prompt": "x", "loras": [{"path": "a/b", "scale": 1}] * 4}, "loras"),
    ],
    ids=["size-out-of-range", "prompt-missing", "lora-scale", "krea-has-no-num_images", "krea-max-3-loras"],
)
def test_sdk_validation_error_names_the_field(
    sdk: wavespeed.Client, api: httpx.Client, model: str, input_: dict[str, Any], field: str
) -> None:
    with pytest.raises(RuntimeError) as raised:
        sdk.run(model, input_, timeout=10)
    message = str(raised.value)
    assert "HTTP 422" in message
    assert f"{field}: " in message  # the caller's own field name, not "input.<field>"
    assert "input." not in message
    assert api.get("/v1/jobs").json()["data"] == []  # nothing recorded, nothing billed


def test_sdk_sync_mode_answers_the_finished_job_in_one_request(
    sdk: wavespeed.Client, api: httpx.Client, s3: Any, simulator: ServerThread
) -> None:
    result = sdk.run(DEV, {"prompt": "a fox", **SMALL}, enable_sync_mode=True, timeout=30)

    job = only_job(api)
    assert job["status"] == "completed"
    [url] = result["outputs"]
    assert httpx.get(url).content == s3_object(s3, BUCKET, job["outputs"][0]["key"])
    # The job keeps what the client asked; upstream got an async task all the same.
    assert job["input"]["enable_sync_mode"] is True
    detail = httpx.get(f"{simulator.url}/_sim/tasks/{job['provider']['task_id']}").json()
    assert detail["prediction"]["input"]["enable_sync_mode"] is False


def test_sdk_base64_output_is_the_stored_bytes_as_data_uris(
    sdk: wavespeed.Client, api: httpx.Client, s3: Any
) -> None:
    result = sdk.run(
        DEV,
        {"prompt": "a fox", **SMALL, "num_images": 2, "enable_base64_output": True},
        timeout=30,
        poll_interval=0.2,
    )

    job = only_job(api)
    assert len(result["outputs"]) == 2
    for uri, stored in zip(result["outputs"], job["outputs"], strict=True):
        head, _, payload = uri.partition(",")
        assert head == "data:image/jpeg;base64"
        assert base64.b64decode(payload) == s3_object(s3, BUCKET, stored["key"])


def test_sdk_raises_the_provider_error_of_a_failed_job(
    sdk: wavespeed.Client, api: httpx.Client, sim_defaults: ServerThread
) -> None:
    sim_config(sim_defaults, failure_rate=1.0)
    with pytest.raises(RuntimeError) as raised:
        sdk.run(DEV, {"prompt": "a fox", **SMALL}, timeout=30, poll_interval=0.2)
    job = only_job(api)
    assert job["status"] == "failed" and job["error"]
    assert str(raised.value) == f"Prediction failed (task_id: {job['id']}): {job['error']}"


def test_canceled_job_reads_as_failed_with_the_reason(
    service: Service, owner_key: str, sdk: wavespeed.Client, api: httpx.Client, sim_defaults: ServerThread
) -> None:
    sim_config(sim_defaults, completion_delay=30.0)
    job_id = facade_post(service, owner_key, DEV, {"prompt": "a fox", **SMALL}).json()["data"]["id"]
    assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 200

    data = sdk.get_result(job_id)["data"]
    assert data["status"] == "failed" and data["error"] == "the job was canceled"
    assert data["outputs"] == []


def test_sync_hold_ends_at_its_bound_and_the_sdk_names_the_job_to_poll(
    database_url: str, s3_endpoint: str, sim_defaults: ServerThread
) -> None:
    sim_config(sim_defaults, completion_delay=3.0)
    with run_service(database_url, s3_endpoint, sim_defaults.url, facade_sync_timeout_seconds=0.5) as svc:
        client = wavespeed.Client(api_key=svc.new_key(), base_url=svc.url, retry_interval=0.2)

        held = client.run_no_throw(DEV, {"prompt": "a fox", **SMALL}, enable_sync_mode=True, timeout=30)

        # The SDK recognises the facade's answer as a sync timeout, not a failure...
        assert held["status"] == "processing" and held["outputs"] is None
        assert "Sync mode timed out" in held["error"]

        # ...and the task id it reports is the job, which goes on to complete.
        def completed() -> dict[str, Any] | None:
            data: dict[str, Any] = client.get_result(held["task_id"])["data"]
            return data if data["status"] == "completed" else None

        assert eventually(completed, timeout=30, interval=0.2)["outputs"]


# --------------------------------------------------------------------------- plain HTTP


def test_plain_http_submit_with_webhook_leads_to_a_signed_callback(
    service: Service, owner_key: str, api: httpx.Client, sql: psycopg.Connection[Any], catcher: WebhookCatcher
) -> None:
    hook = catcher.url("/hooks/wavespeed?tenant=7")
    response = facade_post(service, owner_key, DEV, {"prompt": "a fox", **SMALL}, webhook=hook)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["code"], body["message"]) == (200, "success")
    job_id = body["data"]["id"]
    assert body["data"]["status"] == "created"
    assert body["data"]["urls"]["get"] == f"{service.url}/api/v3/predictions/{job_id}/result"
    assert api.get(f"/v1/jobs/{job_id}").json()["callback_url"] == hook

    [request] = catcher.wait_for(1, timeout=30)

    secret = api.get("/v1/callback-secret").json()["secret"]  # the owner's own (api shares the facade's key)
    event = standardwebhooks.Webhook(secret).verify(request.body, request.headers)
    assert request.path == "/hooks/wavespeed" and request.query == "tenant=7"
    assert event["type"] == "job.completed"
    assert event["data"]["id"] == job_id and event["data"]["status"] == "completed"


def test_webhook_that_is_not_an_http_url_is_rejected_by_name(
    service: Service, owner_key: str, api: httpx.Client
) -> None:
    response = facade_post(service, owner_key, DEV, {"prompt": "a fox"}, webhook="ftp://example.com/x")
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == 422 and body["data"] is None
    assert body["message"].startswith("webhook: ")
    assert api.get("/v1/jobs").json()["data"] == []


@pytest.mark.parametrize(
    ("content", "status", "starts"),
    [
        (b"{not json", 400, "body: "),
        (b"[1, 2]", 422, "body: "),
        (b"x" * (256 * 1024 + 1), 413, "the body must be at most"),
    ],
    ids=["not-json", "not-an-object", "too-large"],
)
def test_unreadable_bodies_answer_the_envelope(
    service: Service, owner_key: str, content: bytes, status: int, starts: str
) -> None:
    response = httpx.post(
        f"{service.url}/api/v3/{DEV}",
        content=content,
        timeout=10,
        headers={"Authorization": f"Bearer {owner_key}", "Content-Type": "application/json"},
    )
    assert response.status_code == status
    body = response.json()
    assert body["code"] == status and body["data"] is None and body["message"].startswith(starts)


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-key", "Basic abc"])
def test_missing_or_wrong_key_is_a_401_envelope(service: Service, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for response in (
        httpx.post(f"{service.url}/api/v3/{DEV}", json={"prompt": "x"}, headers=headers, timeout=10),
        httpx.get(f"{service.url}/api/v3/predictions/job_x/result", headers=headers, timeout=10),
    ):
        assert response.status_code == 401
        assert response.json()["code"] == 401 and response.json()["data"] is None
        assert response.headers["www-authenticate"] == "Bearer"
        assert "not-a-key" not in response.text


def test_another_owners_job_is_a_404_the_sdk_reports(service: Service, sdk: wavespeed.Client) -> None:
    other = service.new_key()
    job_id = facade_post(service, other, DEV, {"prompt": "a fox", **SMALL}).json()["data"]["id"]

    with pytest.raises(RuntimeError) as raised:
        sdk.get_result(job_id)
    assert "HTTP 404" in str(raised.value) and job_id in str(raised.value)


@pytest.mark.parametrize(
    ("method", "path", "status", "says"),
    [
        ("POST", "wavespeed-ai/flux-schnell", 404, "wavespeed-ai/flux-dev-lora"),
        ("POST", "predictions", 404, "no such endpoint: POST /api/v3/predictions"),
        ("GET", "webhook/secret", 404, "no such endpoint"),
        ("GET", "predictions/job_1", 404, "predictions/{id}/result"),
        ("GET", DEV, 405, "use POST"),
        ("DELETE", "predictions/job_1/result", 405, "use GET"),
    ],
)
def test_other_paths_under_api_v3_answer_json_in_the_same_shape(
    service: Service, owner_key: str, method: str, path: str, status: int, says: str
) -> None:
    response = httpx.request(
        method,
        f"{service.url}/api/v3/{path}",
        headers={"Authorization": f"Bearer {owner_key}"},
        json={"prompt": "x"} if method == "POST" else None,
        timeout=10,
    )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["code"] == status and body["data"] is None and says in body["message"]


def test_sdk_on_a_model_this_service_does_not_serve_raises_readably(sdk: wavespeed.Client) -> None:
    with pytest.raises(RuntimeError) as raised:
        sdk.run("wavespeed-ai/z-image/turbo", {"prompt": "x"}, timeout=10)
    assert "HTTP 404" in str(raised.value) and "flux-krea-dev-lora" in str(raised.value)


def test_facade_jobs_are_in_the_history_like_any_other(sdk: wavespeed.Client, api: httpx.Client) -> None:
    sdk.run(KREA, {"prompt": "a fox", **SMALL}, timeout=30, poll_interval=0.2)
    job = only_job(api)
    assert (
        api.get("/v1/jobs", params={"model": KREA, "status": "completed"}).json()["data"][0]["id"]
        == job["id"]
    )
    events = [e["type"] for e in api.get(f"/v1/jobs/{job['id']}/events").json()["data"]]
    assert events[0] == "job.created" and "output.stored" in events
