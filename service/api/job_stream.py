"""``GET /v1/jobs/{id}/stream``: server-sent events of one job.

An event ``job`` (the job object) at once and after every status change, ending after
the terminal one; a comment every STREAM_KEEPALIVE_SECONDS keeps idle connections open.
Streams are woken by the process's one LISTEN connection (service/db/listen.py): an
open stream costs an Event and a parked coroutine, and reads the row only when told its
job changed, never on a timer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from service.api.auth import authenticate, resources
from service.api.job_routes import render
from service.api.openapi_doc import BEARER, JOB_ID, documented, errors
from service.domain.serialize import Job
from service.domain.states import TERMINAL


def sse(job: Job) -> str:
    return "event: job\ndata: " + json.dumps(job, separators=(",", ":")) + "\n\n"


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
async def stream(request: Request) -> StreamingResponse:
    owner = await authenticate(request)
    res = resources(request)
    job_id = request.path_params["job_id"]
    keepalive = res.settings.stream_keepalive_seconds
    # Watch before the first read, so a change between the read and the wait is not lost.
    changed = res.notifications.watch(job_id)
    try:
        first = await render(res, job_id, owner)  # 404 before the stream starts
    except BaseException:
        res.notifications.unwatch(job_id, changed)
        raise

    async def events() -> AsyncIterator[str]:
        job, sent = first, None
        try:
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
                job = await render(res, job_id, owner)
        finally:
            res.notifications.unwatch(job_id, changed)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


routes = [Route("/v1/jobs/{job_id}/stream", stream, methods=["GET"])]
