"""``GET /v1/jobs/{id}/stream``: server-sent events of one job.

An event ``job`` (the job object) at once and after every status change, ending after
the terminal one; a comment every STREAM_KEEPALIVE_SECONDS keeps idle connections open.
Streams are woken by the process's one LISTEN connection (service/db/listen.py): an
open stream costs an Event and a parked coroutine, and reads the row only when told its
job changed, never on a timer.

A process holds at most STREAMS_MAX_PER_PROCESS streams (``StreamGate``); one more is
refused with 503, ``Retry-After`` and error type ``too_many_streams`` before anything is
read. On shutdown ``serve`` closes the gate first: every open stream sends a last comment
and ends its response, so the graceful wait is not spent on streams that never end.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.api.plumbing.auth import authenticate, resources
from service.api.plumbing.openapi_doc import BEARER, JOB_ID, documented, errors
from service.db import jobs
from service.db.history import jobs_by_owner_and_id
from service.domain.errors import NotFound, TooManyStreams
from service.domain.ids import checked_job_id
from service.domain.serialize import Job, job_dict
from service.domain.states import TERMINAL
from service.observability import metrics
from service.resources import Resources

READ_BATCH = 500
RETRY_AFTER_SECONDS = 5
CLOSING = ": closing: the server is shutting down, reconnect\n\n"


class StreamGate:
    """Counts this process's open streams, refuses one past the cap, and ends them all
    at shutdown. Made in the app's lifespan (``app.state.streams``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.closing = False
        self._open: set[asyncio.Event] = set()

    @property
    def open(self) -> int:
        return len(self._open)

    def enter(self, wake: asyncio.Event) -> None:
        """Admit a stream whose waits end when ``wake`` is set, or raise."""
        if self.closing:
            metrics.STREAMS_REFUSED.inc()
            raise TooManyStreams("the server is shutting down; reconnect", retry_after=RETRY_AFTER_SECONDS)
        if len(self._open) >= self.limit:
            metrics.STREAMS_REFUSED.inc()
            raise TooManyStreams(f"this server holds its maximum of {self.limit:,} live streams "
                                 f"(STREAMS_MAX_PER_PROCESS); retry in {RETRY_AFTER_SECONDS} s",
                                 retry_after=RETRY_AFTER_SECONDS)
        self._open.add(wake)
        metrics.STREAMS_OPEN.set(len(self._open))

    def leave(self, wake: asyncio.Event) -> None:
        self._open.discard(wake)
        metrics.STREAMS_OPEN.set(len(self._open))

    def close_all(self) -> None:
        """Shutdown: refuse new streams and wake every open one, which then ends."""
        self.closing = True
        for wake in self._open:
            wake.set()


def sse(job: Job) -> str:
    return "event: job\ndata: " + json.dumps(job, separators=(",", ":")) + "\n\n"


class JobReader:
    """Group reads for streams: every stream woken in the same moment (a bulk change
    wakes a thousand) queues its (owner, job id) and one query reads them all, instead
    of a round trip each. The owner is in the query, as everywhere."""

    def __init__(self, res: Resources) -> None:
        self.res = res
        self._queued: list[tuple[str, str, asyncio.Future[Job]]] = []
        self._flushing = False

    async def read(self, owner: str, job_id: str) -> Job:
        checked_job_id(job_id)  # only an id that could be a job's joins others' reads
        future: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._queued.append((owner, job_id, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let every stream woken with this one queue its read
        batch, self._queued, self._flushing = self._queued, [], False
        for start in range(0, len(batch), READ_BATCH):
            chunk = batch[start : start + READ_BATCH]
            try:
                await self._read(chunk)
            except Exception:  # noqa: BLE001 - one read must not fail the others': each alone
                for item in chunk:
                    await self._read_alone(item)

    async def _read_alone(self, item: tuple[str, str, asyncio.Future[Job]]) -> None:
        try:
            await self._read([item])
        except Exception as exc:  # noqa: BLE001 - the waiting stream gets the failure, never hangs
            if not item[2].done():
                item[2].set_exception(exc)

    async def _read(self, batch: list[tuple[str, str, asyncio.Future[Job]]]) -> None:
        pairs = list({(owner, job_id) for owner, job_id, _ in batch})
        async with self.res.engine.connect() as conn:
            rows = await jobs_by_owner_and_id(conn, pairs)
            outputs = await jobs.get_outputs(conn, [r.id for r in rows])
        found = {(r.owner, r.id): job_dict(r, outputs.get(r.id, []), self.res.presign) for r in rows}
        for owner, job_id, future in batch:
            if future.done():
                continue
            if (owner, job_id) in found:
                future.set_result(found[(owner, job_id)])
            else:
                future.set_exception(NotFound(f"no job with id {job_id!r}"))


def reader(request: Request) -> JobReader:
    """The process's one JobReader (made on first use, beside the app's resources)."""
    existing: JobReader | None = getattr(request.app.state, "stream_reader", None)
    if existing is None:
        existing = request.app.state.stream_reader = JobReader(resources(request))
    return existing


@documented(
    operationId="streamJob", tags=["jobs"], summary="Server-sent events of one job", security=BEARER,
    description="An event `job` (the job object) at once and after every status change; the stream ends after "
                "the terminal one. A comment line every 15 s keeps an idle connection open.",
    parameters=[JOB_ID],
    # The schema of each event (OpenAPI 3.2's reading of text/event-stream): its data is
    # the job object as JSON.
    responses={"200": {"description": "An event stream.", "content": {"text/event-stream": {"schema": {
        "type": "object", "required": ["event", "data"],
        "properties": {"event": {"const": "job"},
                       "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": Job}},
    }}}}, **errors(401, 404)},
)
async def stream(request: Request) -> EventStream:
    owner = await authenticate(request)
    res = resources(request)
    job_id = checked_job_id(request.path_params["job_id"])
    keepalive = res.settings.stream_keepalive_seconds
    gate: StreamGate = request.app.state.streams
    # Watch before the first read, so a change between the read and the wait is not lost.
    changed = res.notifications.watch(job_id)
    try:
        gate.enter(changed)  # 503 past the cap, before any read
    except TooManyStreams:
        res.notifications.unwatch(job_id, changed)
        raise
    try:
        first = await reader(request).read(owner, job_id)  # 404 before the stream starts
    except BaseException:
        gate.leave(changed)
        res.notifications.unwatch(job_id, changed)
        raise

    async def events() -> AsyncIterator[str]:
        job, sent = first, None
        while True:
            if job["status"] != sent:
                sent = job["status"]
                yield sse(job)
                if sent in TERMINAL:
                    return
            try:
                await asyncio.wait_for(changed.wait(), keepalive)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            changed.clear()
            if gate.closing:
                yield CLOSING
                return
            job = await reader(request).read(owner, job_id)

    def release() -> None:
        gate.leave(changed)
        res.notifications.unwatch(job_id, changed)

    return EventStream(events(), release)


class EventStream(StreamingResponse):
    """The SSE answer; ``release`` runs however the response ends (finished, failed, or
    the client gone before the first event, when the generator's own ``finally`` would
    never run), so a slot of the gate is never leaked."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


routes = [Route("/v1/jobs/{job_id}/stream", stream, methods=["GET"])]
