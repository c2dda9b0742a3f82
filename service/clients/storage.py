"""S3: PutObject of a body that fits in one part, DeleteObjects and presigned GETs are
written and signed here (service/clients/sigv4.py) with the credentials boto3 resolved,
and sent on the event loop over the lifespan's httpx client; the rest (multipart
uploads, reads, listings, the bucket check) goes through boto3 in a bounded thread pool,
so the event loop never blocks on S3.

Why by hand where it is: botocore's per-call pipeline (parameter checks, event hooks,
endpoint rules, serialising, a thread per call) costs more CPU than the request itself.
A PutObject signed here costs 0.56× the CPU of boto3's put_object for a 30 KiB object
and 0.71× for 500 KiB (tests/benchmarks/bench_s3client.py, docs/benchmarks.md); until
the connection pool was mended (service/clients/http_client.py), httpx's own pool
bookkeeping made it cost more, not less. Presigning here is 4-6× cheaper than botocore's
generate_presigned_url. DeleteObjects: botocore spends 14-16 ms of Python per 1,000-key
call in a thread that competes with the event loop for the GIL; this takes 2-4 ms.

Large objects stream: bytes arrive from an async iterator and go up as multipart parts
of ``part_size`` bytes, so memory holds at most about one part whatever the object size.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import hashlib
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import boto3
import httpx
from botocore.config import Config
from opentelemetry.trace import SpanKind

from service.clients.http_client import http_client, lean_transport
from service.clients.sigv4 import Credentials, Signer, uri_encode
from service.domain.errors import ServiceError
from service.domain.image_types import content_type_of_key
from service.observability import metrics
from service.observability.tracing import Tracing

PRESIGN_CACHE_SIZE = 50_000
DELETE_BATCH = 1000  # S3 DeleteObjects takes at most 1,000 keys per call
# A PUT of the same key and bytes is idempotent: retried once on these, as boto3's
# standard mode would (S3 asks for a retry with 503 SlowDown).
RETRIED_PUT_STATUSES = frozenset({500, 502, 503, 504})
PUT_TIMEOUT = httpx.Timeout(30, connect=5)
S3_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"


def _own_http(ca_bundle: str | None) -> httpx.AsyncClient:
    """Storage's own HTTP client: checking the endpoint against ``ca_bundle``, else the public roots."""
    context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else None
    return http_client(lean_transport(max_connections=100, max_keepalive_connections=20, ssl_context=context),
                       follow_redirects=False)


class StorageError(ServiceError):
    """S3 could not be reached or refused the request."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size_bytes: int
    sha256: str
    content_type: str


# A job's objects are its outputs and thumbnails: a handful. A prefix listing stops here.
LIST_LIMIT = 10_000


class Storage:
    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str | None,
        region: str,
        part_size: int = 8 * 1024 * 1024,
        max_threads: int = 8,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        http: httpx.AsyncClient | None = None,
        tracing: Tracing | None = None,
        ca_bundle: str | None = None,
    ) -> None:
        """``http``: the process's HTTP client for the calls made here by hand (the
        lifespan's; without one, Storage makes its own, closed by ``aclose``).
        ``ca_bundle``: a PEM file of the CAs the endpoint's certificate is checked against
        (AWS_CA_BUNDLE), for boto3's calls and those made here; with it Storage makes its
        own HTTP client, as the process's checks against the public roots.
        ``tracing``: the process's tracer, for a span per call made by hand, named and
        described as botocore's instrumentation names its calls."""
        self._tracing = tracing or Tracing.off()
        ca_bundle = ca_bundle or None  # "" is no bundle: the public roots
        self.bucket = bucket
        self.part_size = part_size
        session = boto3.session.Session(
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key, region_name=region
        )
        self._client: Any = session.client(
            "s3",
            endpoint_url=endpoint_url,
            # The bundle, or the public roots: never botocore's own lookup of AWS_CA_BUNDLE
            # (Settings reads it; an empty one there turned verification off in older
            # botocore), so boto3's calls and those signed here trust the same CAs.
            verify=ca_bundle or True,
            config=Config(
                signature_version="s3v4",
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
                max_pool_connections=max_threads,
                s3={"addressing_style": "path"},
            ),
        )
        # Presigning: the same credentials (refreshed by botocore when they expire), the
        # same path-style URL as the client's.
        self._credentials: Any = session.get_credentials()
        self._signer = Signer(region)
        origin = urlsplit(endpoint_url or f"https://s3.{region}.amazonaws.com")
        self._origin = f"{origin.scheme}://{origin.netloc}"
        self._host = origin.netloc
        self._base_path = origin.path.rstrip("/")
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="s3")
        self._presigned: dict[tuple[str, int], tuple[str, float]] = {}
        # Made now, not at the first erasure: building a client (its SSL context) holds
        # the event loop for 20-40 ms, a stall every request in flight would wait out.
        self._http: httpx.AsyncClient = http if http is not None and ca_bundle is None else _own_http(ca_bundle)
        self._owns_http = self._http is not http

    async def _run(self, fn: Any, /, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            # In the caller's context: an S3 call's span (botocore's, when traces are
            # exported) is then a child of the output copy that made it.
            return await loop.run_in_executor(self._pool, contextvars.copy_context().run, partial(fn, **kwargs))
        except Exception as exc:  # botocore raises many unrelated types
            metrics.s3_error(getattr(fn, "__name__", "call"))
            raise StorageError(f"S3 {getattr(fn, '__name__', 'call')} failed: {type(exc).__name__}: {exc}") from exc

    def _creds(self) -> Credentials:
        if self._credentials is None:
            raise StorageError("no S3 credentials to sign a request with")
        frozen = self._credentials.get_frozen_credentials()
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    def _presign(self, key: str, expires: int) -> str:
        creds = self._creds()
        path = f"{self._base_path}/{uri_encode(self.bucket)}/{uri_encode(key, keep_slash=True)}"
        # response-content-type pins the answer's type to what the key stands for (only
        # image types are stored), whatever metadata the object might carry.
        pinned = (("response-content-type", content_type_of_key(key)),)
        query = self._signer.presign_query(creds, "GET", self._host, path, expires, extra=pinned)
        return f"{self._origin}{path}?{query}"

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()
        self.close()

    async def ensure_bucket(self) -> None:
        try:
            await self._run(self._client.head_bucket, Bucket=self.bucket)
        except StorageError:
            await self._run(self._client.create_bucket, Bucket=self.bucket)

    async def ping(self) -> None:
        await self._run(self._client.head_bucket, Bucket=self.bucket)

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes], content_type: str) -> StoredObject:
        """Upload from ``chunks``; one PUT if it all fits in a part, else multipart.
        Returns the size and sha256 of what was uploaded."""
        digest = hashlib.sha256()
        size = 0
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            async for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                buffer += chunk
                if len(buffer) >= self.part_size:
                    if upload_id is None:
                        created = await self._run(
                            self._client.create_multipart_upload, Bucket=self.bucket, Key=key, ContentType=content_type
                        )
                        upload_id = created["UploadId"]
                    # One copy, not two: slicing the bytearray itself would copy the
                    # part once more before bytes() copies it again.
                    with memoryview(buffer) as view:
                        body = bytes(view[: self.part_size])
                    del buffer[: self.part_size]
                    number = len(parts) + 1
                    answer = await self._run(
                        self._client.upload_part,
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body,
                    )
                    parts.append({"ETag": answer["ETag"], "PartNumber": number})
                    del body
            if upload_id is None:
                await self._put_object(key, bytes(buffer), digest.hexdigest(), content_type)
            else:
                if buffer:
                    number = len(parts) + 1
                    answer = await self._run(
                        self._client.upload_part,
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=bytes(buffer),
                    )
                    parts.append({"ETag": answer["ETag"], "PartNumber": number})
                await self._run(
                    self._client.complete_multipart_upload,
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts},
                )
        except BaseException:
            if upload_id is not None:
                # Abandoned parts cost storage; abort is best effort.
                with contextlib.suppress(StorageError):
                    await self._run(self._client.abort_multipart_upload, Bucket=self.bucket, Key=key,
                                    UploadId=upload_id)
            raise
        return StoredObject(key=key, size_bytes=size, sha256=digest.hexdigest(), content_type=content_type)

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> StoredObject:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.put_stream(key, one(), content_type)

    async def put_made(self, key: str, make: Callable[[], bytes | None], content_type: str) -> bool:
        """Make an object's bytes with ``make`` in one of the pool's threads (with their
        sha256, which the signature needs) and upload them in one PUT. False, and nothing
        uploaded, when ``make`` returns None. ``make``'s own exceptions propagate as they
        are; S3's become StorageError."""
        loop = asyncio.get_running_loop()

        def made() -> tuple[bytes, str] | None:
            body = make()
            return None if body is None else (body, hashlib.sha256(body).hexdigest())

        result = await loop.run_in_executor(self._pool, contextvars.copy_context().run, made)
        if result is None:
            return False
        await self._put_object(key, result[0], result[1], content_type)
        return True

    async def _put_object(self, key: str, body: bytes, sha256: str, content_type: str) -> None:
        """One PutObject, signed here and sent on the event loop."""
        path = f"{self._base_path}/{uri_encode(self.bucket)}/{uri_encode(key, keep_slash=True)}"
        with self._call_span("PutObject"):
            for attempt in (1, 2):
                signed = self._signer.sign_headers(self._creds(), "PUT", self._host, path,
                                                   headers={"content-type": content_type}, payload_sha256=sha256)
                try:
                    answer = await self._http.put(f"{self._origin}{path}", content=body, headers=signed,
                                                  timeout=PUT_TIMEOUT)
                except httpx.HTTPError as exc:
                    if attempt == 1:
                        continue
                    metrics.s3_error("put_object")
                    raise StorageError(f"S3 PutObject failed: {type(exc).__name__}: {exc}") from exc
                if answer.status_code == 200:
                    return
                if attempt == 1 and answer.status_code in RETRIED_PUT_STATUSES:
                    continue
                metrics.s3_error("put_object")
                raise StorageError(f"S3 PutObject answered {answer.status_code} {s3_error_code(answer.content)}")

    def _call_span(self, operation: str) -> contextlib.AbstractContextManager[Any]:
        """The span of one S3 call made by hand: botocore's instrumentation's name and
        attributes, so a trace shows every S3 call alike, whichever client made it."""
        return self._tracing.span(f"S3.{operation}", kind=SpanKind.CLIENT, attributes={
            "rpc.system": "aws-api", "rpc.service": "S3", "rpc.method": operation,
            "aws.s3.bucket": self.bucket})

    async def get_bytes(self, key: str) -> bytes:
        answer = await self._run(self._client.get_object, Bucket=self.bucket, Key=key)
        return await self._run(answer["Body"].read)  # type: ignore[no-any-return]

    async def list_keys(self, prefix: str, limit: int = LIST_LIMIT) -> list[str]:
        """The keys under ``prefix``, at most ``limit`` (pages of 1,000)."""
        keys: list[str] = []
        token: str | None = None
        while len(keys) < limit:
            page = await self._run(self._client.list_objects_v2, Bucket=self.bucket, Prefix=prefix,
                                   MaxKeys=min(1000, limit - len(keys)),
                                   **({"ContinuationToken": token} if token else {}))
            keys += [item["Key"] for item in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                break
        return keys

    async def delete_keys(self, keys: list[str]) -> int:
        """Delete ``keys`` with DeleteObjects, up to DELETE_BATCH per call; returns the
        number of calls made. A key already gone counts as deleted (S3 answers so), so a
        repeated erasure is harmless. Raises StorageError if any key could not be deleted;
        one attempt per call (the eraser retries a failed erasure later, the storer its
        output), where boto3's calls make two."""
        calls = 0
        for start in range(0, len(keys), DELETE_BATCH):
            await self._delete_objects(keys[start : start + DELETE_BATCH])
            calls += 1
        return calls

    async def _delete_objects(self, keys: Sequence[str]) -> None:
        body = delete_objects_body(keys)
        path = f"{self._base_path}/{uri_encode(self.bucket)}"
        # Content-MD5: every S3 (AWS, MinIO, R2) takes it for DeleteObjects, which
        # requires a checksum of its body.
        headers = {"content-md5": base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode(),
                   "content-type": "application/xml"}
        with self._call_span("DeleteObjects"):
            signed = self._signer.sign_headers(self._creds(), "POST", self._host, path, [("delete", "")], headers,
                                               payload_sha256=hashlib.sha256(body).hexdigest())
            try:
                answer = await self._http.post(f"{self._origin}{path}?delete", content=body, headers=signed,
                                               timeout=httpx.Timeout(30, connect=5))
            except httpx.HTTPError as exc:
                metrics.s3_error("delete_objects")
                raise StorageError(f"S3 DeleteObjects failed: {type(exc).__name__}: {exc}") from exc
            if answer.status_code != 200:
                metrics.s3_error("delete_objects")
                raise StorageError(f"S3 DeleteObjects answered {answer.status_code} {s3_error_code(answer.content)}")
            failed = delete_errors(answer.content)
            if failed:
                metrics.s3_error("delete_objects")
                key, code = failed[0]
                raise StorageError(f"S3 could not delete {len(failed)} objects, e.g. {key!r}: {code}")

    def presign(self, key: str, expires: int = 3600) -> str:
        """A presigned GET URL valid for at least ``expires * 5/6`` seconds from now.

        Signing is local computation (no network call, safe on the event loop): about
        40 µs here against ~0.35 ms in botocore, which dominated history pages. A URL is
        still reused while five sixths of its life remain.
        """
        now = time.monotonic()
        cached = self._presigned.get((key, expires))
        if cached is not None and now - cached[1] < expires / 6:
            return cached[0]
        url = self._presign(key, expires)
        if len(self._presigned) >= PRESIGN_CACHE_SIZE:
            self._presigned.clear()  # crude but bounded; refills from the next page
        self._presigned[(key, expires)] = (url, now)
        return url


def delete_objects_body(keys: Sequence[str]) -> bytes:
    """DeleteObjects' request body; Quiet, so the answer lists only the failures."""
    objects = "".join(f"<Object><Key>{escape(key)}</Key></Object>" for key in keys)
    return (f'<?xml version="1.0" encoding="UTF-8"?><Delete xmlns="{S3_XMLNS}"><Quiet>true</Quiet>'
            f"{objects}</Delete>").encode()


def delete_errors(answer: bytes) -> list[tuple[str, str]]:
    """(key, code) of each key a DeleteObjects answer says could not be deleted."""
    if b"<Error>" not in answer:
        return []
    root = ElementTree.fromstring(answer)
    return [(e.findtext("{*}Key") or "", e.findtext("{*}Code") or "") for e in root.iter() if e.tag.endswith("Error")]


def s3_error_code(answer: bytes) -> str:
    """The <Code> of an S3 error answer, or "" when it is not one."""
    try:
        root = ElementTree.fromstring(answer)
    except ElementTree.ParseError:
        return ""
    return root.findtext("Code") or root.findtext("{*}Code") or ""
