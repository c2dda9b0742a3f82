"""Small waiting and checking helpers shared by the integration tests."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

T = TypeVar("T")
TERMINAL = {"completed", "failed", "canceled", "timed_out"}


def eventually(check: Callable[[], T | None], timeout: float = 20.0, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; bounded in time."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def wait_terminal(client: httpx.Client, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in TERMINAL else None

    return eventually(check, timeout)


def submit(client: httpx.Client, prompt: str = "a red fox", model: str = "wavespeed-ai/flux-dev-lora",
           **extra: Any) -> dict[str, Any]:
    input_ = {"prompt": prompt, "size": "256*256", **extra.pop("input", {})}
    response = client.post("/v1/jobs", json={"model": model, "input": input_, **extra})
    assert response.status_code == 202, response.text
    return response.json()


def s3_object(s3: Any, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sim_tasks(simulator_url: str) -> list[dict[str, Any]]:
    data = httpx.get(simulator_url + "/_sim/tasks", timeout=5).json()
    return data["tasks"] if isinstance(data, dict) and "tasks" in data else data  # type: ignore[no-any-return]


def events_of(client: httpx.Client, job_id: str, type_: str) -> list[dict[str, Any]]:
    """The job's events of one type, oldest first."""
    return [e for e in client.get(f"/v1/jobs/{job_id}/events").json()["data"] if e["type"] == type_]
