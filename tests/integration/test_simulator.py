"""The WaveSpeed simulator over real HTTP: the v3 API, signed webhooks, real images, and
every fault knob, flipped live through ``POST /_sim/config``."""

from __future__ import annotations

import base64
import contextlib
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from devtools.simulator.app import create_simulator_app
from devtools.simulator.config import SimulatorConfig
from service.domain.errors import SignatureInvalid
from service.domain.schemas import FLUX_DEV_LORA, FLUX_KREA_DEV_LORA
from service.domain.signing import verify_wavespeed
from tests.servers import CaughtRequest, ServerThread, WebhookCatcher

CONFIG = SimulatorConfig(
    completion_delay=0.05,
    processing_delay=0.01,
    webhook_retry_delay=0.02,
    submit_hang_seconds=5.0,
    seed=1234,
)
SECRET = CONFIG.webhook_secret
AUTH = {"Authorization": f"Bearer {CONFIG.api_key}"}
PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


@pytest.fixture(scope="module")
def sim() -> Iterator[ServerThread]:
    with ServerThread(create_simulator_app(CONFIG)) as server:
        yield server


@pytest.fixture(scope="module")
def web() -> Iterator[httpx.Client]:
    """A client without the API key, for output, upload and blob URLs (and 401 checks)."""
    with httpx.Client(timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def _api_client(sim: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, headers=AUTH, timeout=10) as client:
        yield client


@pytest.fixture
def sim_api(_api_client: httpx.Client, catcher: WebhookCatcher) -> httpx.Client:
    # Reset first: it cancels the previous test's in-flight webhooks before we clear.
    _api_client.post("/_sim/reset").raise_for_status()
    catcher.clear()
    return _api_client


def knobs(sim_api: httpx.Client, **values: Any) -> None:
    response = sim_api.post("/_sim/config", json=values)
    assert response.status_code == 200, response.text


def submit(
    sim_api: httpx.Client, model: str, body: dict[str, Any], webhook: str | None = None, **kwargs: Any
) -> httpx.Response:
    params = {"webhook": webhook} if webhook else None
    return sim_api.post(f"/api/v3/{model}", json=body, params=params, **kwargs)


def submit_ok(sim_api: httpx.Client, model: str, body: dict[str, Any], webhook: str | None = None) -> str:
    response = submit(sim_api, model, body, webhook)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["data"]["id"]
    return task_id


def wait_terminal(sim_api: httpx.Client, task_id: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data: dict[str, Any] = sim_api.get(f"/api/v3/predictions/{task_id}/result").json()["data"]
        if data["status"] in ("completed", "failed"):
            return data
        assert time.monotonic() < deadline, f"task {task_id} still {data['status']}"
        time.sleep(0.02)


def tasks(sim_api: httpx.Client) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = sim_api.get("/_sim/tasks").json()
    return result


def stats(sim_api: httpx.Client) -> dict[str, int]:
    result: dict[str, int] = sim_api.get("/_sim/stats").json()
    return result


def verify(request: CaughtRequest, secret: str = SECRET) -> str:
    return verify_wavespeed(secret, request.headers, request.body, now=time.time())


def check_image(data: bytes, size: str, fmt: str) -> None:
    width, height = (int(side) for side in size.split("*"))
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (width, height)
        assert image.format == PIL_FORMATS[fmt]


# -- the happy path ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "body", "count"),
    [
        (FLUX_DEV_LORA, {"prompt": "a cat", "size": "512*768", "output_format": "png", "num_images": 4}, 4),
        (FLUX_DEV_LORA, {"prompt": "a cat", "size": "256*256", "loras": [{"path": "a/b", "scale": 1}]}, 1),
        (FLUX_KREA_DEV_LORA, {"prompt": "a fox", "size": "640*384", "output_format": "webp"}, 1),
    ],
)
def test_submit_webhook_and_outputs(
    web: httpx.Client,
    sim_api: httpx.Client,
    catcher: WebhookCatcher,
    model: str,
    body: dict[str, Any],
    count: int,
) -> None:
    answer = submit(sim_api, model, body, webhook=catcher.url("/hooks/job-1?token=x"))
    assert answer.status_code == 200
    envelope = answer.json()
    assert envelope["code"] == 200 and envelope["message"] == "success"
    created = envelope["data"]
    assert created["status"] == "created" and created["model"] == model
    assert created["outputs"] == [] and created["error"] == ""
    assert len(created["id"]) == 32
    assert created["urls"]["get"] == f"{sim_api.base_url}/api/v3/predictions/{created['id']}/result"

    [hook] = catcher.wait_for(1)
    assert hook.method == "POST" and hook.path == "/hooks/job-1" and hook.query == "token=x"
    assert hook.headers["content-type"] == "application/json"
    assert verify(hook) == hook.headers["webhook-id"]
    event = hook.json()
    assert "code" not in event  # the webhook body is the bare prediction
    assert event["id"] == created["id"] and event["status"] == "completed"
    assert event["input"]["prompt"] == body["prompt"]
    assert event["has_nsfw_contents"] == [False] * count
    assert isinstance(event["timings"]["inference"], int) and event["timings"]["inference"] >= 50
    fmt = body.get("output_format", "jpeg")
    assert len(event["outputs"]) == count
    for index, url in enumerate(event["outputs"]):
        assert url == f"{sim_api.base_url}/outputs/{created['id']}/{index}.{fmt}"
        download = web.get(url)  # no auth: output URLs are public CDN URLs
        assert download.status_code == 200
        assert download.headers["content-type"] == f"image/{fmt}"
        assert int(download.headers["content-length"]) == len(download.content)
        check_image(download.content, body["size"], fmt)
    assert stats(sim_api)["output_downloads"] == count


def test_outputs_are_deterministic_and_distinct(web: httpx.Client, sim_api: httpx.Client) -> None:
    task_id = submit_ok(sim_api, FLUX_DEV_LORA, {"prompt": "p", "num_images": 2, "size": "256*256", "seed": 5})
    outputs = wait_terminal(sim_api, task_id)["outputs"]
    first, second = (web.get(url).content for url in outputs)
    assert first != second
    assert web.get(outputs[0]).content == first
    assert web.get(outputs[0].replace(".jpeg", ".png")).status_code == 404
    assert web.get(outputs[0].replace("/0.jpeg", "/2.jpeg")).status_code == 404


def test_result_query_moves_through_the_states(sim_api: httpx.Client) -> None:
    knobs(sim_api, completion_delay=0.4, processing_delay=0.1)
    task_id = submit_ok(sim_api, FLUX_DEV_LORA, {"prompt": "p"})
    early = sim_api.get(f"/api/v3/predictions/{task_id}/result").json()
    assert early["code"] == 200 and early["data"]["status"] in ("created", "processing")
    time.sleep(0.2)
    assert sim_api.get(f"/api/v3/predictions/{task_id}/result").json()["data"]["status"] == "processing"
    done = wait_terminal(sim_api, task_id)
    assert done["status"] == "completed" and len(done["outputs"]) == 1
    assert done["input"]["num_images"] == 1  # defaults filled in

    missing = sim_api.get("/api/v3/predictions/nope/result")
    assert missing.status_code == 404
    assert missing.json() == {"code": 404, "message": "Prediction not found", "data": None}


def test_a_held_task_ends_when_told_to_and_not_before(sim_api: httpx.Client) -> None:
    knobs(sim_api, completion_delay=120.0, processing_delay=0.0)
    task_id = submit_ok(sim_api, FLUX_DEV_LORA, {"prompt": "p"})
    deadline = time.monotonic() + 5
    while sim_api.get(f"/api/v3/predictions/{task_id}/result").json()["data"]["status"] != "processing":
        assert time.monotonic() < deadline, "the task never started processing"
        time.sleep(0.02)
    time.sleep(0.3)  # held: a task with a 120 s delay is still processing a moment later
    assert sim_api.get(f"/api/v3/predictions/{task_id}/result").json()["data"]["status"] == "processing"
    finished = sim_api.post(f"/_sim/tasks/{task_id}/finish")
    assert finished.status_code == 200, finished.text
    done = wait_terminal(sim_api, task_id, timeout=5.0)  # not 120 s
    assert done["status"] == "completed" and len(done["outputs"]) == 1
    assert sim_api.post("/_sim/tasks/nope/finish").status_code == 404


def test_predictions_history(sim_api: httpx.Client) -> None:
    ids = [
        submit_ok(sim_api, FLUX_DEV_LORA, {"prompt": "one"}),
        submit_ok(sim_api, FLUX_KREA_DEV_LORA, {"prompt": "two"}),
        submit_ok(sim_api, FLUX_DEV_LORA, {"prompt": "three"}),
    ]
    for task_id in ids:
        wait_terminal(sim_api, task_id)

    page = sim_api.post("/api/v3/predictions", json={"page": 1, "page_size": 2}).json()["data"]
    assert page["page"] == 1 and page["total"] == 3
    assert [item["id"] for item in page["items"]] == [ids[2], ids[1]]  # newest first
    assert page["items"][0]["input"]["prompt"] == "three"
    second = sim_api.post("/api/v3/predictions", json={"page": 2, "page_size": 2}).json()["data"]
    assert [item["id"] for item in second["items"]] == [ids[0]]

    krea = sim_api.post("/api/v3/predictions", json={"page": 1, "page_size": 10, "model": FLUX_KREA_DEV_LORA})
    assert [item["id"] for item in krea.json()["data"]["items"]] == [ids[1]]
    failed = sim_api.post("/api/v3/predictions", json={"page": 1, "page_size": 10, "status": "failed"})
    assert failed.json()["data"]["total"] == 0
    after = page["items"][1]["created_at"]  # the second task's time: only the third is later
    newer = sim_api.post("/api/v3/predictions", json={"page": 1, "page_size": 10, "created_after": after})
    assert [item["id"] for item in newer.json()["data"]["items"]] == [ids[2]]
    older = sim_api.post("/api/v3/predictions", json={"page": 1, "page_size": 10, "created_before": after})
    assert [item["id"] for item in older.json()["data"]["items"]] == [ids[0]]

    bad = sim_api.post("/api/v3/predictions", json={"page": 1, "page_size": 101})
    assert bad.status_code == 422 and bad.json()["message"].startswith("page_size:")


# -- validation and auth -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "body", "field"),
    [
        (FLUX_DEV_LORA, {"prompt": "p", "size": "100*100"}, "size"),
        (FLUX_DEV_LORA, {"prompt": ""}, "prompt"),
        (FLUX_DEV_LORA, {}, "prompt"),
        (FLUX_DEV_LORA, {"prompt": "p", "num_images": 5}, "num_images"),
        (FLUX_DEV_LORA, {"prompt": "p", "loras": [{"path": "a/b", "scale": 9}]}, "loras.0.scale"),
        (FLUX_DEV_LORA, {"prompt": "p", "output_format": "gif"}, "output_format"),
        (FLUX_KREA_DEV_LORA, {"prompt": "p", "num_images": 2}, "num_images"),
        (FLUX_KREA_DEV_LORA, {"prompt": "p", "loras": [{"path": "a/b", "scale": 1}] * 4}, "loras"),
    ],
)
def test_validation_names_the_field(sim_api: httpx.Client, model: str, body: dict[str, Any], field: str) -> None:
    answer = submit(sim_api, model, body)
    assert answer.status_code == 422
    envelope = answer.json()
    assert envelope["code"] == 422 and envelope["data"] is None
    assert envelope["message"].startswith(f"{field}: ")
    assert tasks(sim_api) == []
    assert stats(sim_api)["submits_invalid"] == 1


def test_bad_webhook_url_and_bad_json(sim_api: httpx.Client) -> None:
    answer = submit(sim_api, FLUX_DEV_LORA, {"prompt": "p"}, webhook="ftp://example.com/x")
    assert answer.status_code == 422 and answer.json()["message"].startswith("webhook: ")
    garbled = sim_api.post(f"/api/v3/{FLUX_DEV_LORA}", content=b"{not json")
    assert garbled.status_code == 400 and garbled.json()["code"] == 400
    listed = sim_api.post(f"/api/v3/{FLUX_DEV_LORA}", json=["prompt"])
    assert listed.status_code == 422 and listed.json()["message"] == "body: must be a JSON object"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "sim-key"}])
def test_unauthorized_without_the_key(
    web: httpx.Client, sim: ServerThread, sim_api: httpx.Client, headers: dict[str, str]
) -> None:
    for method, path in [
        ("POST", f"/api/v3/{FLUX_DEV_LORA}"),
        ("GET", "/api/v3/predictions/x/result"),
        ("POST", "/api/v3/predictions"),
        ("GET", "/api/v3/webhook/secret"),
        ("POST", "/api/v3/media/uploads"),
    ]:
        answer = web.request(method, sim.url + path, headers=headers, json={"prompt": "p"})
        assert answer.status_code == 401, path
        assert answer.json()["code"] == 401 and answer.json()["data"] is None
    assert tasks(sim_api) == []


def test_unknown_routes_answer_the_envelope(sim_api: httpx.Client) -> None:
    answer = sim_api.post("/api/v3/wavespeed-ai/flux-schnell", json={"prompt": "p"})
    assert answer.status_code == 404 and answer.json()["code"] == 404
    assert sim_api.get("/nowhere").json()["code"] == 404


def test_webhook_secret(sim_api: httpx.Client) -> None:
    envelope = sim_api.get("/api/v3/webhook/secret").json()
    assert envelope == {"code": 200, "message": "success", "data": {"secret": SECRET}}


# -- submit faults -----------------------------------------------------------------------


def test_submit_429_with_retry_after_creates_no_task(sim_api: httpx.Client) -> None:
    knobs(sim_api, submit_429_rate=1.0, retry_after_seconds=7)
    answer = submit(sim_api, FLUX_DEV_LORA, {"prompt": "p"})
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "7"
    assert answer.json()["code"] == 429 and answer.json()["data"] is None
    assert tasks(sim_api) == []
    assert stats(sim_api)["submits_rejected_429"] == 1
    knobs(sim_api, submit_429_rate=0.0)
    assert submit(sim_api, FLUX_DEV_LORA, {"prompt": "p"}).status_code == 200


def test_submit_500_creates_no_task(sim_api: httpx.Client) -> None:
    knobs(sim_api, submit_500_rate=1.0)
    answer = submit(sim_api, FLUX_KREA_DEV_LORA, {"prompt": "p"})
    assert answer.status_code == 500 and answer.json()["code"] == 500
    assert tasks(sim_api) == []
    assert stats(sim_api)["submits_rejected_500"] == 1


def test_submit_rates_in_between_are_seeded(sim_api: httpx.Client) -> None:
    knobs(sim_api, submit_500_rate=0.5, seed=99)
    first = [submit(sim_api, FLUX_DEV_LORA, {"prompt": "p"}).status_code for _ in range(20)]
    knobs(sim_api, seed=98)
    knobs(sim_api, seed=99)  # a new seed re-seeds the dice
    second = [submit(sim_api, FLUX_DEV_LORA, {"prompt": "p"}).status_code for _ in range(20)]
    assert first == second
    assert {200, 500} == set(first)


def test_hung_submit_creates_the_task_but_loses_the_answer(
    sim_api: httpx.Client, catcher: WebhookCatcher
) -> None:
    knobs(sim_api, submit_hang_rate=1.0, submit_hang_seconds=5.0)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        submit(sim_api, FLUX_DEV_LORA, {"prompt": "p"}, webhook=catcher.url(), timeout=0.5)
    [task] = tasks(sim_api)
    assert task["hung"] is True
    # The task runs anyway, and its webhook is how a client learns its id.
    [hook] = catcher.wait_for(1)
    assert hook.json()["id"] == task["id"] and hook.json()["status"] == "completed"
    assert time.monotonic() - started < 3
    assert stats(sim_api)["submits_hung"] == 1
    assert stats(sim_api)["submits_accepted"] == 1


def test_hung_submit_then_cuts_the_connection(sim_api: httpx.Client) -> None:
    knobs(sim_api, submit_hang_rate=1.0, submit_hang_seconds=0.1)
    with pytest.raises(httpx.RemoteProtocolError):
        submit(sim_api, FLUX_DEV_LORA, {"prompt": "p"})
    [task] = tasks(sim_api)
    assert wait_terminal(sim_api, task["id"])["status"] == "completed"


# -- task and webhook faults -------------------------------------------------------------


def test_failure_rate(sim_api: httpx.Client, catcher: WebhookCatcher) -> None:
    knobs(sim_api, failure_rate=1.0)
    task_id = submit_ok(sim_api, FLUX_DEV_LORA, {"prompt": "p", "num_images": 2}, webhook=catcher.url())
    [hook] = catcher.wait_for(1)
    verify(hook)
    event = hook.json()
    assert event["id"] == task_id and event["status"] == "failed"
    assert event["error"] and event["outputs"] == [] and event["has_nsfw_contents"] == []
    assert wait_terminal(sim_api, task_id)["status"] == "failed"
    assert stats(sim_api)["tasks_failed"] == 1


def test_webhook_drop(sim_api: httpx.Client, catcher: WebhookCatcher) -> None:
    knobs(sim_api, webhook_drop_rate=1.0)
    task_id = submit_ok(sim_api, FLUX_DEV_LORA, {"prompt": "p"}, webhook=catcher.url())
    assert wait_terminal(sim_api, task_id)["status"] == "completed"  # the result query still works
    time.sleep(0.2)
    assert catcher.snapshot() == []
    [task] = tasks(sim_api)
    assert task["webhook_dropped"] is True and task["webhook_attempts"] == 0
    assert stats(sim_api)["webhooks_dropped"] == 1


def test_webhook_duplicates_share_the_webhook_id(sim_api: httpx.Client, catcher: WebhookCatcher) -> None:
    knobs(sim_api, webhook_duplicate_count=2)
    submit_ok(sim_api, FLUX_DEV_LORA, {"prompt": "p"}, webhook=catcher.url())
    hooks = catcher.wait_for(3)
    time.sleep(0.1)
    assert len(catcher.snapshot()) == 3
    assert len({verify(hook) for hook in hooks}) == 1
    assert len({hook.body for hook in hooks}) == 1
    [task] = tasks(sim_api)
    assert task["webhook_attempts"] == 3 and len(set(task["webhook_ids"])) == 1
    assert [d["kind"] for d in task["deliveries"]] == ["final", "duplicate", "duplicate"]


def test_webhook_out_of_order_sends_a_stale_event_last(sim_api: httpx.Client, catcher: WebhookCatcher) -> None:
    knobs(sim_api, webhook_out_of_order=True)
    submit_ok(sim_api, FLUX_DEV_LORA, {"prompt": "p"}, webhook=catcher.url())
    final, stale = catcher.wait_for(2)
    assert final.json()["status"] == "completed" and stale.json()["status"] == "processing"
    assert stale.json()["outputs"] == []
    assert verify(final) != verify(stale)  # its own webhook-id, validly signed


def test_webhook_bad_signature(sim_api: httpx.Client, catcher: WebhookCatcher) -> None:
    knobs(sim_api, webhook_bad_signature_rate=1.0)
    submit_ok(sim_api, FLUX_DEV_LORA, {"prompt": "p"}, webhook=catcher.url())
    [hook] = catcher.wait_for(1)
    with pytest.raises(SignatureInvalid):
        verify(hook)
    assert stats(sim_api)["webhooks_bad_signature"] == 1


def test_webhook_delay(sim_api: httpx.Client, catcher: WebhookCatcher) -> None:
    knobs(sim_api, webhook_delay=0.4)
    task_id = submit_ok(sim_api, FLUX_DEV_LORA, {"prompt": "p"}, webhook=catcher.url())
    wait_terminal(sim_api, task_id)
    done_at = time.time()
    assert catcher.snapshot() == []
    [hook] = catcher.wait_for(1)
    assert hook.received_at - done_at > 0.25


def test_webhook_retries_5xx_with_the_same_id(sim_api: httpx.Client, catcher: WebhookCatcher) -> None:
    catcher.answer_next([500, 503])
    submit_ok(sim_api, FLUX_DEV_LORA, {"prompt": "p"}, webhook=catcher.url())
    hooks = catcher.wait_for(3)
    assert [hook.answered for hook in hooks] == [500, 503, 200]
    assert len({verify(hook) for hook in hooks}) == 1
    # The catcher has answered; the simulator records the answer a moment later.
    deadline = time.monotonic() + 5
    while True:
        [task] = tasks(sim_api)
        statuses = [d["http_status"] for d in task["deliveries"]]
        if None not in statuses or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert statuses == [500, 503, 200]
    assert [d["attempt"] for d in task["deliveries"]] == [1, 2, 3]


def test_webhook_to_a_dead_url_gives_up(sim_api: httpx.Client, catcher: WebhookCatcher) -> None:
    knobs(sim_api, webhook_retries=1, webhook_timeout=1.0)
    with ServerThread(WebhookCatcher().app()) as gone:
        dead_url = gone.url + "/hook"
    submit_ok(sim_api, FLUX_DEV_LORA, {"prompt": "p"}, webhook=dead_url)
    deadline = time.monotonic() + 5
    while stats(sim_api)["webhooks_failed"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    [task] = tasks(sim_api)
    assert task["webhook_attempts"] == 2
    assert all(d["error"] and d["http_status"] is None for d in task["deliveries"])


# -- output modes ------------------------------------------------------------------------


def test_base64_output(sim_api: httpx.Client, catcher: WebhookCatcher) -> None:
    body = {"prompt": "p", "size": "320*256", "output_format": "png", "num_images": 2}
    submit_ok(sim_api, FLUX_DEV_LORA, {**body, "enable_base64_output": True}, webhook=catcher.url())
    [hook] = catcher.wait_for(1)
    verify(hook)
    outputs = hook.json()["outputs"]
    assert len(outputs) == 2
    for output in outputs:
        prefix = "data:image/png;base64,"
        assert output.startswith(prefix)
        check_image(base64.b64decode(output[len(prefix) :]), "320*256", "png")


def test_sync_mode_answers_the_finished_prediction(web: httpx.Client, sim_api: httpx.Client) -> None:
    body = {"prompt": "p", "output_format": "webp", "size": "256*512", "enable_sync_mode": True}
    answer = submit(sim_api, FLUX_KREA_DEV_LORA, body)
    assert answer.status_code == 200
    data = answer.json()["data"]
    assert data["status"] == "completed" and len(data["outputs"]) == 1
    check_image(web.get(data["outputs"][0]).content, "256*512", "webp")


def test_sync_mode_times_out_as_processing(sim_api: httpx.Client) -> None:
    knobs(sim_api, completion_delay=1.0, sync_timeout=0.1)
    answer = submit(sim_api, FLUX_DEV_LORA, {"prompt": "p", "enable_sync_mode": True})
    data = answer.json()["data"]
    assert data["status"] in ("created", "processing")
    assert "Sync mode timed out" in data["error"]


def test_public_url_is_used_in_urls(sim_api: httpx.Client) -> None:
    knobs(sim_api, public_url="https://cdn.example.test/")
    created = submit(sim_api, FLUX_DEV_LORA, {"prompt": "p"}).json()["data"]
    assert created["urls"]["get"].startswith("https://cdn.example.test/api/v3/predictions/")
    assert wait_terminal(sim_api, created["id"])["outputs"][0].startswith("https://cdn.example.test/outputs/")


# -- download faults ---------------------------------------------------------------------


def _one_output(sim_api: httpx.Client) -> str:
    task_id = submit_ok(sim_api, FLUX_DEV_LORA, {"prompt": "p", "size": "512*512", "output_format": "png"})
    url: str = wait_terminal(sim_api, task_id)["outputs"][0]
    return url


def test_download_fails_with_500(web: httpx.Client, sim_api: httpx.Client) -> None:
    url = _one_output(sim_api)
    knobs(sim_api, download_fail_rate=1.0, download_fail_mode="status")
    answer = web.get(url)
    assert answer.status_code == 500 and answer.json()["code"] == 500
    knobs(sim_api, download_fail_rate=0.0)
    assert web.get(url).status_code == 200
    assert stats(sim_api)["download_failures"] == 1


def test_download_is_cut_mid_body(web: httpx.Client, sim_api: httpx.Client) -> None:
    url = _one_output(sim_api)
    knobs(sim_api, download_fail_rate=1.0, download_fail_mode="cut")
    with pytest.raises(httpx.RemoteProtocolError):
        web.get(url)


def test_download_fail_random_mode_does_one_or_the_other(web: httpx.Client, sim_api: httpx.Client) -> None:
    url = _one_output(sim_api)
    knobs(sim_api, download_fail_rate=1.0)
    for _ in range(6):
        with contextlib.suppress(httpx.RemoteProtocolError):  # the other failure mode: a cut body
            assert web.get(url).status_code == 500


def test_download_delay_and_throttle(web: httpx.Client, sim_api: httpx.Client) -> None:
    url = _one_output(sim_api)
    size = len(web.get(url).content)
    knobs(sim_api, download_delay=0.2, download_bytes_per_second=size * 4)
    started = time.monotonic()
    assert len(web.get(url).content) == size
    assert time.monotonic() - started >= 0.2 + 0.2  # the delay, plus about 0.25 s of pacing


# -- media upload and blob ---------------------------------------------------------------


def test_media_upload_round_trip(web: httpx.Client, sim_api: httpx.Client) -> None:
    payload = bytes(range(256)) * 100
    ticket = sim_api.post(
        "/api/v3/media/uploads",
        json={"filename": "ref.png", "size": len(payload), "content_type": "image/png"},
    )
    assert ticket.status_code == 200
    data = ticket.json()["data"]
    assert data["upload"]["method"] == "PUT"
    assert web.get(data["download_url"]).status_code == 404  # nothing uploaded yet
    put = web.put(data["upload"]["url"], content=payload, headers=data["upload"]["headers"])
    assert put.status_code == 200
    download = web.get(data["download_url"])
    assert download.status_code == 200 and download.content == payload
    assert download.headers["content-type"] == "image/png"
    # The download URL is an http(s) URL, so it passes as a model's `image`.
    answer = submit(sim_api, FLUX_DEV_LORA, {"prompt": "p", "image": data["download_url"]})
    assert answer.status_code == 200


def test_media_upload_limit(web: httpx.Client, sim_api: httpx.Client) -> None:
    too_big = sim_api.post("/api/v3/media/uploads", json={"filename": "x.bin", "size": 200 * 1024 * 1024 + 1})
    assert too_big.status_code == 413 and too_big.json()["code"] == 413
    knobs(sim_api, upload_max_bytes=1000)
    data = sim_api.post("/api/v3/media/uploads", json={"filename": "x.bin", "size": 10}).json()["data"]
    assert web.put(data["upload"]["url"], content=b"x" * 1001).status_code == 413

    def chunked() -> Iterator[bytes]:  # no Content-Length: caught while reading
        yield b"x" * 600
        yield b"x" * 600

    assert web.put(data["upload"]["url"], content=chunked()).status_code == 413
    missing = sim_api.post("/api/v3/media/uploads", json={"size": 10})
    assert missing.status_code == 422 and missing.json()["message"].startswith("filename:")


def test_blob_streams_deterministic_bytes(web: httpx.Client, sim: ServerThread, sim_api: httpx.Client) -> None:
    size = 5 * 1024 * 1024 + 7
    received = 0
    with web.stream("GET", f"{sim.url}/_sim/blob/{size}", params={"seed": 3}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/octet-stream"
        assert int(response.headers["content-length"]) == size
        first = b""
        for chunk in response.iter_bytes():
            if not first:
                first = chunk[:64]
            received += len(chunk)
    assert received == size
    again = web.get(f"{sim.url}/_sim/blob/1024", params={"seed": 3}).content
    assert again[:64] == first
    assert web.get(f"{sim.url}/_sim/blob/1024", params={"seed": 4}).content != again
    assert stats(sim_api)["blob_downloads"] == 3


def test_blob_client_can_hang_up_early(web: httpx.Client, sim: ServerThread, sim_api: httpx.Client) -> None:
    with web.stream("GET", f"{sim.url}/_sim/blob/{1024 * 1024 * 1024}") as response:
        next(response.iter_bytes())
    # The server notices and stops: it still answers promptly.
    assert sim_api.get("/_sim/stats").status_code == 200


# -- control endpoints and the official SDK ----------------------------------------------


def test_config_endpoint_rejects_bad_knobs(sim_api: httpx.Client) -> None:
    assert sim_api.post("/_sim/config", json={"nope": 1}).status_code == 422
    assert sim_api.post("/_sim/config", json={"failure_rate": 3}).status_code == 422
    assert sim_api.post("/_sim/config", json=[1]).status_code == 422
    live = sim_api.get("/_sim/config").json()
    assert live["failure_rate"] == 0.0 and live["completion_delay"] == CONFIG.completion_delay


def test_reset_forgets_tasks_and_restores_knobs(sim_api: httpx.Client) -> None:
    knobs(sim_api, failure_rate=1.0)
    submit_ok(sim_api, FLUX_DEV_LORA, {"prompt": "p"})
    restored = sim_api.post("/_sim/reset").json()
    assert restored["failure_rate"] == 0.0
    assert tasks(sim_api) == [] and stats(sim_api)["submits_accepted"] == 0


def test_official_sdk_runs_against_the_simulator(
    web: httpx.Client, sim: ServerThread, sim_api: httpx.Client
) -> None:
    wavespeed = pytest.importorskip("wavespeed")
    client = wavespeed.Client(api_key=CONFIG.api_key, base_url=sim.url)
    result = client.run(FLUX_DEV_LORA, {"prompt": "a cat", "size": "256*256"}, poll_interval=0.05, timeout=10)
    [url] = result["outputs"]
    check_image(web.get(url).content, "256*256", "jpeg")
    synced = client.run(FLUX_KREA_DEV_LORA, {"prompt": "a fox"}, enable_sync_mode=True, timeout=10)
    assert len(synced["outputs"]) == 1
    uploaded = client.upload(io.BytesIO(b"hello"))
    assert web.get(uploaded).content == b"hello"


def test_output_head_and_task_detail(web: httpx.Client, sim_api: httpx.Client) -> None:
    task_id = submit_ok(sim_api, FLUX_DEV_LORA, {"prompt": "p", "size": "256*256"})
    [url] = wait_terminal(sim_api, task_id)["outputs"]
    head = web.head(url)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(web.get(url).content)
    detail = sim_api.get(f"/_sim/tasks/{task_id}").json()
    assert detail["id"] == task_id and detail["prediction"]["status"] == "completed"
    assert sim_api.get("/_sim/tasks/nope").status_code == 404


def test_server_stops_promptly_with_pending_work(catcher: WebhookCatcher) -> None:
    # Tasks still running, webhooks still waiting and a hung submit must not hold shutdown.
    catcher.clear()
    config = SimulatorConfig(completion_delay=30.0, webhook_delay=30.0, submit_hang_seconds=30.0)
    server = ServerThread(create_simulator_app(config)).start()
    with httpx.Client(base_url=server.url, headers=AUTH) as client:
        submit_ok(client, FLUX_DEV_LORA, {"prompt": "p"}, webhook=catcher.url())
        client.post("/_sim/config", json={"submit_hang_rate": 1.0})
        with pytest.raises(httpx.ReadTimeout):
            submit(client, FLUX_DEV_LORA, {"prompt": "p"}, webhook=catcher.url(), timeout=0.2)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 1.5
    assert catcher.snapshot() == []
