"""Deleting jobs and acting on many at once: ``DELETE /v1/jobs/{id}`` and
``POST /v1/jobs/bulk``. Both only mark and queue: the eraser (service/work/eraser.py)
deletes the objects and erases the rows, so a crash cannot leave a job half erased."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.api.job_api import read_json, render
from service.api.plumbing.auth import authenticate, resources
from service.api.plumbing.openapi_doc import BEARER, JOB_ID, answer, documented, errors, json_body
from service.db import bulk, deletion, jobs
from service.domain.errors import NotFound
from service.domain.ids import checked_job_id
from service.domain.serialize import Job
from service.domain.states import TERMINAL, JobStatus
from service.work.bulk import run_bulk

MAX_BULK_BODY_BYTES = 16 * 1024


@documented(
    operationId="deleteJob", tags=["jobs"], summary="Delete a job: erase its data, keep a tombstone", security=BEARER,
    description="Cancels a job not yet terminal; its S3 objects, input, metadata, webhook and callback bodies are "
                "erased in the background, and the answer is already the tombstone. Repeating it changes nothing.",
    parameters=[JOB_ID], responses={"202": answer(Job, "The tombstone."), **errors(401, 404)},
)
async def delete(request: Request) -> JSONResponse:
    """202 with the tombstone; a job not yet terminal is canceled first. Repeats change
    nothing."""
    owner = await authenticate(request)
    job_id = checked_job_id(request.path_params["job_id"])  # 404 before any query
    res = resources(request)
    async with res.engine.begin() as conn:
        found = await jobs.get_job(conn, job_id, owner)
        job = await jobs.lock_job(conn, found.id)
        if job is None:
            raise NotFound(f"no job with id {found.id!r}")
        if job.deleted_at is None:
            if JobStatus(job.status) not in TERMINAL:
                await jobs.transition(conn, job, JobStatus.CANCELED, reason="api.delete")
            await deletion.mark_deleted(conn, [job.id], "request", owner)
    res.notifications.kick()
    return JSONResponse(await render(res, found.id, owner), status_code=202)


@documented(
    operationId="bulkJobs", tags=["jobs"], summary="Cancel, retry, redeliver or delete jobs by filter",
    security=BEARER,
    description="The filter means what GET /v1/jobs's filters mean; an empty filter, or more than 10,000 matches, "
                "is a 422. `dry_run` only counts, at once. Acts in batches, each its own transaction, "
                "spread over up to BULK_TARGET_SECONDS (8 s by default) so that the API stays quick beside "
                "it: the answer comes when the last batch is done (give the client a timeout above that).",
    requestBody=json_body(bulk.BulkBody),
    responses={"200": answer(bulk.BulkResult, "What matched and what changed."), **errors(400, 401, 413, 422)},
)
async def bulk_action(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    res = resources(request)
    parsed = bulk.parse_bulk(await read_json(request, MAX_BULK_BODY_BYTES))
    result = await run_bulk(res.engine, owner, parsed, res.settings.bulk_batch_size, res.pacer,
                                 res.settings.bulk_pause_factor, res.settings.bulk_target_seconds,
                                 tracing=res.tracing)
    if result["affected"]:
        res.notifications.kick()
    return JSONResponse(result)


routes = [
    Route("/v1/jobs/bulk", bulk_action, methods=["POST"]),
    Route("/v1/jobs/{job_id}", delete, methods=["DELETE"]),
]
