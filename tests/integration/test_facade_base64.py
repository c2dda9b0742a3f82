"""The facade's ``enable_base64_output`` answers are read from S3 once per output and
kept: a client polling the result does not make the service read and encode every
image again on every GET, and polls at once read at most 4 objects at a time, each once
(tests/unit/test_data_uris.py has the same rules on the cache alone)."""

from __future__ import annotations

import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.conftest import BUCKET, Service
from tests.integration.helpers import wait_terminal

DEV = "wavespeed-ai/flux-dev-lora"


def test_a_base64_result_is_read_from_s3_once_and_then_served_from_memory(client: httpx.Client, s3: Any) -> None:
    submitted = client.post(f"/api/v3/{DEV}", json={"prompt": "a fox", "size": "256*256", "num_images": 2,
                                                    "enable_base64_output": True})
    assert submitted.status_code == 200, submitted.text
    job = wait_terminal(client, submitted.json()["data"]["id"])
    assert job["status"] == "completed"
    first = client.get(f"/api/v3/predictions/{job['id']}/result").json()["data"]["outputs"]
    stored = [s3.get_object(Bucket=BUCKET, Key=o["key"])["Body"].read() for o in job["outputs"]]
    assert [base64.b64decode(uri.partition(",")[2]) for uri in first] == stored
    for output in job["outputs"]:  # gone from the bucket: only a kept answer can still show them
        s3.delete_object(Bucket=BUCKET, Key=output["key"])
    for _ in range(3):
        again = client.get(f"/api/v3/predictions/{job['id']}/result")
        assert again.status_code == 200, again.text
        assert again.json()["data"]["outputs"] == first


class GetObjectCounter:
    """Counts the GetObject requests the service's own S3 client sends (a botocore event
    hook on the real client, talking to the real S3 server), and how many are in flight
    at once: each is held for ``hold`` seconds before it goes out."""

    def __init__(self, keys: set[str], hold: float = 0.2) -> None:
        self.keys, self.hold = keys, hold
        self.sent: list[str] = []
        self.running = self.most = 0
        self.lock = threading.Lock()

    def __call__(self, request: Any, **_: Any) -> None:
        key = next((k for k in self.keys if request.url.split("?")[0].endswith(k)), None)
        if key is None:
            return
        with self.lock:
            self.sent.append(key)
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.hold)
        with self.lock:
            self.running -= 1


def test_concurrent_polls_read_each_object_once_and_at_most_4_at_a_time(service: Service) -> None:
    key = service.new_key()
    with service.client(key) as client:
        ids = []
        for _ in range(3):
            submitted = client.post(f"/api/v3/{DEV}", json={"prompt": "a fox", "size": "256*256", "num_images": 4,
                                                            "enable_base64_output": True})
            assert submitted.status_code == 200, submitted.text
            ids.append(submitted.json()["data"]["id"])
        done = [wait_terminal(client, job_id) for job_id in ids]
    assert [job["status"] for job in done] == ["completed"] * 3
    keys = {str(o["key"]) for job in done for o in job["outputs"]}
    assert len(keys) == 12
    app: Any = service.server.server.config.app if service.server else None
    events = app.state.resources.storage._client.meta.events
    counter = GetObjectCounter(keys)
    events.register("before-send.s3.GetObject", counter)
    try:
        def poll(job_id: str) -> list[str]:
            with service.client(key) as other:  # a connection of its own
                answer = other.get(f"/api/v3/predictions/{job_id}/result")
                assert answer.status_code == 200, answer.text
                return list(answer.json()["data"]["outputs"])

        with ThreadPoolExecutor(max_workers=18) as pool:
            answers = list(pool.map(poll, ids * 6))  # 18 polls of 4 outputs each, at once
        assert 2 <= counter.most <= 4, counter.most  # S3_MAX_THREADS is 8: the bound is the facade's
        assert sorted(counter.sent) == sorted(keys)  # 72 outputs answered, each object read once
        for job_id, outputs in zip(ids * 6, answers, strict=True):
            assert outputs == answers[ids.index(job_id)] and all(o.startswith("data:image/") for o in outputs)
        assert [poll(job_id) for job_id in ids] == answers[:3]  # a later poll reads nothing
        assert sorted(counter.sent) == sorted(keys)
    finally:
        events.unregister("before-send.s3.GetObject", counter)
