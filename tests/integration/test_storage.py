"""The S3 client against a real S3 API over HTTP (moto's server): single PUTs,
multipart uploads, reads, presigned URLs (signed by service/clients/sigv4.py), bucket
creation and the errors, each checked with a plain boto3 client on the other side.
(moto does not verify signatures: that ours equal botocore's is tests/unit/test_sigv4.py
and tests/unit/test_presign_cache.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ipaddress
import os
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service.clients.storage import Storage, StorageError
from tests.conftest import BUCKET

MB = 1024 * 1024


def _storage(endpoint: str, bucket: str = BUCKET, **kwargs: Any) -> Storage:
    return Storage(bucket=bucket, endpoint_url=endpoint, region="us-east-1", part_size=5 * MB, **kwargs)


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize("size", [0, 1, 5 * MB - 1, 5 * MB, 12 * MB + 7])
async def test_put_stream_stores_exact_bytes(s3_endpoint: str, s3: Any, size: int) -> None:
    data = os.urandom(size)
    key = f"t/{uuid.uuid4().hex}/0 é+.png"
    store = _storage(s3_endpoint)
    try:
        stored = await store.put_stream(key, _chunks(data, 1 * MB + 3), "image/png")
        assert (stored.size_bytes, stored.sha256) == (size, hashlib.sha256(data).hexdigest())
        got = s3.get_object(Bucket=BUCKET, Key=key)
        assert got["Body"].read() == data
        assert got["ContentType"] == "image/png"
        assert await store.get_bytes(key) == data
        # No multipart upload is left behind.
        assert not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads")
    finally:
        store.close()


async def test_presigned_url_downloads_the_object(s3_endpoint: str) -> None:
    store = _storage(s3_endpoint)
    key = f"t/{uuid.uuid4().hex}/a b/0.jpeg"
    try:
        await store.put_bytes(key, b"jpeg bytes", "image/jpeg")
        url = store.presign(key, 600)
        async with httpx.AsyncClient() as client:
            assert (await client.get(url)).content == b"jpeg bytes"
    finally:
        store.close()


async def test_a_failed_multipart_upload_is_aborted(s3_endpoint: str, s3: Any) -> None:
    store = _storage(s3_endpoint)
    key = f"t/{uuid.uuid4().hex}/0.png"

    async def broken() -> AsyncIterator[bytes]:
        yield os.urandom(6 * MB)
        raise RuntimeError("download cut")

    try:
        with pytest.raises(RuntimeError):
            await store.put_stream(key, broken(), "image/png")
        uploads = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads") or []
        assert [u for u in uploads if u["Key"] == key] == []
    finally:
        store.close()


async def test_ensure_bucket_creates_it_and_ping_then_answers(s3_endpoint: str, s3: Any) -> None:
    bucket = f"wsj-new-{uuid.uuid4().hex[:8]}"
    store = _storage(s3_endpoint, bucket)
    try:
        with pytest.raises(StorageError):
            await store.ping()
        await store.ensure_bucket()
        await store.ping()
        await store.ensure_bucket()  # a second time changes nothing
        assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    finally:
        store.close()


async def test_a_refusal_is_a_storage_error_naming_s3s_code_without_credentials(s3_endpoint: str) -> None:
    store = _storage(s3_endpoint, access_key_id="AKIAEXAMPLE", secret_access_key="not-the-secret-0123")
    try:
        with pytest.raises(StorageError) as raised:
            await store.get_bytes(f"t/{uuid.uuid4().hex}/none.png")
        assert "NoSuchKey" in str(raised.value)
        assert "not-the-secret-0123" not in str(raised.value) and "Signature=" not in str(raised.value)
    finally:
        store.close()


async def test_delete_keys_removes_exactly_those_keys_in_calls_of_at_most_1000(s3_endpoint: str, s3: Any) -> None:
    """DeleteObjects is written and signed by hand (service/clients/storage.py): keys with
    XML's special characters, keys already gone, and 1,000 keys a call."""
    prefix = f"t/{uuid.uuid4().hex}/"
    odd = [prefix + name for name in ("a&b <c>.png", "quote\"'.jpeg", "ü é+ ~.webp")]
    kept = prefix + "kept.jpeg"
    bulk = [f"{prefix}many/{n}.jpeg" for n in range(1200)]
    store = _storage(s3_endpoint)
    try:
        for key in [*odd, kept, *bulk[:5], bulk[-1]]:
            s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
        assert await store.delete_keys([*odd, prefix + "never-there.png"]) == 1
        assert await store.delete_keys(bulk) == 2  # 1,000 + 200
        left = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]
        assert left == [kept]
        assert await store.delete_keys([]) == 0
    finally:
        await store.aclose()


async def test_delete_keys_in_a_missing_bucket_is_a_storage_error_naming_the_code(s3_endpoint: str) -> None:
    store = _storage(s3_endpoint, f"wsj-missing-{uuid.uuid4().hex[:8]}", access_key_id="AKIAEXAMPLE",
                     secret_access_key="not-the-secret-0123")
    try:
        with pytest.raises(StorageError) as raised:
            await store.delete_keys(["outputs/job_x/0.jpeg"])
        assert "404" in str(raised.value) and "NoSuchBucket" in str(raised.value)
        assert "not-the-secret-0123" not in str(raised.value) and "Signature=" not in str(raised.value)
    finally:
        await store.aclose()


async def test_delete_keys_unreachable_is_a_storage_error() -> None:
    store = Storage(bucket="b", endpoint_url="http://127.0.0.1:9", region="us-east-1",
                    access_key_id="AKIAEXAMPLE", secret_access_key="not-the-secret-0123")
    try:
        with pytest.raises(StorageError) as raised:
            await store.delete_keys(["outputs/job_x/0.jpeg"])
        assert "ConnectError" in str(raised.value)
    finally:
        await store.aclose()


async def test_a_put_into_a_missing_bucket_is_a_storage_error_naming_the_code(s3_endpoint: str) -> None:
    store = _storage(s3_endpoint, f"wsj-missing-{uuid.uuid4().hex[:8]}", access_key_id="AKIAEXAMPLE",
                     secret_access_key="not-the-secret-0123")
    try:
        with pytest.raises(StorageError) as raised:
            await store.put_bytes("outputs/job_x/0.jpeg", b"jpeg bytes", "image/jpeg")
        assert "404" in str(raised.value) and "NoSuchBucket" in str(raised.value)
        assert "not-the-secret-0123" not in str(raised.value) and "Signature=" not in str(raised.value)
    finally:
        await store.aclose()


class _SlowDownFirst:
    """An S3 stand-in on 127.0.0.1 that answers the first ``refusals`` requests
    ``503 SlowDown`` (S3's "retry later") and the rest 200, recording each request."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                line, *fields = head.split("\r\n")
                headers = {k.lower(): v.strip() for k, v in (f.split(":", 1) for f in fields if ":" in f)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((line, headers, body))
                if len(self.requests) <= self.refusals:
                    error = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                    writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(error), error))
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    @contextlib.asynccontextmanager
    async def storage(self, *, tls: ssl.SSLContext | None = None, ca_bundle: str | None = None,
                      http: httpx.AsyncClient | None = None) -> AsyncIterator[Storage]:
        """A Storage whose S3 is this stand-in (over HTTPS with ``tls``, the server's side),
        with a secret no answer may show."""
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        scheme = "https" if tls else "http"
        store = Storage(bucket="wsj-b", endpoint_url=f"{scheme}://127.0.0.1:{server.sockets[0].getsockname()[1]}",
                        region="us-east-1", access_key_id="AKIAEXAMPLE", secret_access_key="not-the-secret-0123",
                        ca_bundle=ca_bundle, http=http)
        try:
            yield store
        finally:
            await store.aclose()
            server.close()


async def test_a_put_answered_slow_down_once_is_sent_again_signed_with_the_bodys_sha256() -> None:
    fake = _SlowDownFirst(refusals=1)
    async with fake.storage() as store:
        stored = await store.put_bytes("outputs/job_x/0 é.jpeg", b"jpeg bytes", "image/jpeg")
    assert stored.sha256 == hashlib.sha256(b"jpeg bytes").hexdigest()
    assert len(fake.requests) == 2
    for line, headers, body in fake.requests:
        assert line == "PUT /wsj-b/outputs/job_x/0%20%C3%A9.jpeg HTTP/1.1"
        assert body == b"jpeg bytes"
        assert headers["x-amz-content-sha256"] == stored.sha256
        assert headers["content-type"] == "image/jpeg"
        assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/")
        assert "content-type;host;x-amz-content-sha256;x-amz-date" in headers["authorization"]


async def test_a_put_answered_slow_down_twice_is_a_storage_error_after_two_attempts() -> None:
    fake = _SlowDownFirst(refusals=5)
    async with fake.storage() as store:
        with pytest.raises(StorageError) as raised:
            await store.put_bytes("outputs/job_x/0.jpeg", b"jpeg bytes", "image/jpeg")
    assert len(fake.requests) == 2
    assert "503" in str(raised.value) and "SlowDown" in str(raised.value)
    assert "not-the-secret-0123" not in str(raised.value) and "Signature=" not in str(raised.value)


async def test_a_put_to_an_unreachable_s3_is_a_storage_error() -> None:
    store = Storage(bucket="b", endpoint_url="http://127.0.0.1:9", region="us-east-1",
                    access_key_id="AKIAEXAMPLE", secret_access_key="not-the-secret-0123")
    try:
        with pytest.raises(StorageError) as raised:
            await store.put_bytes("outputs/job_x/0.jpeg", b"x", "image/jpeg")
        assert "ConnectError" in str(raised.value)
    finally:
        await store.aclose()


def _private_ca(tmp_path: Path, name: str = "ca") -> tuple[str, ssl.SSLContext]:
    """A CA of our own (its PEM file, what AWS_CA_BUNDLE names) and the server side of a
    certificate it signed for 127.0.0.1: an S3 endpoint behind a private CA."""
    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
             *, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False), critical=True)
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("wsj test CA", ca_key, "wsj test CA", ca_key, ca=True)
    leaf = cert("127.0.0.1", leaf_key, "wsj test CA", ca_key, ca=False)
    ca_pem, leaf_pem, key_pem = tmp_path / f"{name}.pem", tmp_path / f"{name}-leaf.pem", tmp_path / f"{name}-leaf.key"
    ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    leaf_pem.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(leaf_pem, key_pem)
    return str(ca_pem), server


@pytest.mark.parametrize("process_client", [False, True], ids=["own client", "process client given"])
async def test_an_s3_behind_a_private_ca_is_reached_with_aws_ca_bundle_by_boto3_and_by_the_signed_put(
        tmp_path: Path, process_client: bool) -> None:
    # The process's client (the lifespan's) checks against the public roots: with a
    # bundle, Storage uses its own.
    ca_bundle, tls = _private_ca(tmp_path)
    fake = _SlowDownFirst(refusals=0)
    async with (httpx.AsyncClient() as http,
                fake.storage(tls=tls, ca_bundle=ca_bundle, http=http if process_client else None) as store):
        await store.ensure_bucket()  # boto3's HeadBucket
        stored = await store.put_bytes("outputs/job_x/0.jpeg", b"jpeg bytes", "image/jpeg")  # signed here
    assert stored.sha256 == hashlib.sha256(b"jpeg bytes").hexdigest()
    assert [line for line, _, _ in fake.requests] == ["HEAD /wsj-b HTTP/1.1",
                                                      "PUT /wsj-b/outputs/job_x/0.jpeg HTTP/1.1"]


async def test_without_its_ca_an_s3_with_a_private_certificate_is_refused_and_sent_nothing(tmp_path: Path) -> None:
    _, tls = _private_ca(tmp_path)
    fake = _SlowDownFirst(refusals=0)
    async with fake.storage(tls=tls) as store:
        with pytest.raises(StorageError) as raised:
            await store.put_bytes("outputs/job_x/0.jpeg", b"jpeg bytes", "image/jpeg")
    assert "CERTIFICATE_VERIFY_FAILED" in str(raised.value) or "certificate verify failed" in str(raised.value)
    assert fake.requests == []


async def test_with_another_cas_bundle_boto3_and_the_signed_put_both_refuse_the_endpoint(tmp_path: Path) -> None:
    other_bundle, _ = _private_ca(tmp_path, "other")
    _, tls = _private_ca(tmp_path, "endpoint")
    fake = _SlowDownFirst(refusals=0)
    async with fake.storage(tls=tls, ca_bundle=other_bundle) as store:
        with pytest.raises(StorageError) as by_put:
            await store.put_bytes("outputs/job_x/0.jpeg", b"jpeg bytes", "image/jpeg")
        with pytest.raises(StorageError) as by_boto3:
            await store.ping()  # boto3's HeadBucket
    for raised in (by_put, by_boto3):
        assert "CERTIFICATE_VERIFY_FAILED" in str(raised.value) or "certificate verify failed" in str(raised.value)
    assert fake.requests == []
