"""What the deploy kit (alerts, dashboard) reads beyond test_metrics.py's families: each
/readyz check's result (wavespeed_jobs_ready), failed S3 calls by operation
(wavespeed_jobs_s3_errors_total), submits by outcome and their time (the admission stage),
and a worker's own port (`worker --port`), on which Prometheus scrapes the counters of the
work a worker does (callbacks, provider calls, S3)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from devtools.devstack import free_port
from devtools.serverthread import ServerThread
from tests.conftest import Service, make_settings, run_service
from tests.integration.test_hostile_input import _raw_post
from tests.integration.test_metrics import scrape, value
from tests.processes import ServiceProcess

# Left out of the fast loop (pytest -m "not slow", docs/development.md):
# a worker process with its port.
pytestmark = pytest.mark.slow


def test_each_readiness_check_is_exported_with_its_result(
    service: Service, database_url: str, s3_endpoint: str, simulator: ServerThread,
) -> None:
    assert httpx.get(service.url + "/readyz", timeout=10).status_code == 200
    samples = scrape(service.url)
    assert value(samples, "wavespeed_jobs_ready", check="database") == 1.0
    assert value(samples, "wavespeed_jobs_ready", check="s3") == 1.0
    # A bucket that does not exist: S3 answers head_bucket with an error.
    with run_service(database_url, s3_endpoint, simulator.url, run_workers=False, s3_bucket="no-such-bucket") as svc:
        before = value(scrape(svc.url), "wavespeed_jobs_s3_errors_total", operation="head_bucket")
        answer = httpx.get(svc.url + "/readyz", timeout=10)
        assert answer.status_code == 503 and answer.json()["checks"]["database"] == "ok", answer.text
        samples = scrape(svc.url)
    assert value(samples, "wavespeed_jobs_ready", check="s3") == 0.0
    assert value(samples, "wavespeed_jobs_ready", check="database") == 1.0
    assert value(samples, "wavespeed_jobs_s3_errors_total", operation="head_bucket") == before + 1


def test_a_worker_with_a_port_serves_health_readiness_and_metrics_and_nothing_of_the_api(
    database_url: str, s3_endpoint: str, simulator: ServerThread, tmp_path: Path,
) -> None:
    port = free_port()
    settings = make_settings(database_url, s3_endpoint, simulator.url, free_port())
    log = tmp_path / "worker.log"
    with ServiceProcess(["worker", "--port", str(port), "--host", "127.0.0.1"], settings, log, port=port) as worker:
        assert httpx.get(worker.url + "/readyz", timeout=10).status_code == 200
        samples = scrape(worker.url)
        assert value(samples, "wavespeed_jobs_ready", check="database") == 1.0
        assert value(samples, "wavespeed_jobs_database_up") == 1.0
        for path in ("/v1/jobs", "/openapi.json", "/"):
            assert httpx.get(worker.url + path, timeout=10).status_code == 404, path
        assert worker.terminate(timeout=30) == 0


def test_a_workers_port_keeps_metrics_behind_metrics_token_and_names_no_owner(
    database_url: str, s3_endpoint: str, simulator: ServerThread, tmp_path: Path,
) -> None:
    """The worker's port listens on every interface by default: its /metrics follows
    METRICS_TOKEN like serve's, an API key does not open it, and no series names an owner
    unless METRICS_PER_OWNER is set."""
    token = "ops-metrics-token-0123456789abcdef"
    port = free_port()
    settings = make_settings(database_url, s3_endpoint, simulator.url, free_port(), metrics_token=token)
    with ServiceProcess(["worker", "--port", str(port), "--host", "127.0.0.1"], settings, tmp_path / "worker.log",
                        port=port) as worker:
        for headers in ({}, {"Authorization": "Bearer wsj_not_the_metrics_token"}, {"Authorization": token}):
            refused = httpx.get(worker.url + "/metrics", headers=headers, timeout=10)
            assert refused.status_code == 401, headers
            assert "wavespeed_jobs" not in refused.text and token not in refused.text
        assert httpx.get(worker.url + "/healthz", timeout=10).status_code == 200  # probes stay open
        opened = httpx.get(worker.url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert opened.status_code == 200 and "wavespeed_jobs_database_up 1.0" in opened.text
        assert "owner=" not in opened.text and "wavespeed_jobs_owner_" not in opened.text
        assert worker.terminate(timeout=30) == 0


def test_submits_are_counted_by_outcome_and_timed(service: Service, client: httpx.Client) -> None:
    before = scrape(service.url)
    body = {"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "counted", "size": "256*256"}}
    headers = {"Idempotency-Key": "admission-metrics"}
    assert client.post("/v1/jobs", json=body, headers=headers).status_code == 202
    assert client.post("/v1/jobs", json=body, headers=headers).status_code == 200  # the first job again
    bad = client.post("/v1/jobs", json={**body, "input": {"prompt": "x", "size": "1*1"}})
    assert bad.status_code == 422
    after = scrape(service.url)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("wavespeed_jobs_admissions_total", outcome="accepted") >= 1
    assert grew("wavespeed_jobs_admissions_total", outcome="replayed") >= 1
    assert grew("wavespeed_jobs_admissions_total", outcome="invalid_request") >= 1
    assert grew("wavespeed_jobs_admission_seconds_count") >= 3



def test_a_workers_port_caps_the_header_block_like_serve(
    database_url: str, s3_endpoint: str, simulator: ServerThread, tmp_path: Path,
) -> None:
    """The worker's port has serve's header cap: a header block over
    MAX_REQUEST_HEADER_BYTES is a 431 as it arrives (a 20 MB one too), whatever the path;
    probes with ordinary headers are answered."""
    port = free_port()
    settings = make_settings(database_url, s3_endpoint, simulator.url, free_port())
    with ServiceProcess(["worker", "--port", str(port), "--host", "127.0.0.1"], settings, tmp_path / "worker.log",
                        port=port) as worker:
        over = httpx.get(worker.url + "/healthz", headers={"x-filler": "a" * 70_000}, timeout=10)
        assert over.status_code == 431, over.text
        status, _ = _raw_post(port, b" ".join([b"v3," + b"0" * 64] * 300_000))  # about 20 MB
        assert status.startswith(b"HTTP/1.1 431"), status
        assert httpx.get(worker.url + "/healthz", headers={"x-filler": "a" * 8_000}, timeout=10).status_code == 200
        assert worker.terminate(timeout=30) == 0
