"""The hand-made SigV4 signatures equal botocore's own, header and presigned forms, so
what AWS, MinIO and R2 accept from boto3 they accept from us."""

from __future__ import annotations

import datetime as dt
from urllib.parse import parse_qsl, urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from service.clients.sigv4 import Credentials, Signer, uri_encode

NOW = dt.datetime(2026, 12, 2, 4, 30, 15, tzinfo=dt.UTC)
CREDS = [
    Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
    Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token="FQoGZXIvYXdzE//token+/="),
]
CASES = [
    # method, host, key, query, headers, payload
    ("PUT", "127.0.0.1:9000", "outputs/job_01/0.jpeg", {}, {"content-type": "image/jpeg"}, b"\xff\xd8 bytes"),
    ("GET", "s3.eu-west-1.amazonaws.com", "a prefix/ü & ~x+y=z.png", {}, {}, b""),
    ("POST", "minio.local", "outputs/j/0.png", {"uploads": ""}, {"content-type": "image/png"}, b""),
    ("PUT", "r2.example.com", "outputs/j/0.png", {"partNumber": "3", "uploadId": "2~abc/DEF+g=="}, {}, b"x" * 100),
    ("HEAD", "127.0.0.1:9000", None, {}, {}, b""),
    # DeleteObjects as service/clients/storage.py sends it (POST /bucket?delete)
    ("POST", "127.0.0.1:9000", None, {"delete": ""},
     {"content-md5": "1B2M2Y8AsgTpgAmY7PhCfg==", "content-type": "application/xml"},
     b'<?xml version="1.0" encoding="UTF-8"?><Delete><Quiet>true</Quiet><Object><Key>a&amp;b</Key></Object></Delete>'),
]


def _boto_request(method: str, url: str, headers: dict[str, str], body: bytes) -> AWSRequest:
    return AWSRequest(method=method, url=url, headers=dict(headers), data=body)


@pytest.mark.parametrize("creds", CREDS)
@pytest.mark.parametrize(("method", "host", "key", "query", "headers", "body"), CASES)
def test_header_signature_equals_botocores(
    creds: Credentials, method: str, host: str, key: str | None, query: dict[str, str],
    headers: dict[str, str], body: bytes, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import hashlib

    path = "/bucket" + ("" if key is None else "/" + uri_encode(key, keep_slash=True))
    ours = Signer("eu-west-1").sign_headers(
        creds, method, host, path, list(query.items()), headers,
        payload_sha256=hashlib.sha256(body).hexdigest(), now=NOW,
    )
    qs = "&".join(f"{uri_encode(k)}={uri_encode(v)}" for k, v in query.items())
    url = f"http://{host}{path}" + (f"?{qs}" if qs else "")
    request = _boto_request(method, url, headers, body)
    monkeypatch.setattr("botocore.auth.datetime.datetime", _Frozen)
    S3SigV4Auth(BotoCredentials(creds.access_key, creds.secret_key, creds.token), "s3", "eu-west-1").add_auth(request)
    assert ours["authorization"] == request.headers["Authorization"]
    assert ours["x-amz-content-sha256"] == request.headers["X-Amz-Content-SHA256"]


@pytest.mark.parametrize("creds", CREDS)
def test_presigned_query_equals_botocores(creds: Credentials, monkeypatch: pytest.MonkeyPatch) -> None:
    path = "/bucket/" + uri_encode("outputs/job 01/0.jpeg", keep_slash=True)
    ours = dict(parse_qsl(Signer("us-east-1").presign_query(creds, "GET", "127.0.0.1:9000", path, 900, now=NOW)))
    request = _boto_request("GET", f"http://127.0.0.1:9000{path}", {}, b"")
    monkeypatch.setattr("botocore.auth.datetime.datetime", _Frozen)
    S3SigV4QueryAuth(BotoCredentials(creds.access_key, creds.secret_key, creds.token), "s3", "us-east-1",
                     expires=900).add_auth(request)
    theirs = dict(parse_qsl(urlsplit(request.url).query))
    assert ours == theirs


def test_a_wrong_secret_gives_another_signature() -> None:
    sign = Signer("us-east-1").sign_headers
    a = sign(CREDS[0], "GET", "h", "/b/k", now=NOW)["authorization"]
    b = sign(Credentials("AKIDEXAMPLE", "other"), "GET", "h", "/b/k", now=NOW)["authorization"]
    assert a != b


class _Frozen(dt.datetime):
    @classmethod
    def utcnow(cls) -> _Frozen:  # type: ignore[override]
        return cls(2026, 12, 2, 4, 30, 15)

    @classmethod
    def now(cls, tz: dt.tzinfo | None = None) -> _Frozen:  # type: ignore[override]
        return cls(2026, 12, 2, 4, 30, 15, tzinfo=tz)
