"""storing → completed: copy every output into S3, then complete the job.

Each output streams from the provider straight into S3 (service/clients/storage.py), so
memory holds about one multipart part whatever the image size. Keys are deterministic
(``{prefix}{job_id}/{index}.{ext}``): a retry after a crash overwrites the same object,
so each job and index has exactly one object. Only when every output has its size and
sha256 recorded does the job become ``completed``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from service.clients.storage import StorageError, StoredObject
from service.db import completion, jobs, leases
from service.db.engine import raw_statement
from service.domain.content_credentials import Provenance, SigningFailed
from service.domain.errors import EgressRefused, Retry, ServiceError
from service.domain.image_types import EXTENSIONS, NOT_AN_IMAGE, SNIFF_BYTES, sniff
from service.domain.records import JobRecord, OutputRecord
from service.domain.schemas import output_count
from service.domain.states import JobStatus
from service.observability import logs, metrics
from service.observability.tracing import job_attributes, job_span
from service.resources import Resources
from service.work.backlog_limit import BacklogLimit
from service.work.backoff import backoff
from service.work.runner import claim_jobs, holder_for
from service.work.signed_copy import put_signed
from service.work.thumbnails import ThumbnailCopy

log = structlog.get_logger(__name__)

PROVIDER_RETENTION = dt.timedelta(days=7)
KEEP_FOR_THUMBNAIL_BYTES = 16 * 1024 * 1024
READ_BACK_FOR_THUMBNAIL_BYTES = 40 * 1024 * 1024


class NotAnImage(ServiceError):
    """The output is not a JPEG, PNG or WebP image."""


# Failures that may pass (a provider or S3 hiccup, a cut download, a signing failure: C2PA's
# reason is recorded and nothing unsigned is stored): the job waits and tries again.
RETRYABLE: tuple[type[Exception], ...] = (Retry, StorageError, httpx.HTTPError, SigningFailed)
# Failures no retry can change (what the bytes are, where the URL points): the job fails.
REFUSED: tuple[type[Exception], ...] = (EgressRefused, NotAnImage)
# Anything else is a bug or an outage: it propagates, the runner logs it, the lease
# lapses and the job is claimed again.


@dataclass(frozen=True)
class StoreRetry:
    delay: float
    message: str


@dataclass(frozen=True)
class StoreRefused:
    message: str


def after_failure(exc: Exception, attempts: int) -> StoreRetry | StoreRefused | None:
    """What a failure while storing a job's outputs means for the job (None: not a
    failure the storer handles)."""
    message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
    if isinstance(exc, REFUSED):
        return StoreRefused(message)
    if isinstance(exc, RETRYABLE):
        # A Retry names its own delay (an oversized output waits an hour, not seconds).
        delay = exc.delay if isinstance(exc, Retry) else backoff(attempts, base=2.0, cap=300.0)
        return StoreRetry(delay, message)
    return None


def retention_warning_hours(job: JobRecord, now: dt.datetime) -> float | None:
    """The job's age in hours once its outputs are within a day of the provider
    deleting them (7 days after the news), else None."""
    age = now - (job.last_news_at or job.created_at)
    if age > PROVIDER_RETENTION - dt.timedelta(days=1):
        return round(age.total_seconds() / 3600, 1)
    return None


def outputs_to_store(outputs: list[OutputRecord], asked: int) -> tuple[list[OutputRecord], list[int]]:
    """The outputs the job asked for (by index), and the indexes of any beyond that:
    extra ones are neither fetched, stored nor paid for, so a hostile or broken answer
    cannot fill the bucket."""
    return [o for o in outputs if o.index < asked], [o.index for o in outputs if o.index >= asked]


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _prepend(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if head:
        yield head
    async for chunk in rest:
        yield chunk


class Storer:
    name = "store"
    table = "jobs"

    def __init__(self, res: Resources) -> None:
        self.res = res
        self.holder = holder_for(res, self.name)
        self.limit = BacklogLimit(res.settings.store_concurrency, res.settings.store_concurrency_max)

    @property
    def concurrency(self) -> int:
        return self.limit.value

    def more_waiting(self) -> None:
        """A job moved to storing here found every slot taken (service/work/runner.py)."""
        self.limit.waiting()

    async def claim(self, limit: int) -> list[str]:
        claimed = await claim_jobs(self.res, [JobStatus.STORING.value], limit, holder=self.holder)
        self.limit.claimed(limit, len(claimed))
        return claimed

    async def run(self, job_id: str) -> None:
        with self.limit.running():
            await self._run(job_id)

    async def _run(self, job_id: str) -> None:
        res, worker = self.res, self.holder
        # One read, committing by itself: no BEGIN and ROLLBACK round trips on the path
        # from the webhook to the copy (the claim is ours, so nothing it reads moves).
        async with raw_statement(res.engine) as raw:
            job, outputs = await jobs.held_job_with_outputs(raw, job_id)
        logs.bind_job(job_id, job.provider_task_id)
        if job.status != JobStatus.STORING or job.locked_by != worker:
            return
        attributes = {**job_attributes(job.id, job.owner, job.model, job.status), "job.attempt": job.attempts}
        with job_span(res.tracing, "job.store", job.traceparent, attributes=attributes):
            await self._store(job, outputs)

    async def _store(self, job: JobRecord, outputs: list[OutputRecord]) -> None:
        """Copy the job's pending outputs and complete it (in its ``job.store`` span)."""
        res, worker, job_id = self.res, self.holder, job.id
        asked = output_count(job.input)
        outputs, extra = outputs_to_store(outputs, asked)
        pending = [o for o in outputs if o.stored_at is None]
        try:
            # Each output but the last is recorded on its own, so a retry does not copy
            # it again; the last is recorded in the completing transaction (one fewer).
            for output in pending[:-1]:
                if not await self._store_one(job, output):
                    return  # the job was deleted meanwhile
            began = time.monotonic()
            last = await self._upload(job, pending[-1]) if pending else None
            copy_seconds = time.monotonic() - began
        except (*RETRYABLE, *REFUSED) as exc:
            verdict = after_failure(exc, job.attempts)
            if isinstance(verdict, StoreRetry):
                await self._retry_later(job, verdict)
            elif verdict is not None:
                async with res.engine.begin() as conn:
                    await jobs.fail(conn, job, verdict.message, reason="output.refused", worker=worker)
                log.warning("output.refused", job_id=job_id, error=verdict.message)
            return
        stored = self._stored_output(job, pending[-1], *last, copy_seconds) if last is not None else None
        price = res.settings.price_usd(job.model)
        ignored = {"indexes": extra[:20], "count": len(extra), "asked": asked} if extra else None
        # This process's deliverer takes the callback at once when it has a free slot: the
        # completing statement leases the new delivery to it (no claim, no wake-up).
        with leases.handing_over(res.handoff, ["deliver"] if job.callback_url else []) as slots:
            async with raw_statement(res.engine) as raw:
                done = await completion.complete_stored(
                    raw, job, worker, output=stored, ignored=ignored, cost=jobs.cost_for(price, len(outputs) or asked),
                    deliverer=slots.holders[0] if slots.holders else None, lease=res.settings.lease_seconds)
            slots.adopted = [done.adopted]
        if done.deleted and last is not None:
            # The job was deleted meanwhile: nothing was recorded, so what we uploaded goes again.
            await res.storage.delete_keys([k for k in (last[0].key, last[1]) if k])
            return
        if stored is not None:
            metrics.observe_output(job.model, stored.size_bytes)
        if done.queued_delivery and done.adopted is None:
            # This process's deliverer looks now, not once the NOTIFY has come back.
            res.notifications.kick("deliver")
        if done.moved:
            metrics.observe_stored_job(job.model, job.last_news_at)
            log.info("job.completed", job_id=job_id, task_id=job.provider_task_id, outputs=len(outputs))

    def _stored_output(self, job: JobRecord, output: OutputRecord, stored: StoredObject, thumbnail_key: str | None,
                       copy_seconds: float) -> completion.StoredOutput:
        """The job_outputs row of a copied output and its output.stored event, which says
        how long the copy took (download, S3, thumbnail): a job's time between its webhook
        and its completion splits into waiting and copying."""
        return completion.StoredOutput(
            index=output.index, key=stored.key, content_type=stored.content_type, size_bytes=stored.size_bytes,
            sha256=stored.sha256, thumbnail_key=thumbnail_key, content_credentials=self.res.content_signer is not None,
            event={"index": output.index, "key": stored.key, "size_bytes": stored.size_bytes,
                   "sha256": stored.sha256, "copy_seconds": round(copy_seconds, 4)})

    async def _retry_later(self, job: JobRecord, verdict: StoreRetry) -> None:
        message, delay = verdict.message, verdict.delay
        async with self.res.engine.begin() as conn:
            await jobs.add_event(conn, job.id, "output.store_failed",
                                 {"error": message[:500], "retry_in": round(delay, 2)})
            age_hours = retention_warning_hours(job, dt.datetime.now(dt.UTC))
            if age_hours is not None:
                # The provider deletes outputs after 7 days: say so loudly while there is time.
                await jobs.add_event(conn, job.id, "output.retention_warning", {"age_hours": age_hours})
                log.error("output.retention_warning", job_id=job.id, age_hours=age_hours)
            await jobs.reschedule(conn, job.id, self.holder, delay)
        log.warning("output.store_failed", job_id=job.id, task_id=job.provider_task_id, error=message[:200])

    async def _store_one(self, job: JobRecord, output: OutputRecord) -> bool:
        """Store one output; False (and nothing kept) when the job was deleted meanwhile."""
        began = time.monotonic()
        stored, thumbnail_key = await self._upload(job, output)
        copy_seconds = time.monotonic() - began
        async with self.res.engine.begin() as conn:
            return await self._record(conn, job, self._stored_output(job, output, stored, thumbnail_key, copy_seconds))

    async def _upload(self, job: JobRecord, output: OutputRecord) -> tuple[StoredObject, str | None]:
        """Copy one output (and its thumbnail) into S3: an ``output.copy`` span."""
        with self.res.tracing.span("output.copy", attributes={"job.id": job.id, "output.index": output.index}) as span:
            stored, thumbnail_key = await self._copy(job, output)
            span.set_attributes({"output.size_bytes": stored.size_bytes, "output.content_type": stored.content_type})
            return stored, thumbnail_key

    async def _copy(self, job: JobRecord, output: OutputRecord) -> tuple[StoredObject, str | None]:
        """The output's PUT and its thumbnail (made, then PUT) run side by side once the
        output's bytes are all in hand: the copy takes the longer of the two, not their
        sum. Both keys are recorded together afterwards, in the one completing statement
        (or ``_record``), so a deletion meanwhile still finds and deletes both objects."""
        fmt = job.input.get("output_format", "jpeg")
        source: str = output.source_url
        thumbnail = ThumbnailCopy(self.res.storage)
        try:
            if source.startswith("data:"):
                try:
                    _, data = jobs.decode_data_url(source)
                except ValueError:  # binascii.Error: not base64
                    raise NotAnImage(f"output {output.index} is a data: URL that is not base64") from None
                # The type the URL declares is only a claim: the bytes decide.
                content_type = sniff(data[:SNIFF_BYTES])
                if content_type is None:
                    raise NotAnImage(f"output {output.index} {NOT_AN_IMAGE}")
                key = self._key(job.id, output.index, content_type, fmt)
                if len(data) <= READ_BACK_FOR_THUMBNAIL_BYTES:
                    thumbnail.start(key, data)
                stored = await self._put(job, output.index, key, _once(data), content_type)
            else:
                stored = await self._stream(job, output.index, source, fmt, thumbnail)
            if not thumbnail.started and stored.size_bytes <= READ_BACK_FOR_THUMBNAIL_BYTES:
                # Too large (or unsized) to have been held: read back from S3, after the PUT.
                await self._thumbnail_from_s3(stored, thumbnail)
            return stored, await thumbnail.key()
        except BaseException:
            await thumbnail.settle()
            raise

    async def _record(self, conn: AsyncConnection, job: JobRecord, out: completion.StoredOutput) -> bool:
        """Record a copied output (not the last: STORE_COMPLETE records that one) in
        ``conn``'s transaction; False when the job was deleted."""
        # Under the job's row lock: once a deletion has committed, no object is recorded
        # (service/work/eraser.py relies on this), so what we just uploaded goes again.
        if await jobs.is_deleted(conn, job.id):
            await self.res.storage.delete_keys([k for k in (out.key, out.thumbnail_key) if k])
            return False
        await jobs.record_output(conn, job.id, out.index, key=out.key, content_type=out.content_type,
                                 size_bytes=out.size_bytes, sha256=out.sha256, thumbnail_key=out.thumbnail_key,
                                 content_credentials=out.content_credentials)
        await jobs.add_event(conn, job.id, "output.stored", out.event)
        metrics.observe_output(job.model, out.size_bytes)
        return True

    async def _put(self, job: JobRecord, index: int, key: str, chunks: AsyncIterator[bytes],
                   content_type: str) -> StoredObject:
        """Upload one output, with Content Credentials embedded when a signer is set."""
        signer = self.res.content_signer
        if signer is None:
            return await self.res.storage.put_stream(key, chunks, content_type)
        provenance = Provenance.of_job(job.id, job.model, job.input, index, dt.datetime.now(dt.UTC),
                                       include_prompt=signer.include_prompt)
        return await put_signed(self.res.storage, signer, key, chunks, content_type, provenance)

    def _key(self, job_id: str, index: int, content_type: str, fmt: str) -> str:
        ext = EXTENSIONS.get(content_type, fmt)
        return f"{self.res.settings.s3_prefix}{job_id}/{index}.{ext}"

    async def _stream(self, job: JobRecord, index: int, url: str, fmt: str, thumbnail: ThumbnailCopy) -> StoredObject:
        """Stream one output into S3. When its declared size is at most
        KEEP_FOR_THUMBNAIL_BYTES (every real Flux image) its bytes are also kept, and the
        thumbnail starts from them as soon as the download ends, while the output's PUT
        runs; larger or unsized outputs are never held in memory."""
        settings = self.res.settings
        timeout = httpx.Timeout(settings.download_timeout_seconds, connect=10.0)
        try:
            return await self._download(job, index, url, fmt, timeout, thumbnail)
        except EgressRefused as exc:
            raise EgressRefused(f"output {index} refused: {exc.message}") from None

    async def _download(
        self, job: JobRecord, index: int, url: str, fmt: str, timeout: httpx.Timeout, thumbnail: ThumbnailCopy
    ) -> StoredObject:
        settings = self.res.settings
        # Redirects are followed by hand, each hop checked and pinned (service/clients/egress.py).
        async with self.res.egress.get_following(url, timeout=timeout, host_problem=self._host_problem) as response:
            if response.status_code != 200:
                raise Retry(f"output {index} download answered HTTP {response.status_code}",
                            delay=backoff(job.attempts))
            stream = response.aiter_bytes(1024 * 1024)
            head = b""
            async for chunk in stream:  # the first bytes decide the type, whatever the header says
                head += chunk
                if len(head) >= SNIFF_BYTES:
                    break
            content_type = sniff(head[:SNIFF_BYTES])
            if content_type is None:
                raise NotAnImage(f"output {index} {NOT_AN_IMAGE}")
            limit = settings.max_output_bytes
            expected = response.headers.get("content-length")
            declared = int(expected) if expected and expected.isdigit() else None
            kept = bytearray() if declared is not None and declared <= KEEP_FOR_THUMBNAIL_BYTES else None
            seen = 0  # bytes downloaded (what S3 receives may be more: the signed copy)
            key = self._key(job.id, index, content_type, fmt)

            async def chunks() -> AsyncIterator[bytes]:
                nonlocal seen
                async for chunk in _prepend(head, stream):
                    seen += len(chunk)
                    if seen > limit:
                        raise Retry(f"output {index} is larger than MAX_OUTPUT_BYTES ({limit})", delay=3600)
                    if kept is not None and seen <= KEEP_FOR_THUMBNAIL_BYTES:
                        kept.extend(chunk)
                    yield chunk
                # The whole body is in hand (put_stream has yet to send it, or its last
                # part): the thumbnail goes now, beside the output's PUT.
                if kept is not None and len(kept) == seen == declared:
                    thumbnail.start(key, bytes(kept))

            stored = await self._put(job, index, key, chunks(), content_type)
            if declared is not None and declared != seen:
                raise Retry(f"output {index} was cut short ({seen} of {declared} bytes)", delay=backoff(job.attempts))
            return stored

    def _host_problem(self, host: str) -> str | None:
        """OUTPUT_HOSTS_ALLOWED: when set, a download (and each redirect) must stay on
        one of its host suffixes."""
        suffixes = self.res.settings.output_host_suffixes
        if not suffixes or any(host == s or host.endswith("." + s) for s in suffixes):
            return None
        return f"host {host!r} is not in OUTPUT_HOSTS_ALLOWED"

    async def _thumbnail_from_s3(self, stored: StoredObject, thumbnail: ThumbnailCopy) -> None:
        """Start the thumbnail of an output that was not held, from its bytes read back.
        Best effort: an output that cannot be read back gets no thumbnail."""
        try:
            data = await self.res.storage.get_bytes(stored.key)
        except StorageError as exc:
            log.warning("thumbnail.failed", key=stored.key, error=type(exc).__name__)
            return
        thumbnail.start(stored.key, data)
