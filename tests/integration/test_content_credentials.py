"""Content Credentials end to end: a service with a test chain stores a job's 2 outputs,
each object in S3 carries a manifest that c2pa-python's Reader reads back (c2pa.created,
trainedAlgorithmicMedia, the job, the model and the LoRA named, no prompt) and validates
but for the test root's trust; the recorded sha256 and size are the object's; a flipped
byte fails validation. A signing failure is a store failure with its reason, retried,
and nothing unsigned is stored. Presigned URLs and the facade's base64 answers serve the
signed bytes. ``serve`` refuses a certificate C2PA would reject. The history page and the
dev demo show the credentials."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from devtools.serverthread import ServerThread
from devtools.test_chain import TestChain, make_test_chain
from service.app import open_resources
from service.cli.dev import run_demo
from service.db import admission
from service.domain.content_credentials import TRAINED_ALGORITHMIC_MEDIA
from service.domain.schemas import validate_input
from service.work.storer import Storer
from tests.conftest import BUCKET, Service, fresh_database, make_settings, run_service
from tests.integration.helpers import s3_object, sha256
from tests.integration.test_history_page import sign_in
from tests.manifests import UNTRUSTED, flip_one_byte, read

MODEL = "wavespeed-ai/flux-dev-lora"
PROMPT = "a private prompt about a lighthouse"
LORA = {"path": "acme/watercolor-style", "scale": 0.8}
CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> TestChain:
    return make_test_chain(tmp_path_factory.mktemp("c2pa"))


@pytest.fixture(scope="module")
def signing_service(postgres_server: str, s3_endpoint: str, simulator: ServerThread,
                    chain: TestChain) -> Iterator[Service]:
    # A database of its own: no other test's workers may store these jobs unsigned.
    with fresh_database(postgres_server) as url, run_service(
            url, s3_endpoint, simulator.url, c2pa_signing_cert=str(chain.chain_path),
            c2pa_signing_key=str(chain.key_path)) as svc:
        yield svc


def completed_job_with(client: httpx.Client, output_format: str) -> dict[str, Any]:
    body = {"model": MODEL, "input": {"prompt": PROMPT, "size": "256*256", "num_images": 2,
                                      "output_format": output_format, "loras": [LORA]}}
    answer = client.post("/v1/jobs?wait=30", json=body)
    assert answer.status_code in (200, 202), answer.text
    job: dict[str, Any] = answer.json()
    assert job["status"] == "completed", job
    assert len(job["outputs"]) == 2
    return job


def completed_job(svc: Service, output_format: str) -> dict[str, Any]:
    with svc.client() as client:
        return completed_job_with(client, output_format)


@pytest.mark.parametrize("output_format", ["jpeg", "png", "webp"])
def test_each_stored_output_carries_valid_content_credentials_naming_the_job(
        signing_service: Service, s3: Any, output_format: str) -> None:
    job = completed_job(signing_service, output_format)
    content_type = CONTENT_TYPES[output_format]
    for output in job["outputs"]:
        stored = s3_object(s3, BUCKET, output["key"])
        assert output["content_type"] == content_type
        assert (sha256(stored), len(stored)) == (output["sha256"], output["size_bytes"])
        reading = read(stored, content_type)
        created = reading.created
        assert created["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
        parameters = created["parameters"]
        assert parameters["job_id"] == job["id"] and parameters["model"] == MODEL
        assert parameters["loras"] == [LORA] and parameters["output_index"] == output["index"]
        assert parameters["seed"] == job["input"]["seed"]
        assert PROMPT not in str(reading.manifest) and "prompt" not in parameters
        assert reading.failures == [UNTRUSTED], reading.failures  # all but the test root's trust
        assert reading.state == "Valid"
        tampered = read(flip_one_byte(stored, content_type), content_type)
        assert "assertion.dataHash.mismatch" in tampered.failures and tampered.state == "Invalid"


def test_outputs_are_recorded_as_carrying_content_credentials(signing_service: Service) -> None:
    job = completed_job(signing_service, "png")
    with psycopg.connect(signing_service.settings.database_url or "") as conn:
        flags = conn.execute("SELECT content_credentials FROM job_outputs WHERE job_id = %s ORDER BY index",
                             (job["id"],)).fetchall()
    assert flags == [(True,), (True,)]


def _broken_png_data_url() -> str:
    # A PNG signature (so the storer takes it for a PNG) over bytes no PNG reader can parse.
    return "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(200)).decode()


async def test_a_signing_failure_is_a_retried_store_failure_with_its_reason_and_nothing_is_stored(
        own_db: str, s3_endpoint: str, simulator: ServerThread, chain: TestChain, s3: Any) -> None:
    settings = make_settings(own_db, s3_endpoint, simulator.url, 9, c2pa_signing_cert=str(chain.chain_path),
                             c2pa_signing_key=str(chain.key_path))
    async with open_resources(settings) as res:
        job, _ = await admission.create_job(
            res.engine, owner="signing", model=MODEL, input_=validate_input(MODEL, {"prompt": "x"}),
            metadata={}, callback_url=None, idempotency_key=None, body_hash=None)
        with psycopg.connect(own_db, autocommit=True) as sql:
            sql.execute("UPDATE jobs SET status = 'storing', provider_task_id = 'task_sign', run_after = now() "
                        "WHERE id = %s", (job.id,))
            sql.execute("INSERT INTO job_outputs (job_id, index, source_url) VALUES (%s, 0, %s)",
                        (job.id, _broken_png_data_url()))
            storer = Storer(res)
            assert await storer.claim(5) == [job.id]
            await storer.run(job.id)
            status, retry_later = sql.execute(
                "SELECT status, run_after > now() FROM jobs WHERE id = %s", (job.id,)).fetchone() or (None, None)
            failures = [r[0] for r in sql.execute(
                "SELECT detail->>'error' FROM job_events WHERE job_id = %s AND type = 'output.store_failed'",
                (job.id,)).fetchall()]
            stored = sql.execute("SELECT key FROM job_outputs WHERE job_id = %s", (job.id,)).fetchone()
    assert (status, retry_later) == ("storing", True)  # retried later, not failed
    assert len(failures) == 1 and "signing with Content Credentials failed" in failures[0]
    assert stored == (None,)
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{settings.s3_prefix}{job.id}/")
    assert listed.get("KeyCount", 0) == 0  # no unsigned image in S3


def serve(chain: TestChain, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "S3_BUCKET": BUCKET, "WAVESPEED_API_KEY": "k",
           "PUBLIC_BASE_URL": "http://127.0.0.1:9", "C2PA_SIGNING_CERT": str(chain.chain_path),
           "C2PA_SIGNING_KEY": str(chain.key_path)}
    return subprocess.run([sys.executable, "-m", "service", "serve", "--port", "0"], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize(("expired", "leaf_is_ca", "problem"), [
    (True, False, "the certificate expired on"),
    (False, True, "it is a CA certificate"),
])
def test_serve_refuses_a_certificate_c2pa_would_reject_and_names_the_problem(
        tmp_path: Path, database_url: str, expired: bool, leaf_is_ca: bool, problem: str) -> None:
    done = serve(make_test_chain(tmp_path, expired=expired, leaf_is_ca=leaf_is_ca), database_url)
    assert done.returncode != 0
    assert "C2PA_SIGNING_CERT" in done.stderr and problem in done.stderr, done.stderr


def test_the_history_page_shows_content_credentials_and_links_the_receipt(signing_service: Service) -> None:
    key = signing_service.new_key()
    with signing_service.client(key) as api:
        job = completed_job_with(api, "webp")
    with sign_in(signing_service, key) as web:
        listing = web.get("/").text
        page = web.get(f"/jobs/{job['id']}").text
        receipt = web.get(f"/v1/jobs/{job['id']}/receipt")  # the link, followed with the page's session
    row = listing[listing.index(f'href="/jobs/{job["id"]}"'):]
    assert "Content Credentials" in row[:row.index("</a>")]
    assert page.count("Content Credentials ✓") == 2 and "no Content Credentials" not in page
    assert f'href="/v1/jobs/{job["id"]}/receipt"' in page
    assert receipt.status_code == 200 and receipt.headers["content-type"] == "application/jose"


def test_the_history_page_says_when_images_carry_no_content_credentials(service: Service) -> None:
    key = service.new_key()
    with service.client(key) as api:
        job = completed_job_with(api, "png")
    with sign_in(service, key) as web:
        page = web.get(f"/jobs/{job['id']}").text
    assert page.count("no Content Credentials") == 2 and "Content Credentials ✓" not in page


def test_the_dev_demo_shows_its_images_content_credentials_and_receipt(
        signing_service: Service, capsys: pytest.CaptureFixture[str]) -> None:
    # The demo `wavespeed-jobs dev --demo` runs, against a service signing with a test
    # chain as `dev`'s does (its environment: test_ssrf.py's DevStack test).
    run_demo(signing_service.url, signing_service.new_key())
    shown = capsys.readouterr().out
    assert "Content Credentials: c2pa.created (trainedAlgorithmicMedia), signed by 'test signer'" in shown
    assert "c2pa validation: Valid" in shown
    assert "characters of application/jose" in shown


def test_the_facades_base64_answer_and_presigned_urls_serve_the_signed_bytes(signing_service: Service) -> None:
    with signing_service.client() as client:
        body = {"model": MODEL, "input": {"prompt": PROMPT, "size": "256*256", "enable_base64_output": True}}
        job = client.post("/v1/jobs?wait=30", json=body).json()
        assert job["status"] == "completed", job
        result = client.get(f"/api/v3/predictions/{job['id']}/result").json()["data"]
    head, _, payload = result["outputs"][0].partition(",")
    served = base64.b64decode(payload)
    assert head == "data:image/jpeg;base64" and sha256(served) == job["outputs"][0]["sha256"]
    assert read(served, "image/jpeg").failures == [UNTRUSTED]
    assert sha256(httpx.get(job["outputs"][0]["url"], timeout=10).content) == job["outputs"][0]["sha256"]
