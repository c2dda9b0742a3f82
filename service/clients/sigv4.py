"""AWS Signature Version 4 for S3 requests and presigned URLs, by hand.

Why not botocore per call: its request pipeline (parameter validation, event hooks,
serialisers, a thread per call for boto3) cost more CPU than the rest of storing an
output. The signature itself is a few HMACs; the signing key is derived once per day and
secret. tests/unit/test_sigv4.py checks every form against botocore's own signer, so this
stays what AWS, MinIO and R2 accept.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


def uri_encode(value: str, *, keep_slash: bool = False) -> str:
    """SigV4's encoding: everything but unreserved characters, once (S3 does not
    double-encode paths)."""
    return quote(value, safe="-_.~/" if keep_slash else "-_.~")


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    pairs = sorted((uri_encode(k), uri_encode(v)) for k, v in params)
    return "&".join(f"{k}={v}" for k, v in pairs)


def _amz_date(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


class Signer:
    def __init__(self, region: str, service: str = "s3") -> None:
        self.region = region
        self.service = service
        self._keys: dict[tuple[str, str], bytes] = {}

    def _signing_key(self, secret: str, datestamp: str) -> bytes:
        key = self._keys.get((secret, datestamp))
        if key is None:
            key = ("AWS4" + secret).encode()
            for part in (datestamp, self.region, self.service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._keys.clear()  # one day and one secret at a time
            self._keys[(secret, datestamp)] = key
        return key

    def _signature(self, creds: Credentials, amz_date: str, canonical_request: str) -> tuple[str, str]:
        scope = f"{amz_date[:8]}/{self.region}/{self.service}/aws4_request"
        to_sign = "\n".join((ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()))
        key = self._signing_key(creds.secret_key, amz_date[:8])
        return scope, hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()

    def sign_headers(
        self,
        creds: Credentials,
        method: str,
        host: str,
        path: str,
        query: Iterable[tuple[str, str]] = (),
        headers: dict[str, str] | None = None,
        payload_sha256: str = EMPTY_SHA256,
        now: dt.datetime | None = None,
    ) -> dict[str, str]:
        """The headers to send (``headers`` included) with an ``Authorization`` header.
        ``path`` is the already encoded path, exactly as it goes on the wire."""
        amz_date = _amz_date(now or dt.datetime.now(dt.UTC))
        out = {k.lower(): " ".join(v.split()) for k, v in (headers or {}).items()}
        out.update({"host": host, "x-amz-date": amz_date, "x-amz-content-sha256": payload_sha256})
        if creds.token:
            out["x-amz-security-token"] = creds.token
        names = sorted(out)
        signed_headers = ";".join(names)
        canonical = "\n".join((
            method, path, canonical_query(query), "".join(f"{n}:{out[n]}\n" for n in names), signed_headers,
            payload_sha256,
        ))
        scope, signature = self._signature(creds, amz_date, canonical)
        out["authorization"] = (
            f"{ALGORITHM} Credential={creds.access_key}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
        )
        return out

    def presign_query(
        self, creds: Credentials, method: str, host: str, path: str, expires: int, now: dt.datetime | None = None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> str:
        """The query string of a presigned URL (only ``host`` signed, payload unsigned);
        ``extra`` parameters (e.g. ``response-content-type``) are signed with it."""
        amz_date = _amz_date(now or dt.datetime.now(dt.UTC))
        scope = f"{amz_date[:8]}/{self.region}/{self.service}/aws4_request"
        params = [
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", f"{creds.access_key}/{scope}"),
            ("X-Amz-Date", amz_date),
            ("X-Amz-Expires", str(expires)),
            ("X-Amz-SignedHeaders", "host"),
        ]
        if creds.token:
            params.append(("X-Amz-Security-Token", creds.token))
        query = canonical_query([*params, *extra])
        canonical = "\n".join((method, path, query, f"host:{host}\n", "host", UNSIGNED_PAYLOAD))
        _, signature = self._signature(creds, amz_date, canonical)
        # Signed in canonical order; written as botocore writes it (request parameters
        # first, then the signature's own), so the URLs stay byte-for-byte botocore's.
        written = f"{canonical_query(extra)}&{canonical_query(params)}" if extra else query
        return f"{written}&X-Amz-Signature={signature}"
