"""The logs of a real ``wavespeed-jobs serve`` process, read from its stderr (a file, not a
terminal, so JSON by default): every line is one JSON object; every line about the job it
ran carries its job_id, and its task_id from the moment the provider named the task; and
no secret appears anywhere — neither the provider key, the webhook or callback secrets,
nor API keys sent with requests (valid or not), nor a forged signature's secret.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.devstack import DEV_ACCESS_KEY, DEV_SECRET_KEY, free_port
from devtools.serverthread import ServerThread
from devtools.simulator.app import create_simulator_app
from devtools.simulator.config import SimulatorConfig
from service.db.keys import create_key_blocking
from service.domain.signing import generate_standard_secret, wavespeed_signature
from tests.benchmarks import procs
from tests.conftest import BUCKET, FAST_SETTINGS, fresh_database
from tests.integration.helpers import eventually
from tests.servers import WebhookCatcher

PROVIDER_KEY = "sk-wavespeed-" + uuid.uuid4().hex  # shaped like nothing in particular
WEBHOOK_SECRET = "whsec_" + uuid.uuid4().hex
CALLBACK_SECRET = generate_standard_secret()
FORGED_SECRET = "whsec_" + uuid.uuid4().hex  # signs a webhook the service must refuse
# Events that are always about one job.
JOB_EVENTS = ("submit.", "webhook.", "job.", "output.", "callback.", "reconcile.", "thumbnail.", "duty.crashed")


def new_key(database_url: str) -> str:
    return create_key_blocking(database_url, "owner_logs")


def serve_env(database_url: str, s3_endpoint: str, simulator_url: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOG_", "WAVESPEED_", "CALLBACK_"))}
    env.update({
        "DATABASE_URL": database_url, "S3_BUCKET": BUCKET, "S3_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": DEV_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": DEV_SECRET_KEY,
        "WAVESPEED_API_KEY": PROVIDER_KEY, "WAVESPEED_BASE_URL": simulator_url,
        "WAVESPEED_WEBHOOK_SECRET": WEBHOOK_SECRET, "CALLBACK_SIGNING_SECRET": CALLBACK_SECRET,
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}", "ALLOW_PRIVATE_NETWORKS": "true",
        "LOG_LEVEL": "info",  # LOG_FORMAT unset: stderr is a file, so JSON is the default
        **{name.upper(): str(value) for name, value in FAST_SETTINGS.items()},
    })
    return env


@pytest.mark.slow
def test_serve_logs_are_json_name_the_job_and_never_a_secret(
    postgres_server: str, s3_endpoint: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "serve.log"
    port = free_port()
    # A simulator of its own, holding this test's provider key and webhook secret.
    config = SimulatorConfig(api_key=PROVIDER_KEY, webhook_secret=WEBHOOK_SECRET, completion_delay=0.2, seed=3)
    with fresh_database(postgres_server) as url, ServerThread(create_simulator_app(config)) as simulator:
        api_key = new_key(url)
        bad_key = "wsj_" + uuid.uuid4().hex + uuid.uuid4().hex
        base = f"http://127.0.0.1:{port}"
        argv = [procs.PYTHON, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)]
        with WebhookCatcher() as catcher, procs.running(argv, env=serve_env(url, s3_endpoint, simulator.url, port),
                                                        ready_url=base + "/healthz", log_path=log_path):
            with httpx.Client(base_url=base, timeout=30) as http:
                # Keys in requests, valid or not, and a webhook signed with the wrong secret.
                assert http.get("/v1/jobs", headers={"Authorization": f"Bearer {bad_key}"}).status_code == 401
                body = b'{"id": "task_forged", "status": "completed", "outputs": []}'
                stamp = str(int(time.time()))
                forged = http.post("/webhooks/wavespeed/job_nope", content=body, headers={
                    "webhook-id": "evt_forged", "webhook-timestamp": stamp,
                    "webhook-signature": wavespeed_signature(FORGED_SECRET, "evt_forged", stamp, body)})
                assert forged.status_code == 401
                auth = {"Authorization": f"Bearer {api_key}"}
                created = http.post("/v1/jobs", headers=auth, json={
                    "model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "a fox", "size": "256*256"},
                    "callback_url": catcher.url(), "metadata": {"case": "logs"}})
                assert created.status_code == 202, created.text
                job_id = created.json()["id"]

                def finished() -> dict[str, Any] | None:
                    job = http.get(f"/v1/jobs/{job_id}", headers=auth).json()
                    delivered = (job["callback"] or {}).get("status") == "delivered"
                    return job if job["status"] == "completed" and delivered else None

                try:
                    job = eventually(finished, timeout=30)
                except AssertionError:
                    raise AssertionError(f"the job did not finish; the service said:\n{log_path.read_text()[-4000:]}"
                                         ) from None
            catcher.wait_for(1, timeout=10)
        raw = log_path.read_text()

    for secret in (PROVIDER_KEY, WEBHOOK_SECRET, CALLBACK_SECRET, FORGED_SECRET, api_key, bad_key):
        assert secret not in raw, f"a secret ({secret[:6]}…) was logged"

    records = [json.loads(line) for line in raw.splitlines() if line.strip()]  # each line is JSON, or this fails
    assert records and all("event" in r and "level" in r and "timestamp" in r for r in records)

    task_id = job["provider"]["task_id"]
    mine = [r for r in records if r.get("job_id") == job_id]
    events = [r["event"] for r in mine]
    for expected in ("submit.accepted", "webhook.received", "job.completed", "callback.attempt"):
        assert expected in events, (expected, events)
    # Every job line after the provider named the task carries it.
    named = events.index("submit.accepted")
    assert all(r.get("task_id") == task_id for r in mine[named:]), mine[named:]
    # And no line about a job goes without its job_id.
    orphans = [r for r in records if r["event"].startswith(JOB_EVENTS) and not r.get("job_id")]
    assert not orphans, orphans
