"""Exceptions become JSON answers here, and only here."""

from __future__ import annotations

from typing import Annotated, Any, NotRequired

import structlog
from pydantic import Field
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from typing_extensions import TypedDict  # pydantic reads TypedDicts from typing_extensions before 3.12

from service.db.engine import UNREACHABLE, unavailable
from service.domain.errors import ServiceError, Unavailable, ValidationFailed

log = structlog.get_logger(__name__)


class FieldProblem(TypedDict):
    loc: Annotated[str, Field(description="The field or parameter, e.g. `input.size`, `limit`, `Idempotency-Key`.")]
    msg: Annotated[str, Field(description="The rule it broke.")]


class ErrorDetail(TypedDict):
    type: Annotated[str, Field(description="invalid_request, bad_request, unauthorized, invalid_signature, "
                                           "not_found, conflict, payload_too_large, method_not_allowed, …")]
    message: str
    fields: NotRequired[Annotated[list[FieldProblem], Field(description="Present when fields are at fault.")]]


class ErrorBody(TypedDict):
    """Every 4xx of the job API and the receiver."""

    error: ErrorDetail


def error_body(exc: ServiceError) -> ErrorBody:
    error: ErrorDetail = {"type": exc.error_type, "message": exc.message}
    if isinstance(exc, ValidationFailed):
        error["fields"] = [{"loc": f["loc"], "msg": f["msg"]} for f in exc.fields]
    elif "field" in exc.context:
        error["fields"] = [{"loc": str(exc.context["field"]), "msg": exc.message}]
    return {"error": error}


def job_fields(request: Request) -> dict[str, Any]:
    """The job a failed request was about, for the log line."""
    job_id = request.path_params.get("job_id")
    return {"job_id": job_id} if job_id else {}


async def service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if exc.status_code >= 500:
        log.error("request.failed", path=request.url.path, error=exc.message, **job_fields(request))
    return JSONResponse(error_body(exc), status_code=exc.status_code, headers=error_headers(exc))


def error_headers(exc: ServiceError) -> dict[str, str] | None:
    """The headers an error answer carries in either shape (/v1's and the facade's)."""
    if exc.status_code == 401:
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, Unavailable) and exc.retry_after is not None:
        return {"Retry-After": str(exc.retry_after)}
    return None


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    kinds = {404: "not_found", 405: "method_not_allowed"}
    body = {"error": {"type": kinds.get(exc.status_code, "http_error"), "message": str(exc.detail)}}
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def database_error(request: Request, exc: Exception) -> JSONResponse:
    """A database out of reach is a 503 with Retry-After. Handled here, not by the
    ``Exception`` handler: Starlette re-raises what that one handles, and uvicorn then
    closes the connection, which can reset it before the client has read the answer."""
    if (busy := unavailable(exc)) is not None:
        return await service_error(request, busy)  # logged there, as a 503
    raise exc  # a statement that failed: an unexpected error


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Log the type only: an exception's text may carry secrets or user data.
    log.exception("request.crashed", path=request.url.path, error=type(exc).__name__, **job_fields(request))
    return JSONResponse({"error": {"type": "internal_error", "message": "internal error"}}, status_code=500)


HANDLERS: dict[Any, Any] = {
    ServiceError: service_error,
    DBAPIError: database_error,
    **dict.fromkeys(UNREACHABLE, database_error),
    HTTPException: http_error,
    Exception: unexpected_error,
}
