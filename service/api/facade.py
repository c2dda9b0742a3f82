"""The WaveSpeed-compatible facade: ``/api/v3`` as WaveSpeed's clients call it.

A backend that already uses the official ``wavespeed`` SDK (or plain HTTP) sets its
base URL to this service and its API key to one of ours, and changes nothing else; its
jobs then take the same road as ``POST /v1/jobs`` (validation, Postgres, S3, history,
signed callbacks). Every answer, errors included, is WaveSpeed's envelope
``{"code", "message", "data"}``: the SDK shows the status and body of a failed call to
its user, so the message must name the field and its rule.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, NotRequired, TypeVar

import structlog
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from typing_extensions import TypedDict  # pydantic reads TypedDicts from typing_extensions before 3.12

from service.api.data_uris import DataUris
from service.api.job_api import read_json, render, submit_job, wait_terminal
from service.api.plumbing.auth import authenticate, resources
from service.api.plumbing.disconnect import unless_disconnected
from service.api.plumbing.error_responses import error_headers, job_fields
from service.api.plumbing.openapi_doc import BEARER, JOB_ID, answer, documented, errors, json_body
from service.db.engine import unavailable
from service.domain.errors import ServiceError, ValidationFailed
from service.domain.ids import checked_job_id
from service.domain.schemas import INPUT_MODELS, MODELS, URL_JSON_SCHEMA
from service.domain.serialize import Job, Timestamp
from service.domain.states import TERMINAL, JobStatus, WavespeedStatus, wavespeed_status
from service.observability.tracing import TRACEPARENT
from service.resources import Resources

log = structlog.get_logger(__name__)
T = TypeVar("T")
Endpoint = Callable[[Request], Awaitable[Response]]

PREFIX = "/api/v3/"
RESULT_PATH = re.compile(r"^predictions/[^/]+/result$")
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]

# The official SDK reads ``data.code == 5004`` (or status ``processing`` with this phrase
# in ``error``) as "the sync wait ended, the task goes on": it then raises an error that
# names the task id, so the caller can poll for the result instead of resubmitting.
SYNC_TIMEOUT_CODE = 5004
SYNC_TIMEOUT_MESSAGE = "Sync mode timed out before the job finished; query the result later at {url}"

# WaveSpeed has one failure status; these say which of ours it was when the job row
# itself holds no error text (a cancel or a deadline has no provider message).
ENDED_WITHOUT_RESULT = {
    JobStatus.FAILED: "the job failed",
    JobStatus.CANCELED: "the job was canceled",
    JobStatus.TIMED_OUT: "the job timed out before the provider finished it",
}


# --------------------------------------------------------------------------- shapes


class PredictionUrls(TypedDict):
    get: str


class PredictionTimings(TypedDict):
    inference: int


class Prediction(TypedDict):
    """A job as WaveSpeed's prediction object; ``id`` is the job id."""

    id: str
    model: str
    input: dict[str, Any]
    outputs: Annotated[list[str], Field(description="Presigned URLs (or data: URIs with enable_base64_output) of "
                                                    "the stored outputs, once completed.")]
    urls: PredictionUrls
    has_nsfw_contents: list[bool]
    status: WavespeedStatus
    created_at: Timestamp
    error: str
    timings: PredictionTimings
    code: NotRequired[Annotated[int, Field(description="5004 when an enable_sync_mode hold ended first.")]]


class PredictionEnvelope(TypedDict):
    code: int
    message: str
    data: Prediction


class ErrorEnvelope(TypedDict):
    """Every error of the facade, in WaveSpeed's envelope; ``message`` names the field."""

    code: int
    message: str
    data: None


def envelope(data: Any, code: int = 200, message: str = "success") -> dict[str, Any]:
    return {"code": code, "message": message, "data": data}


def error_response(code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error as WaveSpeed answers one: the envelope with ``data`` null."""
    return JSONResponse(envelope(None, code, message), status_code=code, headers=headers)


def wavespeed_loc(loc: str) -> str:
    """A /v1/jobs field path as the facade's caller knows it: their body is the job's
    ``input`` itself, and ``?webhook=`` is the job's callback URL."""
    if loc == "callback_url":
        return "webhook"
    if loc == "input":
        return "body"
    return loc.removeprefix("input.")


def error_message(exc: ServiceError) -> str:
    """``field: rule`` for every problem, in the caller's own field names."""
    if isinstance(exc, ValidationFailed) and exc.fields:
        return "; ".join(f"{wavespeed_loc(f['loc'])}: {f['msg']}" for f in exc.fields)
    field = exc.context.get("field")
    if isinstance(field, str):
        return f"{wavespeed_loc(field)}: {exc.message}"
    return exc.message


def error_text(job: Job) -> str:
    """WaveSpeed's ``error``: empty unless the job ended without a result."""
    status = JobStatus(job["status"])
    if status not in ENDED_WITHOUT_RESULT:
        return ""
    if status is JobStatus.FAILED:
        return job["error"] or ENDED_WITHOUT_RESULT[status]
    # canceled / timed_out both show as "failed" upstream-style; say which it was.
    detail = job["error"]
    return ENDED_WITHOUT_RESULT[status] + (f": {detail}" if detail else "")


def prediction(job: Job, outputs: list[str], result_url: str) -> Prediction:
    """The job (as ``job_dict`` renders it) as WaveSpeed's prediction object.

    ``outputs`` are what the caller gets for the stored outputs (presigned URLs or
    ``data:`` URIs); like WaveSpeed, they are shown only once the job is completed.
    """
    status = wavespeed_status(JobStatus(job["status"]))
    completed = status == "completed"
    nsfw = job["has_nsfw_contents"] if completed else None
    inference_ms = job["provider"]["inference_ms"]
    return {
        "id": job["id"],
        "model": job["model"],
        "input": job["input"],
        "outputs": list(outputs) if completed else [],
        "urls": {"get": result_url},
        "has_nsfw_contents": list(nsfw) if nsfw else [],
        "status": status,
        "created_at": job["created_at"],
        "error": error_text(job),
        "timings": {"inference": inference_ms or 0},
    }


def sync_timed_out(data: Prediction) -> Prediction:
    """A prediction answered when the sync hold ended before the job did."""
    return {**data, "code": SYNC_TIMEOUT_CODE, "error": SYNC_TIMEOUT_MESSAGE.format(url=data["urls"]["get"])}


def allowed_methods(rest: str) -> list[str]:
    """The methods this facade serves at ``/api/v3/<rest>`` (empty: no such endpoint)."""
    if rest in MODELS:
        return ["POST"]
    if RESULT_PATH.match(rest):
        return ["GET"]
    return []


# --------------------------------------------------------------------------- plumbing


def facade_error(request: Request, exc: ServiceError) -> Response:
    if exc.status_code >= 500:
        log.error("facade.failed", path=request.url.path, error=exc.message, **job_fields(request))
    return error_response(exc.status_code, error_message(exc), error_headers(exc))


def wavespeed_errors(endpoint: Endpoint) -> Endpoint:
    """Answer every error of ``endpoint`` in WaveSpeed's shape rather than /v1's."""

    @functools.wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ServiceError as exc:
            return facade_error(request, exc)
        except Exception as exc:
            if (busy := unavailable(exc)) is not None:
                return facade_error(request, busy)
            # The type only: an exception's text may carry secrets or user data.
            log.exception("facade.crashed", path=request.url.path, error=type(exc).__name__, **job_fields(request))
            return error_response(500, "internal error")

    return wrapper




async def output_refs(res: Resources, uris: DataUris, job: Job) -> list[str]:
    """What the caller gets for each stored output: a presigned URL, or, when the job
    asked for ``enable_base64_output``, the stored bytes as a ``data:`` URI (read a few at
    a time per process, and kept: service/api/data_uris.py)."""
    if job["status"] != JobStatus.COMPLETED:
        return []
    outputs = [o for o in job["outputs"] if o["key"]]
    if not job["input"].get("enable_base64_output"):
        return [str(o["url"]) for o in outputs]
    return list(await asyncio.gather(*(uris.uri(res.storage, str(o["key"]), o["content_type"]) for o in outputs)))


def data_uris(request: Request) -> DataUris:
    """The process's one DataUris (made on first use, beside the app's resources)."""
    existing: DataUris | None = getattr(request.app.state, "data_uris", None)
    if existing is None:
        existing = request.app.state.data_uris = DataUris()
    return existing


def result_url(request: Request, job_id: str) -> str:
    return str(request.url_for("wavespeed_result", job_id=job_id))


async def present(request: Request, res: Resources, job: Job) -> Prediction:
    return prediction(job, await output_refs(res, data_uris(request), job), result_url(request, job["id"]))


# --------------------------------------------------------------------------- endpoints


def submit_endpoint(model: str) -> Endpoint:
    """``POST /api/v3/<model>[?webhook=<url>]`` for one model."""

    @documented(
        operationId="wavespeedSubmit" + "".join(p.capitalize() for p in model.rsplit("/", 1)[-1].split("-")),
        tags=["wavespeed-compatible"], summary=f"Submit a `{model}` task as WaveSpeed's API does", security=BEARER,
        description="The body is the model's input; `webhook` becomes the job's callback URL. With "
                    "`enable_sync_mode` the answer waits for the job (up to FACADE_SYNC_TIMEOUT_SECONDS).",
        parameters=[{"name": "webhook", "in": "query", "required": False,
                     "description": "Becomes the job's callback_url.",
                     "schema": {k: v for k, v in URL_JSON_SCHEMA.items() if k != "description"}},
                    {"name": "traceparent", "in": "header", "required": False, "schema": {"type": "string"},
                     "description": "W3C Trace Context: the job's trace becomes a child of this one (ignored "
                                    "when malformed)."}],
        requestBody=json_body(INPUT_MODELS[model]),
        responses={"200": answer(PredictionEnvelope, "The prediction (its id is the job id)."),
                   **errors(400, 401, 402, 409, 413, 422, shape=ErrorEnvelope)},
    )
    @wavespeed_errors
    async def submit(request: Request) -> Response:
        owner = await authenticate(request)
        res = resources(request)
        body: dict[str, Any] = {"model": model, "input": await read_json(request)}
        webhook = request.query_params.get("webhook")
        if webhook is not None:
            body["callback_url"] = webhook
        job, _ = await submit_job(res, owner, body, request.headers.get("idempotency-key"),
                                  request.headers.get(TRACEPARENT))
        timed_out = False
        if job["input"].get("enable_sync_mode") and job["status"] not in TERMINAL:
            finished, held = await unless_disconnected(
                request.receive, wait_terminal(res, job["id"], owner, res.settings.facade_sync_timeout_seconds)
            )
            if not finished or held is None:
                return Response(status_code=499)  # the client is gone; nobody reads this
            job = held
            timed_out = job["status"] not in TERMINAL
        data = await present(request, res, job)
        # WaveSpeed answers a submit 200 (never 202), and the SDK accepts nothing else.
        return JSONResponse(envelope(sync_timed_out(data) if timed_out else data))

    submit.__name__ = "wavespeed_submit_" + model.rsplit("/", 1)[-1].replace("-", "_")
    return submit


@documented(operationId="wavespeedResult", tags=["wavespeed-compatible"], security=BEARER,
            summary="A job as WaveSpeed's prediction result", parameters=[JOB_ID],
            responses={"200": answer(PredictionEnvelope, "The prediction."),
                       **errors(401, 404, shape=ErrorEnvelope)})
@wavespeed_errors
async def result(request: Request) -> Response:
    """The job, in the shape of WaveSpeed's prediction result (`GET /api/v3/predictions/{id}/result`)."""
    owner = await authenticate(request)
    res = resources(request)
    job = await render(res, checked_job_id(request.path_params["job_id"]), owner)
    return JSONResponse(envelope(await present(request, res, job)))


async def unknown(request: Request) -> Response:
    """Anything else under /api/v3: a 404 (or 405) in WaveSpeed's shape, so an SDK call
    to a model or endpoint this service does not serve fails with a readable reason."""
    rest = request.path_params["path"]
    allowed = allowed_methods(rest)
    if allowed:
        return error_response(
            405,
            f"{request.method} is not allowed here; use {', '.join(allowed)}",
            {"Allow": ", ".join(allowed)},
        )
    if rest.startswith("predictions"):
        hint = "this service serves GET /api/v3/predictions/{id}/result"
    else:
        hint = f"this service serves only the models {', '.join(MODELS)}"
    return error_response(404, f"no such endpoint: {request.method} {PREFIX}{rest}; {hint}")


# The catch-all comes last: the router takes the first full match.
routes: list[BaseRoute] = [
    *(Route(PREFIX + model, submit_endpoint(model), methods=["POST"]) for model in MODELS),
    Route(PREFIX + "predictions/{job_id}/result", result, methods=["GET"], name="wavespeed_result"),
    Route(PREFIX + "{path:path}", unknown, methods=ALL_METHODS, include_in_schema=False),
]
