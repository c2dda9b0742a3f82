"""``GET /v1/jobs/{id}/stream``: server-sent events of one job.

An event ``job`` (the job object) at once and after every status change, ending after
the terminal one; a comment every STREAM_KEEPALIVE_SECONDS keeps idle connections open.
Streams are woken by the process's one LISTEN connection (service/db/listen.py): an
open stream costs an Event and a parked coroutine, and reads the row only when told its
job changed, never on a timer.

Who may open one and for how long (caps per process and per owner, the credential's
life, shutdown) is the gate's (service/api/stream_gate.py).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.api.plumbing.auth import Credential, authenticate_credential, resources
from service.api.plumbing.openapi_doc import BEARER, JOB_ID, documented, errors
from service.api.stream_gate import OpenStream, StreamGate, live_check
from service.db import jobs, page_sessions
from service.db.history import jobs_by_owner_and_id
from service.domain.errors import NotFound, TooManyStreams, Unauthorized
from service.domain.ids import checked_job_id
from service.domain.serialize import Job, job_dict
from service.domain.states import TERMINAL
from service.resources import Resources

READ_BATCH = 500
CLOSING = ": closing: the server is shutting down, reconnect\n\n"
ENDED = ": closing: the API key or session of this stream no longer opens doors\n\n"


def sse(job: Job) -> str:
    return "event: job\ndata: " + json.dumps(job, separators=(",", ":")) + "\n\n"


Read = tuple[str, str, Credential | None, "asyncio.Future[Job]"]


class JobReader:
    """Group reads for streams: every stream woken in the same moment (a bulk change
    wakes a thousand) queues its (owner, job id) and one query reads them all, instead
    of a round trip each. The owner is in the query, as everywhere. A read that names
    its stream's credential gets it checked in the same batch (two statements for all):
    a revoked key or an ended session reads no more job data."""

    def __init__(self, res: Resources) -> None:
        self.res = res
        self._live = live_check(functools.partial(page_sessions.live_credentials, res.engine))
        self._queued: list[Read] = []
        self._flushing = False

    async def read(self, owner: str, job_id: str, credential: Credential | None = None) -> Job:
        checked_job_id(job_id)  # only an id that could be a job's joins others' reads
        future: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._queued.append((owner, job_id, credential, future))
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

    async def _read_alone(self, item: Read) -> None:
        try:
            await self._read([item])
        except Exception as exc:  # noqa: BLE001 - the waiting stream gets the failure, never hangs
            if not item[3].done():
                item[3].set_exception(exc)

    async def _read(self, batch: list[Read]) -> None:
        credentials = {c for _, _, c, _ in batch if c is not None}
        live = await self._live(credentials) if credentials else set()
        pairs = list({(owner, job_id) for owner, job_id, _, _ in batch})
        async with self.res.engine.connect() as conn:
            rows = await jobs_by_owner_and_id(conn, pairs)
            outputs = await jobs.owned_outputs(conn, [(r.owner, r.id) for r in rows])
        found = {(r.owner, r.id): job_dict(r, outputs.get(r.id, []), self.res.presign) for r in rows}
        for owner, job_id, credential, future in batch:
            if future.done():
                continue
            if credential is not None and credential not in live:
                future.set_exception(Unauthorized("the API key or session of this stream no longer opens doors"))
            elif (owner, job_id) in found:
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
    owner, credential = await authenticate_credential(request)
    res = resources(request)
    job_id = checked_job_id(request.path_params["job_id"])
    keepalive = res.settings.stream_keepalive_seconds
    gate: StreamGate = request.app.state.streams
    # Watch before the first read, so a change between the read and the wait is not lost.
    opened = OpenStream(owner, credential, wake=res.notifications.watch(job_id))
    changed = opened.wake
    try:
        gate.enter(opened)  # 503 (429 for the owner's share) past the cap, before any read
    except TooManyStreams:
        res.notifications.unwatch(job_id, changed)
        raise
    try:
        first = await reader(request).read(owner, job_id)  # 404 before the stream starts
    except BaseException:
        gate.leave(opened)
        res.notifications.unwatch(job_id, changed)
        raise

    def release() -> None:
        gate.leave(opened)
        res.notifications.unwatch(job_id, changed)

    return EventStream(events(reader(request), gate, opened, job_id, first, keepalive), release)


async def events(reader: JobReader, gate: StreamGate, opened: OpenStream, job_id: str, first: Job,
                 keepalive: float) -> AsyncIterator[str]:
    """The stream's text: the job at once and after each status change, to the terminal
    one; keep-alive comments; a last comment when the server closes or the credential
    that opened it ends (then no more job data)."""
    job, sent = first, None
    while True:
        if job["status"] != sent:
            sent = job["status"]
            yield sse(job)
            if sent in TERMINAL:
                return
        try:
            await asyncio.wait_for(opened.wake.wait(), keepalive)
        except TimeoutError:
            yield ": keep-alive\n\n"
            continue
        opened.wake.clear()
        if gate.closing:
            yield CLOSING
            return
        try:
            if opened.credential_ended:
                raise Unauthorized()
            job = await reader.read(opened.owner, job_id, opened.credential)
        except Unauthorized:
            yield ENDED  # the key was revoked or expired, or the session ended: no more job data
            return


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
