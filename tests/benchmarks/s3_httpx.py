"""An S3 client of requests signed by hand on one ``httpx.AsyncClient`` for every call
(service/clients/sigv4.py; path-style, multipart for large bodies): the alternative side
of tests/benchmarks/bench_s3client.py, not shipped.

The service signs its single-part PutObject and DeleteObjects by hand (service/clients/
storage.py) and leaves multipart uploads, reads and listings to boto3. Measured before
the process's connection pool was mended (service/clients/http_client.py), an all-httpx
client cost more CPU per PUT than boto3, not less: httpcore's pool bookkeeping polled
every idle connection twice per request. It works against moto (the benchmark checks
nothing else), and stays here so the comparison can be re-checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx

from service.clients.http_client import lean_transport
from service.clients.sigv4 import EMPTY_SHA256, Credentials, Signer, uri_encode
from service.clients.storage import StorageError, StoredObject

PRESIGN_CACHE_SIZE = 50_000
RETRIED_STATUSES = frozenset({500, 502, 503, 504})
SEND_SLICE_BYTES = 64 * 1024


async def _slices(body: bytes) -> AsyncIterator[bytes]:
    # Views, not copies: the HTTP layer joins each with its framing once anyway.
    view = memoryview(body)
    for start in range(0, len(body), SEND_SLICE_BYTES):
        yield view[start : start + SEND_SLICE_BYTES]  # type: ignore[misc]





def _credential_source(access_key_id: str | None, secret_access_key: str | None) -> Any:
    """Explicit keys, else botocore's chain (env, files, roles; refreshable ones renew)."""
    if access_key_id and secret_access_key:
        return Credentials(access_key_id, secret_access_key)
    import botocore.session  # type: ignore[import-untyped]  # the credential chain only: no client is made

    found = botocore.session.get_session().get_credentials()
    if found is None:
        raise StorageError("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    return found


def _error_text(response: httpx.Response) -> str:
    """S3's error code and message from its XML body (never our request's headers)."""
    try:
        root = ET.fromstring(response.content)
        code, message = root.findtext("Code") or "", root.findtext("Message") or ""
        return f"HTTP {response.status_code} {code}: {message}"[:300]
    except ET.ParseError:
        return f"HTTP {response.status_code}"


def _xml_text(body: bytes, tag: str) -> str:
    for element in ET.fromstring(body).iter():
        if element.tag.rsplit("}", 1)[-1] == tag and element.text:
            return element.text
    raise StorageError(f"S3 answer without {tag}")


class HttpxStorage:
    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str | None,
        region: str,
        part_size: int = 8 * 1024 * 1024,
        max_connections: int = 32,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.bucket = bucket
        self.part_size = part_size
        endpoint = (endpoint_url or f"https://s3.{region}.amazonaws.com").rstrip("/")
        parts = urlsplit(endpoint)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._host = parts.netloc
        self._base_path = parts.path  # an endpoint behind a path prefix keeps it
        self._signer = Signer(region)
        self._credentials = _credential_source(access_key_id, secret_access_key)
        # Its own client: S3 is the operator's endpoint, not a URL given on anyone's
        # behalf, so it does not go through the egress checks; redirects are not followed.
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=5.0),
            transport=lean_transport(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,
        )
        self._presigned: dict[tuple[str, int], tuple[str, float]] = {}

    def _creds(self) -> Credentials:
        source = self._credentials
        if isinstance(source, Credentials):
            return source
        frozen = source.get_frozen_credentials()  # renews role credentials near expiry
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    def _path(self, key: str | None = None) -> str:
        path = f"{self._base_path}/{uri_encode(self.bucket)}"
        return path if key is None else f"{path}/{uri_encode(key, keep_slash=True)}"

    async def _call(
        self, method: str, key: str | None, *, query: dict[str, str] | None = None, body: bytes = b"",
        headers: dict[str, str] | None = None, payload_sha256: str | None = None, ok: tuple[int, ...] = (200,),
    ) -> httpx.Response:
        """One signed request, retried once on a dropped connection or a 5xx (every call
        here is idempotent: a PUT of the same key and bytes, a read, a multipart step)."""
        path, params = self._path(key), list((query or {}).items())
        digest = payload_sha256 or (hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256)
        url = self._origin + path
        for attempt in (1, 2):
            signed = self._signer.sign_headers(
                self._creds(), method, self._host, path, params, headers, payload_sha256=digest
            )
            content: bytes | AsyncIterator[bytes] = body
            if len(body) > SEND_SLICE_BYTES:
                # In slices: the HTTP layer joins and buffers what it is handed, so a part
                # handed whole would be copied twice more (a multipart part is 8 MiB).
                content = _slices(body)
                signed["content-length"] = str(len(body))
            try:
                response = await self._http.request(method, url, params=httpx.QueryParams(dict(params)),
                                                     content=content, headers=signed)
            except httpx.HTTPError as exc:
                if attempt == 2:
                    raise StorageError(f"S3 {method} failed: {type(exc).__name__}: {exc}") from exc
                continue
            if response.status_code in ok:
                return response
            if attempt == 2 or response.status_code not in RETRIED_STATUSES:
                raise StorageError(f"S3 {method} {key or self.bucket} failed: {_error_text(response)}")
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def ensure_bucket(self) -> None:
        try:
            await self.ping()
        except StorageError:
            region = self._signer.region
            body = b"" if region == "us-east-1" else (
                "<CreateBucketConfiguration><LocationConstraint>"
                f"{region}</LocationConstraint></CreateBucketConfiguration>").encode()
            await self._call("PUT", None, body=body)

    async def ping(self) -> None:
        await self._call("HEAD", None)

    async def _put_object(self, key: str, body: bytes, sha256: str, content_type: str) -> None:
        await self._call("PUT", key, body=body, headers={"content-type": content_type}, payload_sha256=sha256)

    async def _create_multipart(self, key: str, content_type: str) -> str:
        answer = await self._call("POST", key, query={"uploads": ""}, headers={"content-type": content_type})
        return _xml_text(answer.content, "UploadId")

    async def _upload_part(self, key: str, upload_id: str, number: int, body: bytes) -> str:
        answer = await self._call("PUT", key, query={"partNumber": str(number), "uploadId": upload_id}, body=body)
        return answer.headers["etag"]

    async def _complete_multipart(self, key: str, upload_id: str, etags: list[str]) -> None:
        parts = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>"
                        for n, e in enumerate(etags, start=1))
        body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        answer = await self._call("POST", key, query={"uploadId": upload_id}, body=body,
                                  headers={"content-type": "application/xml"})
        if b"<Error>" in answer.content:  # S3 may answer 200 and fail in the body
            raise StorageError(f"S3 complete multipart upload of {key} failed: {answer.content[:300]!r}")

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes], content_type: str) -> StoredObject:
        """Upload from ``chunks``; one PUT if it all fits in a part, else multipart.
        Returns the size and sha256 of what was uploaded."""
        digest = hashlib.sha256()
        size = 0
        buffer = bytearray()
        upload_id: str | None = None
        etags: list[str] = []
        try:
            async for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                buffer += chunk
                if len(buffer) >= self.part_size:
                    if upload_id is None:
                        upload_id = await self._create_multipart(key, content_type)
                    # One copy, not two: slicing the bytearray itself would copy the
                    # part once more before bytes() copies it again.
                    with memoryview(buffer) as view:
                        body = bytes(view[: self.part_size])
                    del buffer[: self.part_size]
                    etags.append(await self._upload_part(key, upload_id, len(etags) + 1, body))
                    del body
            if upload_id is None:
                # The whole object is one buffer: its sha256 is the payload hash too.
                await self._put_object(key, bytes(buffer), digest.hexdigest(), content_type)
            else:
                if buffer:
                    etags.append(await self._upload_part(key, upload_id, len(etags) + 1, bytes(buffer)))
                await self._complete_multipart(key, upload_id, etags)
        except BaseException:
            if upload_id is not None:
                # Abandoned parts cost storage; abort is best effort.
                with contextlib.suppress(StorageError):
                    await self._call("DELETE", key, query={"uploadId": upload_id}, ok=(204, 200))
            raise
        return StoredObject(key=key, size_bytes=size, sha256=digest.hexdigest(), content_type=content_type)

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> StoredObject:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.put_stream(key, one(), content_type)

    async def get_bytes(self, key: str) -> bytes:
        return (await self._call("GET", key)).content

    def presign(self, key: str, expires: int = 3600) -> str:
        """A presigned GET URL valid for at least ``expires * 5/6`` seconds from now.

        Signing is local computation (no network call, safe on the event loop); a URL is
        still reused while five sixths of its life remain, as history pages sign dozens.
        """
        now = time.monotonic()
        cached = self._presigned.get((key, expires))
        if cached is not None and now - cached[1] < expires / 6:
            return cached[0]
        path = self._path(key)
        query = self._signer.presign_query(self._creds(), "GET", self._host, path, expires)
        url = f"{self._origin}{path}?{query}"
        if len(self._presigned) >= PRESIGN_CACHE_SIZE:
            self._presigned.clear()  # crude but bounded; refills from the next page
        self._presigned[(key, expires)] = (url, now)
        return url
