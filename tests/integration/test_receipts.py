"""Receipts over HTTP: a completed job's receipt verifies with the published JWK Set (read
with joserfc, as a backend would), states the job as stored, fails when one character of
its payload changes, and still verifies after `receipts rotate-key`; another owner's
receipt is a 404 and a job not completed has none (409). `receipts verify` checks one
offline against a file or a URL. The key the service made is sealed at rest."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jws
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet

from devtools.serverthread import ServerThread
from tests.conftest import BUCKET, Service, fresh_database, run_service
from tests.integration.helpers import s3_object, sha256

MODEL = "wavespeed-ai/flux-dev-lora"
ALGORITHMS = ["Ed25519", "ES256"]


@pytest.fixture(scope="module")
def receipt_db(postgres_server: str) -> Iterator[str]:
    # Its own database: rotations here change no other test's keys.
    with fresh_database(postgres_server) as url:
        yield url


@pytest.fixture(scope="module")
def svc(receipt_db: str, s3_endpoint: str, simulator: ServerThread) -> Iterator[Service]:
    with run_service(receipt_db, s3_endpoint, simulator.url, secrets_encryption_key=Fernet.generate_key().decode()) \
            as running:
        yield running


def completed(client: httpx.Client) -> dict[str, Any]:
    body = {"model": MODEL, "input": {"prompt": "a receipt", "size": "256*256", "num_images": 2,
                                      "loras": [{"path": "acme/style", "scale": 0.5}]}}
    job: dict[str, Any] = client.post("/v1/jobs?wait=30", json=body).json()
    assert job["status"] == "completed", job
    return job


def key_set(svc: Service) -> KeySet:
    answer = httpx.get(svc.url + "/.well-known/jwks.json", timeout=10)
    assert answer.status_code == 200 and "max-age" in answer.headers["cache-control"]
    return KeySet.import_key_set(answer.json())


def receipt_of(client: httpx.Client, job_id: str) -> str:
    answer = client.get(f"/v1/jobs/{job_id}/receipt")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/jose"
    return answer.text


def header_of(token: str) -> dict[str, Any]:
    head = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))  # type: ignore[no-any-return]


def test_a_receipt_verifies_with_the_published_keys_and_states_the_job_as_stored(svc: Service, s3: Any) -> None:
    key = svc.new_key()
    with svc.client(key) as client:
        job = completed(client)
        token = receipt_of(client, job["id"])
    claims = json.loads(jws.deserialize_compact(token, key_set(svc), algorithms=ALGORITHMS).payload)
    assert (claims["job_id"], claims["owner"], claims["model"]) == (job["id"], svc.keys[key], MODEL)
    assert claims["input"] == job["input"] and claims["input"]["seed"] >= 0  # the seed as resolved
    assert claims["provider_task_id"] == job["provider"]["task_id"]
    assert claims["cost_usd"] == job["cost_usd"]
    assert (claims["created_at"], claims["completed_at"]) == (job["created_at"], job["completed_at"])
    assert len(claims["outputs"]) == 2
    for stated, output in zip(claims["outputs"], job["outputs"], strict=True):
        stored = s3_object(s3, BUCKET, output["key"])
        assert (stated["key"], stated["size_bytes"], stated["sha256"]) == (output["key"], len(stored), sha256(stored))
        assert stated["content_credentials"] is False  # this service has no C2PA certificate
    assert header_of(token)["kid"] in [k["kid"] for k in httpx.get(svc.url + "/.well-known/jwks.json").json()["keys"]]


def test_a_receipt_states_a_presigned_lora_url_without_its_signature(svc: Service) -> None:
    """The job keeps its input as given (the owner reads it back); the signed receipt,
    which is passed on as proof and cannot be redacted, names the LoRA without the access
    its URL carried."""
    lora = ("https://models.s3.amazonaws.com/loras/style.safetensors?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=" + "ab" * 32)
    with svc.client() as client:
        body = {"model": MODEL, "input": {"prompt": "a receipt", "size": "256*256",
                                          "loras": [{"path": lora, "scale": 0.5}]}}
        job = client.post("/v1/jobs?wait=30", json=body).json()
        assert job["status"] == "completed", job
        assert job["input"]["loras"][0]["path"] == lora
        token = receipt_of(client, job["id"])
    claims = json.loads(jws.deserialize_compact(token, key_set(svc), algorithms=ALGORITHMS).payload)
    assert claims["input"]["loras"] == [{"path": lora.split("?")[0], "scale": 0.5}]
    assert claims["input"]["prompt"] == "a receipt"
    assert "X-Amz" not in json.dumps(claims)


def test_one_changed_character_of_the_payload_fails_verification(svc: Service) -> None:
    with svc.client() as client:
        token = receipt_of(client, completed(client)["id"])
    head, payload, signature = token.split(".")
    changed = payload[:10] + ("A" if payload[10] != "A" else "B") + payload[11:]
    with pytest.raises(BadSignatureError):
        jws.deserialize_compact(f"{head}.{changed}.{signature}", key_set(svc), algorithms=ALGORITHMS)


def cli(*args: str, database_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("RECEIPT_SIGNING_KEY", "ALLOW_PRIVATE_NETWORKS")}
    return subprocess.run([sys.executable, "-m", "service", *args], capture_output=True, text=True, timeout=60,
                          env={**clean, "DATABASE_URL": database_url, **env})


@pytest.mark.slow
def test_after_a_rotation_old_receipts_still_verify_and_new_ones_name_the_new_key(
        svc: Service, receipt_db: str) -> None:
    with svc.client() as client:
        job = completed(client)
        before = receipt_of(client, job["id"])
        rotated = cli("receipts", "rotate-key", database_url=receipt_db,
                      SECRETS_ENCRYPTION_KEY=svc.settings.secrets_encryption_key.get_secret_value()  # type: ignore[union-attr]
                      )
        assert rotated.returncode == 0, rotated.stderr
        after = receipt_of(client, job["id"])  # no restart: the next receipt is signed with the new key
    new_kid = rotated.stdout.strip()
    assert header_of(after)["kid"] == new_kid != header_of(before)["kid"]
    published = httpx.get(svc.url + "/.well-known/jwks.json").json()["keys"]
    assert published[0]["kid"] == new_kid and header_of(before)["kid"] in [k["kid"] for k in published]
    keys = key_set(svc)
    assert jws.deserialize_compact(before, keys, algorithms=ALGORITHMS).payload == \
        jws.deserialize_compact(after, keys, algorithms=ALGORITHMS).payload  # same job, same facts


def test_another_owners_receipt_and_an_unknown_job_are_404(svc: Service) -> None:
    with svc.client() as owner_a, svc.client() as owner_b:
        job = completed(owner_a)
        assert owner_b.get(f"/v1/jobs/{job['id']}/receipt").status_code == 404
        assert owner_b.get("/v1/jobs/job_doesnotexist0000000000/receipt").status_code == 404
        assert owner_a.get(f"/v1/jobs/{job['id']}/receipt", headers={"Authorization": "Bearer nope"}).status_code \
            == 401


def test_a_job_that_is_not_completed_has_no_receipt_409(svc: Service, receipt_db: str, s3_endpoint: str,
                                                        simulator: ServerThread) -> None:
    # The module's service works this database too: the job's owner is paused, so the job
    # stays queued whoever's workers look. That service starts first and this one shares
    # its sealing key: a service without one, started first on this database, would make
    # the receipt key unsealed.
    sealing = svc.settings.secrets_encryption_key
    assert sealing is not None
    with run_service(receipt_db, s3_endpoint, simulator.url, run_workers=False,
                     secrets_encryption_key=sealing.get_secret_value()) as idle:
        key = idle.new_key()
        with psycopg.connect(receipt_db, autocommit=True) as conn:
            assert conn.execute("UPDATE owners SET paused = true WHERE name = %s",
                                (idle.keys[key],)).rowcount == 1
        with idle.client(key) as client:
            job = client.post("/v1/jobs", json={"model": MODEL, "input": {"prompt": "waiting"}}).json()
            answer = client.get(f"/v1/jobs/{job['id']}/receipt")
            assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
            canceled = client.get(f"/v1/jobs/{job['id']}/receipt")
    assert answer.status_code == 409 and answer.json()["error"]["type"] == "conflict"
    assert "queued" in answer.json()["error"]["message"]
    assert canceled.status_code == 409 and "canceled" in canceled.json()["error"]["message"]


def test_the_service_made_key_is_sealed_at_rest(svc: Service, receipt_db: str) -> None:
    with psycopg.connect(receipt_db) as conn:
        stored = [row[0] for row in conn.execute("SELECT private_key FROM receipt_keys WHERE private_key IS NOT NULL")]
    assert len(stored) == 1 and stored[0].startswith("fernet:") and "PRIVATE KEY" not in stored[0]


@pytest.mark.slow
def test_receipts_verify_checks_a_receipt_offline_against_a_file_or_a_url(svc: Service, receipt_db: str,
                                                                         tmp_path: Path) -> None:
    with svc.client() as client:
        job = completed(client)
        (tmp_path / "job.jws").write_text(receipt_of(client, job["id"]))
    (tmp_path / "jwks.json").write_text(httpx.get(svc.url + "/.well-known/jwks.json").text)
    good = cli("receipts", "verify", str(tmp_path / "job.jws"), "--jwks", str(tmp_path / "jwks.json"),
               database_url="")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["job_id"] == job["id"]
    by_url = cli("receipts", "verify", str(tmp_path / "job.jws"), "--jwks", svc.url + "/.well-known/jwks.json",
                 database_url="", ALLOW_PRIVATE_NETWORKS="true")
    assert by_url.returncode == 0, by_url.stderr
    refused = cli("receipts", "verify", str(tmp_path / "job.jws"), "--jwks", svc.url + "/.well-known/jwks.json",
                  database_url="")
    assert refused.returncode == 2 and "refused" in refused.stderr  # loopback, through the egress layer
    head, payload, signature = (tmp_path / "job.jws").read_text().split(".")
    (tmp_path / "bad.jws").write_text(f"{head}.{payload[:-2]}{'AB' if payload[-2:] != 'AB' else 'CD'}.{signature}")
    bad = cli("receipts", "verify", str(tmp_path / "bad.jws"), "--jwks", str(tmp_path / "jwks.json"), database_url="")
    assert bad.returncode == 1 and "INVALID" in bad.stderr


def test_receipt_signing_key_signs_and_stays_published(postgres_server: str, s3_endpoint: str,
                                                      simulator: ServerThread, tmp_path: Path) -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "receipt.pem").write_bytes(pem)
    with fresh_database(postgres_server) as url:
        with run_service(url, s3_endpoint, simulator.url, receipt_signing_key=str(tmp_path / "receipt.pem")) as one, \
                one.client() as client:
            token = receipt_of(client, completed(client)["id"])
        assert header_of(token)["alg"] == "ES256"
        with run_service(url, s3_endpoint, simulator.url) as two:  # the file is gone: a key of the service's own
            keys = key_set(two)
            published = httpx.get(two.url + "/.well-known/jwks.json").json()["keys"]
    assert [k["alg"] for k in published] == ["Ed25519", "ES256"]
    assert json.loads(jws.deserialize_compact(token, keys, algorithms=ALGORITHMS).payload)["owner"]


@pytest.mark.slow
def test_hostile_receipt_ids_and_files_are_refused(svc: Service, tmp_path: Path) -> None:
    with svc.client() as client:
        for job_id in ("%00", "job_" + "x" * 300, "..%2F..%2Fetc"):
            assert client.get(f"/v1/jobs/{job_id}/receipt").status_code == 404
    (tmp_path / "huge.jws").write_bytes(b"a" * (2 * 1024 * 1024))
    (tmp_path / "jwks.json").write_text('{"keys": []}')
    huge = cli("receipts", "verify", str(tmp_path / "huge.jws"), "--jwks", str(tmp_path / "jwks.json"),
               database_url="")
    assert huge.returncode == 2 and "larger than" in huge.stderr
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "small.jws").write_text("a.b.c")
    not_a_set = cli("receipts", "verify", str(tmp_path / "small.jws"), "--jwks", str(tmp_path / "list.json"),
                    database_url="")
    assert not_a_set.returncode == 2 and "not a JWK Set" in not_a_set.stderr
