"""The facade's ``enable_base64_output`` answers are read from S3 once per output and
kept: a client polling the result does not make the service read and encode every
image again on every GET (tests/unit/test_data_uris.py bounds the reads at once)."""

from __future__ import annotations

import base64
from typing import Any

import httpx

from tests.conftest import BUCKET
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
