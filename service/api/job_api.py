"""The job API: /v1/jobs and its sub-resources. Every query is scoped to the caller's
owner; another owner's job is a 404, never a 403, so ids leak nothing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, create_model
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from typing_extensions import TypedDict

from service.api.plumbing.auth import authenticate, resources
from service.api.plumbing.body import parse_json, read_capped
from service.api.plumbing.openapi_doc import BEARER, JOB_ID, answer, documented, errors, json_body
from service.db import admission, deliveries, jobs
from service.db.engine import raw_statement
from service.db.history import DEFAULT_LIMIT, MAX_LIMIT, job_events, list_jobs, parse_filter
from service.domain.errors import Conflict, FieldError, NotFound, ServiceError, ValidationFailed
from service.domain.ids import checked_job_id
from service.domain.schemas import INPUT_MODELS, MODELS, JobCreate, output_count, validate_job_create
from service.domain.serialize import Job, Timestamp, iso, job_dict
from service.domain.states import TERMINAL, JobStatus
from service.observability import metrics
from service.observability.tracing import TRACEPARENT, caller_context, current_traceparent, job_attributes
from service.resources import Resources

MAX_BODY_BYTES = 256 * 1024
MAX_WAIT_SECONDS = 60
MAX_IDEMPOTENCY_KEY = 255


class JobList(TypedDict):
    object: Literal["list"]
    data: list[Job]
    next_cursor: Annotated[str | None, Field(description="Pass as `cursor` for the next page; null on the last.")]


class JobEvent(TypedDict):
    at: Timestamp
    type: Annotated[str, Field(description="status.changed, webhook.received (detail.duplicate), output.stored, "
                                           "callback.attempt, …")]
    detail: dict[str, Any]


class JobEventList(TypedDict):
    object: Literal["list"]
    data: list[JobEvent]


class Delivery(TypedDict):
    object: Literal["delivery"]
    id: Annotated[str, Field(description="The delivery's webhook-id, the same on every retry.")]
    status: Literal["pending"]


def _create_bodies() -> dict[str, type[BaseModel]]:
    """POST /v1/jobs bodies, one per model: JobCreate with ``model`` fixed and ``input``
    that model's input class (what validate_job_create applies in two steps)."""
    return {
        name: create_model(
            "JobCreate" + "".join(part.capitalize() for part in name.rsplit("/", 1)[-1].split("-")),
            __base__=JobCreate,
            __doc__=f"Body of POST /v1/jobs for `{name}`.",
            model=(Literal[name], ...),  # type: ignore[arg-type]  # a Literal built from a value
            input=(input_model, ...),
        )
        for name, input_model in INPUT_MODELS.items()
    }


_BODIES = _create_bodies()
_JOB_LINKS = {name: {"operationId": op, "parameters": {"job_id": "$response.body#/id"}}
              for name, op in (("GetJob", "getJob"), ("GetJobEvents", "getJobEvents"), ("CancelJob", "cancelJob"))}


async def read_json(request: Request, limit: int = MAX_BODY_BYTES) -> Any:
    return parse_json(await read_capped(request, limit))


def parse_wait(request: Request) -> float:
    raw = request.query_params.get("wait")
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_WAIT_SECONDS:
        raise ValidationFailed([FieldError("wait", f"must be a number of seconds from 0 to {MAX_WAIT_SECONDS}")])
    return value


async def render(res: Resources, job_id: str, owner: str) -> Job:
    async with raw_statement(res.engine) as conn:
        job, outputs = await jobs.get_job_with_outputs(conn, job_id, owner)
    return job_dict(job, outputs, res.presign)


async def wait_terminal(res: Resources, job_id: str, owner: str, seconds: float) -> Job:
    """The job once it is terminal, or as it stands after ``seconds``. Woken by NOTIFY;
    the waiter is registered before the re-read so no notification slips between."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        event = res.notifications.done_waiter(job_id)
        try:
            job = await render(res, job_id, owner)
            remaining = deadline - loop.time()
            if job["status"] in TERMINAL or remaining <= 0:
                return job
            # On a timeout, re-read anyway: covers a NOTIFY lost to a reconnect.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=min(remaining, 5.0))
        finally:
            res.notifications.forget(job_id, event)


async def submit_job(
    res: Resources, owner: str, body: Any, idempotency_key: str | None, traceparent: str | None = None
) -> tuple[Job, bool]:
    """Validate and record a job (shared by /v1/jobs and the WaveSpeed facade). Its trace
    begins here: a ``job.admit`` span, a child of the caller's ``traceparent`` (ignored
    when malformed), whose context the job keeps."""
    with res.tracing.span("job.admit", context=caller_context(traceparent),
                          attributes={"job.owner": owner}) as span:
        job, created = await _admit(res, owner, body, idempotency_key, current_traceparent())
        span.set_attributes({**job_attributes(job["id"], model=job["model"], status=job["status"]),
                             "job.created": created})
    return job, created


async def _admit(
    res: Resources, owner: str, body: Any, idempotency_key: str | None, traceparent: str | None
) -> tuple[Job, bool]:
    """Record the job, counted by outcome and timed for the admission stage's metrics."""
    started = time.perf_counter()
    try:
        job, created = await _record_job(res, owner, body, idempotency_key, traceparent)
    except ServiceError as exc:
        metrics.admission(exc.error_type, time.perf_counter() - started)
        raise
    metrics.admission("accepted" if created else "replayed", time.perf_counter() - started)
    return job, created


async def _record_job(
    res: Resources, owner: str, body: Any, idempotency_key: str | None, traceparent: str | None
) -> tuple[Job, bool]:
    request, input_ = validate_job_create(body)
    fields: list[FieldError] = []
    for loc, url in (("callback_url", request.callback_url), ("input.image", input_.get("image")),
                     ("input.mask_image", input_.get("mask_image"))):
        if url:
            problem = await res.egress.url_problem(url)
            if problem:
                fields.append(FieldError(loc, problem))
    if fields:
        raise ValidationFailed(fields)
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise ValidationFailed([FieldError("Idempotency-Key", f"must be 1 to {MAX_IDEMPOTENCY_KEY} characters")])
    images = output_count(input_)
    row, created = await admission.create_job(
        res.engine,
        owner=owner,
        model=request.model,
        input_=input_,
        metadata=request.metadata,
        callback_url=request.callback_url,
        idempotency_key=idempotency_key,
        body_hash=jobs.request_hash(body) if idempotency_key else None,
        admission=admission.Admission(
            estimate_usd=Decimal(res.settings.price_usd(request.model)) * images, images=images,
            priority=request.priority, start_timeout_seconds=request.start_timeout_seconds,
            provider_max_in_flight=res.settings.provider_max_in_flight,
        ),
        traceparent=traceparent,
    )
    if not created:  # the first job of this Idempotency-Key, as it stands now
        return await render(res, row.id, owner), created
    res.notifications.kick("submit")
    # The row the insert returned is the job as created (no outputs yet): reading it
    # back would cost a transaction per submit for the same answer.
    return job_dict(row, [], res.presign), created


def _query(name: str, schema: dict[str, Any], *, where: str = "query", **extra: Any) -> dict[str, Any]:
    """An optional parameter of an operation (``where``: "query" or "header")."""
    return {"name": name, "in": where, "required": False, "schema": schema, **extra}


@documented(
    operationId="createJob", tags=["jobs"], summary="Submit a job", security=BEARER,
    parameters=[
        _query("wait", {"type": "number", "minimum": 0, "maximum": MAX_WAIT_SECONDS},
               description="Seconds to hold the answer until the job is terminal."),
        _query("Idempotency-Key", {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
               where="header", description="The same key and body from the same owner return the first job (200)."),
        _query("traceparent", {"type": "string"}, where="header",
               description="W3C Trace Context: the job's trace (`trace_id`) becomes a child of this one. "
                           "A malformed value is ignored (the job starts a trace of its own)."),
    ],
    requestBody=json_body({"oneOf": list(_BODIES.values()),
                           "discriminator": {"propertyName": "model", "mapping": _BODIES}}),
    responses={"202": answer(Job, "The job, as recorded (queued).", links=_JOB_LINKS),
               "200": answer(Job, "The job first created with this Idempotency-Key and body.", links=_JOB_LINKS),
               **errors(400, 401, 402, 409, 413, 422)},
)
async def create(request: Request) -> JSONResponse:
    """Validates the input against the model's table, fills in every default, records the job and
    queues its submission to WaveSpeed. With `wait`, holds the answer until the job is terminal
    or the seconds pass."""
    owner = await authenticate(request)
    res = resources(request)
    wait = parse_wait(request)
    body = await read_json(request)
    job, created = await submit_job(res, owner, body, request.headers.get("idempotency-key"),
                                    request.headers.get(TRACEPARENT))
    if wait and job["status"] not in TERMINAL:
        job = await wait_terminal(res, job["id"], owner, wait)
    return JSONResponse(job, status_code=202 if created else 200)


@documented(operationId="getJob", tags=["jobs"], summary="Get a job", security=BEARER, parameters=[JOB_ID],
            responses={"200": answer(Job, "The job."), **errors(401, 404)})
async def retrieve(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    return JSONResponse(await render(resources(request), checked_job_id(request.path_params["job_id"]), owner))


@documented(
    operationId="listJobs", tags=["jobs"], summary="List jobs, newest first", security=BEARER,
    parameters=[
        _query("status", {"type": "array", "items": {"type": "string", "enum": [s.value for s in JobStatus]}},
               style="form", explode=True, description="Repeatable, or comma-separated: any of the statuses."),
        _query("model", {"type": "string", "enum": list(MODELS)}),
        _query("created_after", {"type": "string", "format": "date-time"}),
        _query("created_before", {"type": "string", "format": "date-time"}),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}),
        _query("cursor", {"type": "string"}),
        _query("include_deleted", {"type": "boolean", "default": False},
               description="Also list deleted jobs (tombstones)."),
    ],
    responses={"200": answer(JobList, "One page of jobs."), **errors(401, 422)},
)
async def index(request: Request) -> JSONResponse:
    """Keyset pages: pass `next_cursor` back as `cursor`. Metadata filters are
    `metadata.<key>=<value>` query parameters (any number, all must match); OpenAPI cannot
    name parameters by pattern, so they are described here only."""
    owner = await authenticate(request)
    res = resources(request)
    f = parse_filter(list(request.query_params.multi_items()))
    async with res.engine.connect() as conn:
        rows, next_cursor = await list_jobs(conn, owner, f)
        outputs = await jobs.get_outputs(conn, [r.id for r in rows], owner=owner)
    page: JobList = {"object": "list", "data": [job_dict(r, outputs.get(r.id, []), res.presign) for r in rows],
                     "next_cursor": next_cursor}
    return JSONResponse(page)


@documented(operationId="getJobEvents", tags=["jobs"], summary="A job's events, oldest first", security=BEARER,
            description="Every state change, webhook received (duplicates marked), output stored and callback attempt.",
            parameters=[JOB_ID], responses={"200": answer(JobEventList, "The events."), **errors(401, 404)})
async def events(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    job_id = checked_job_id(request.path_params["job_id"])  # 404 before any query
    res = resources(request)
    async with res.engine.connect() as conn:
        job = await jobs.get_job(conn, job_id, owner)
        rows = await job_events(conn, job.id, owner=owner)
    listing: JobEventList = {"object": "list",
                            "data": [{"at": iso(r.at), "type": r.type, "detail": r.detail} for r in rows]}
    return JSONResponse(listing)


@documented(operationId="cancelJob", tags=["jobs"], summary="Cancel a job that is not terminal", security=BEARER,
            parameters=[JOB_ID], responses={"200": answer(Job, "The canceled job."), **errors(401, 404, 409)})
async def cancel(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    job_id = checked_job_id(request.path_params["job_id"])  # 404 before any query
    res = resources(request)
    async with res.engine.begin() as conn:
        found = await jobs.get_job(conn, job_id, owner)
        job = await jobs.lock_job(conn, found.id)
        if job is None:  # deleted between the two reads
            raise NotFound(f"no job with id {found.id!r}")
        if JobStatus(job.status) in TERMINAL:
            raise Conflict(f"the job is already {job.status} and cannot be canceled", field="status")
        await jobs.transition(conn, job, JobStatus.CANCELED, reason="api.cancel")
    return JSONResponse(await render(res, job.id, owner))


@documented(operationId="redeliverCallback", tags=["jobs"], summary="Send the terminal callback again",
            security=BEARER, parameters=[JOB_ID],
            responses={"202": answer(Delivery, "Queued."), **errors(401, 404, 409)})
async def redeliver(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    job_id = checked_job_id(request.path_params["job_id"])  # 404 before any query
    res = resources(request)
    async with res.engine.begin() as conn:
        # Locked first: redeliver writes the delivery, then the job (lock order: jobs first).
        job = await jobs.get_job(conn, job_id, owner, lock=True)
        if job.deleted:  # as a bulk redeliver: a tombstone's callback is not sent again
            raise Conflict(f"job {job.id} was deleted; its callback is not sent again", field="deleted_at")
        if not job.callback_url:
            raise Conflict("the job has no callback_url", field="callback_url")
        if JobStatus(job.status) not in TERMINAL:
            raise Conflict("the job is not terminal yet; its callback is sent when it is", field="status")
        # The same event again: same webhook-id, a new attempt series, fresh output URLs.
        delivery_id = await deliveries.redeliver(conn, job.id, job.callback_url, JobStatus(job.status))
        await jobs.add_event(conn, job.id, "callback.redeliver_requested", {"delivery_id": delivery_id})
    res.notifications.kick()
    queued: Delivery = {"object": "delivery", "id": delivery_id, "status": "pending"}
    return JSONResponse(queued, status_code=202)


@documented(
    operationId="getJobOutput", tags=["jobs"], summary="Redirect to a stored output", security=BEARER,
    parameters=[JOB_ID, {"name": "index", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}],
    responses={"302": {"description": "To a presigned S3 URL.",
                       "headers": {"Location": {"required": True, "schema": {"type": "string"}}}},
               **errors(401, 404)},
)
async def output(request: Request) -> Response:
    owner = await authenticate(request)
    job_id = checked_job_id(request.path_params["job_id"])  # 404 before any query
    res = resources(request)
    raw_index = request.path_params["index"]
    async with raw_statement(res.engine) as conn:
        job, outputs = await jobs.get_job_with_outputs(conn, job_id, owner)
    if job.deleted_at is not None:
        raise NotFound(f"job {job.id} was deleted; its outputs are gone")
    for row in outputs:
        if str(row.index) == raw_index and row.key:
            return RedirectResponse(res.presign(row.key), status_code=302)
    raise NotFound(f"job {job.id} has no stored output {raw_index}")


routes = [
    Route("/v1/jobs", create, methods=["POST"]),
    Route("/v1/jobs", index, methods=["GET"]),
    Route("/v1/jobs/{job_id}", retrieve, methods=["GET"]),
    Route("/v1/jobs/{job_id}/events", events, methods=["GET"]),
    Route("/v1/jobs/{job_id}/cancel", cancel, methods=["POST"]),
    Route("/v1/jobs/{job_id}/callback/redeliver", redeliver, methods=["POST"]),
    Route("/v1/jobs/{job_id}/outputs/{index}", output, methods=["GET"]),
]
