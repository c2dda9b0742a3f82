"""The OpenAPI 3.1 document of the job API, the receiver, the WaveSpeed-compatible facade
and the operational endpoints, served at ``GET /openapi.json``.

Built from the two things that cannot drift from the code:

* the route table: every documented operation must be a route the app serves, and every
  route of the API must be documented (``undocumented()`` lists the gaps; a test fails on
  any), so a new endpoint cannot ship without its description;
* the pydantic models that validate requests (service/schemas.py): the body of
  ``POST /v1/jobs`` is one schema per model, each being JobCreate with ``model`` fixed and
  ``input`` that model's own input class, so ranges, defaults, LoRA limits and unknown
  fields are exactly what validation enforces. Answers are described by the models
  below, which schemathesis checks against the real answers (tests/integration/
  test_openapi.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute, Route

from service.db.history import MAX_LIMIT
from service.domain.schemas import (
    INPUT_MODELS,
    MAX_URL_LENGTH,
    METADATA_MAX_KEY_LENGTH,
    METADATA_MAX_KEYS,
    METADATA_MAX_VALUE_LENGTH,
    MODELS,
    SIZE_MAX,
    SIZE_MIN,
    JobCreate,
)
from service.domain.states import JobStatus

REF = "#/components/schemas/{model}"
MAX_WAIT_SECONDS = 60  # service/api/jobs.py MAX_WAIT_SECONDS
MAX_IDEMPOTENCY_KEY = 255

# Routes that are not part of the API: the dashboard's HTML pages (and its static files,
# a Mount), and the facade's catch-all, which only turns unknown /api/v3 paths into
# WaveSpeed-shaped 404s and 405s.
NOT_API_MODULES = ("service.api.dashboard",)
NOT_API_PATHS = ("/api/v3/{path:path}",)


# --------------------------------------------------------------------------- answers


class _Answer(BaseModel):
    # Answers may gain fields; a client must ignore the ones it does not know.
    model_config = ConfigDict(extra="allow")


class FieldProblem(_Answer):
    loc: str = Field(description="The field or parameter, e.g. `input.size`, `limit`, `Idempotency-Key`.")
    msg: str = Field(description="The rule it broke.")


class ErrorDetail(_Answer):
    type: str = Field(description="invalid_request, bad_request, unauthorized, invalid_signature, not_found, "
                                  "conflict, payload_too_large, method_not_allowed, …")
    message: str
    fields: list[FieldProblem] = Field(default_factory=list, description="Present when fields are at fault.")


class Error(_Answer):
    """Every 4xx of the job API and the receiver."""

    error: ErrorDetail


class ProviderInfo(_Answer):
    task_id: str | None
    status: str | None
    inference_ms: int | None


class StoredOutput(_Answer):
    index: int
    url: str | None = Field(description="A presigned GET URL of the object in S3.")
    key: str | None
    content_type: str | None
    size_bytes: int | None
    sha256: str | None
    thumbnail_url: str | None = Field(default=None, description="A presigned URL of a 256 px WebP thumbnail.")


class CallbackInfo(_Answer):
    status: Literal["pending", "delivered", "failed"] | None
    attempts: int


class Job(_Answer):
    id: str
    object: Literal["job"]
    model: str = Field(json_schema_extra={"enum": list(MODELS)})
    status: JobStatus
    input: dict[str, Any] = Field(description="The validated input with every default filled in.")
    metadata: dict[str, str]
    callback_url: str | None
    provider: ProviderInfo
    outputs: list[StoredOutput] = Field(description="Stored outputs only; a completed job has all of them.")
    has_nsfw_contents: list[bool] | None
    error: str | None
    cost_usd: str | None = Field(description="Decimal string, e.g. \"0.015\".")
    callback: CallbackInfo | None = Field(description="Null when the job has no callback_url.")
    created_at: dt.datetime
    updated_at: dt.datetime
    submitted_at: dt.datetime | None
    completed_at: dt.datetime | None


class JobList(_Answer):
    object: Literal["list"]
    data: list[Job]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")


class JobEvent(_Answer):
    at: dt.datetime
    type: str = Field(description="status.changed, webhook.received (detail.duplicate), output.stored, "
                                  "callback.attempt, …")
    detail: dict[str, Any]


class JobEventList(_Answer):
    object: Literal["list"]
    data: list[JobEvent]


class Delivery(_Answer):
    object: Literal["delivery"]
    id: str = Field(description="The delivery's webhook-id, the same on every retry.")
    status: Literal["pending"]


class WebhookAck(_Answer):
    received: bool
    outcome: str = Field(description="advanced, unchanged, duplicate, late, task_mismatch or unknown_job.")


class Health(_Answer):
    status: Literal["ok"]


class Readiness(_Answer):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]


class PredictionUrls(_Answer):
    get: str


class PredictionTimings(_Answer):
    inference: int


class Prediction(_Answer):
    """A job as WaveSpeed's prediction object; ``id`` is the job id."""

    id: str
    model: str
    input: dict[str, Any]
    outputs: list[str] = Field(description="Presigned URLs (or data: URIs with enable_base64_output) of the "
                                           "stored outputs, once completed.")
    urls: PredictionUrls
    has_nsfw_contents: list[bool]
    status: Literal["created", "processing", "completed", "failed"]
    created_at: dt.datetime
    error: str
    timings: PredictionTimings
    code: int | None = Field(default=None, description="5004 when an enable_sync_mode hold ended first.")


class PredictionEnvelope(_Answer):
    code: int
    message: str
    data: Prediction


class ErrorEnvelope(_Answer):
    """Every error of the facade, in WaveSpeed's envelope; ``message`` names the field."""

    code: int
    message: str
    data: None


def _job_create_variants() -> list[type[BaseModel]]:
    """POST /v1/jobs bodies, one per model: JobCreate itself with ``model`` fixed and
    ``input`` that model's input class (what validate_job_create applies in two steps)."""
    variants: list[type[BaseModel]] = []
    for name, input_model in INPUT_MODELS.items():
        title = "JobCreate" + "".join(part.capitalize() for part in name.rsplit("/", 1)[-1].split("-"))
        variants.append(create_model(
            title,
            __base__=JobCreate,
            __doc__=f"Body of POST /v1/jobs for `{name}`.",
            model=(Literal[name], ...),  # type: ignore[arg-type]  # a Literal built from a value
            input=(input_model, ...),
        ))
    return variants


# Rules that service/schemas.py enforces in validator functions, which pydantic cannot
# turn into JSON Schema by itself: added here, each from the constant the validator uses.
# One side of `size`, SIZE_MIN to SIZE_MAX written without leading zeros (the unit test
# tests/unit/test_openapi_rules.py checks it against the constants, number by number).
SIZE_SIDE = r"(?:25[6-9]|2[6-9][0-9]|[3-9][0-9]{2}|1[0-4][0-9]{2}|15[0-2][0-9]|153[0-6])"
_URL = {"format": "uri", "pattern": r"^https?://[^/?#@\s]+([/?#].*)?$", "maxLength": MAX_URL_LENGTH,
        "description": "An http(s) URL with a host."}
_FIELD_RULES: dict[str, dict[str, Any]] = {
    "size": {"pattern": rf"^{SIZE_SIDE}\*{SIZE_SIDE}$",
             "description": f"`W*H`; width and height each from {SIZE_MIN} to {SIZE_MAX}."},
    "image": _URL,
    "mask_image": {**_URL, "description": "An http(s) URL; only together with `image`."},
    "callback_url": {**_URL, "description": "Where the signed terminal event is POSTed (Standard Webhooks)."},
    "metadata": {"maxProperties": METADATA_MAX_KEYS,
                 "propertyNames": {"minLength": 1, "maxLength": METADATA_MAX_KEY_LENGTH},
                 "additionalProperties": {"type": "string", "maxLength": METADATA_MAX_VALUE_LENGTH},
                 "description": "String keys and values, filterable with `metadata.<key>=<value>`."},
}


def _with_rules(schema: dict[str, Any]) -> dict[str, Any]:
    for name, prop in schema.get("properties", {}).items():
        rules = _FIELD_RULES.get(name)
        if rules is None:
            continue
        # A nullable field is anyOf [string, null]: the rules belong to the string.
        target = next((s for s in prop.get("anyOf", []) if s.get("type") == "string"), prop)
        target.update({k: v for k, v in rules.items() if k != "description"})
        prop["description"] = rules["description"]
    return schema


# --------------------------------------------------------------------------- operations


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}, **extra}


def _errors(*codes: int, envelope: bool = False) -> dict[str, Any]:
    model = ErrorEnvelope if envelope else Error
    what = {
        400: "The body could not be read (not JSON).",
        401: "A valid API key is required.",
        404: "No such job (another owner's job is a 404 too).",
        409: "The request conflicts with the job's state (or an Idempotency-Key's first body).",
        413: "The body is too large.",
        422: "Invalid: every problem is listed with its field and rule.",
    }
    out: dict[str, Any] = {}
    for code in codes:
        headers = {"WWW-Authenticate": {"schema": {"type": "string"}}} if code == 401 else {}
        out[str(code)] = _json(model, what[code], **({"headers": headers} if headers else {}))
    return out


JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]


def _operations() -> dict[tuple[str, str], dict[str, Any]]:
    variants = _job_create_variants()
    job_link = {
        "GetJob": {"operationId": "getJob", "parameters": {"job_id": "$response.body#/id"}},
        "GetJobEvents": {"operationId": "getJobEvents", "parameters": {"job_id": "$response.body#/id"}},
        "CancelJob": {"operationId": "cancelJob", "parameters": {"job_id": "$response.body#/id"}},
    }
    created = _json(Job, "The job, as recorded (queued).", links=job_link)
    replayed = _json(Job, "The job first created with this Idempotency-Key and body.", links=job_link)
    job_body = {
        "required": True,
        "content": {"application/json": {"schema": {
            "oneOf": [_ref(v) for v in variants],
            "discriminator": {"propertyName": "model",
                              "mapping": {name: REF.format(model=v.__name__) for name, v in zip(INPUT_MODELS, variants,
                                                                                                strict=True)}},
        }}},
    }
    status_values = [s.value for s in JobStatus]
    ops: dict[tuple[str, str], dict[str, Any]] = {
        ("post", "/v1/jobs"): {
            "operationId": "createJob", "tags": ["jobs"], "summary": "Submit a job",
            "description": "Validates the input against the model's table, fills in every default, records the "
                           "job and queues its submission to WaveSpeed. With `wait`, holds the answer until the "
                           "job is terminal or the seconds pass.",
            "security": BEARER,
            "parameters": [
                {"name": "wait", "in": "query", "required": False,
                 "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_SECONDS},
                 "description": "Seconds to hold the answer until the job is terminal."},
                {"name": "Idempotency-Key", "in": "header", "required": False,
                 "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
                 "description": "The same key and body from the same owner return the first job (200)."},
            ],
            "requestBody": job_body,
            "responses": {"202": created, "200": replayed, **_errors(400, 401, 409, 413, 422)},
        },
        ("get", "/v1/jobs"): {
            "operationId": "listJobs", "tags": ["jobs"], "summary": "List jobs, newest first",
            "description": "Keyset pages: pass `next_cursor` back as `cursor`. Metadata filters are "
                           "`metadata.<key>=<value>` query parameters (any number, all must match); OpenAPI "
                           "cannot name parameters by pattern, so they are described here only.",
            "security": BEARER,
            "parameters": [
                {"name": "status", "in": "query", "required": False, "style": "form", "explode": True,
                 "schema": {"type": "array", "items": {"type": "string", "enum": status_values}},
                 "description": "Repeatable, or comma-separated: any of the statuses."},
                {"name": "model", "in": "query", "required": False, "schema": {"type": "string", "enum": list(MODELS)}},
                {"name": "created_after", "in": "query", "required": False,
                 "schema": {"type": "string", "format": "date-time"}},
                {"name": "created_before", "in": "query", "required": False,
                 "schema": {"type": "string", "format": "date-time"}},
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}},
                {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}},
            ],
            "responses": {"200": _json(JobList, "One page of jobs."), **_errors(401, 422)},
        },
        ("get", "/v1/jobs/{job_id}"): {
            "operationId": "getJob", "tags": ["jobs"], "summary": "Get a job", "security": BEARER,
            "parameters": [JOB_ID],
            "responses": {"200": _json(Job, "The job."), **_errors(401, 404)},
        },
        ("get", "/v1/jobs/{job_id}/events"): {
            "operationId": "getJobEvents", "tags": ["jobs"], "summary": "A job's events, oldest first",
            "description": "Every state change, webhook received (duplicates marked), output stored and "
                           "callback attempt.",
            "security": BEARER, "parameters": [JOB_ID],
            "responses": {"200": _json(JobEventList, "The events."), **_errors(401, 404)},
        },
        ("post", "/v1/jobs/{job_id}/cancel"): {
            "operationId": "cancelJob", "tags": ["jobs"], "summary": "Cancel a job that is not terminal",
            "security": BEARER, "parameters": [JOB_ID],
            "responses": {"200": _json(Job, "The canceled job."), **_errors(401, 404, 409)},
        },
        ("post", "/v1/jobs/{job_id}/callback/redeliver"): {
            "operationId": "redeliverCallback", "tags": ["jobs"], "summary": "Send the terminal callback again",
            "security": BEARER, "parameters": [JOB_ID],
            "responses": {"202": _json(Delivery, "Queued."), **_errors(401, 404, 409)},
        },
        ("get", "/v1/jobs/{job_id}/outputs/{index}"): {
            "operationId": "getJobOutput", "tags": ["jobs"], "summary": "Redirect to a stored output",
            "security": BEARER,
            "parameters": [JOB_ID, {"name": "index", "in": "path", "required": True,
                                    "schema": {"type": "integer", "minimum": 0}}],
            "responses": {
                "302": {"description": "To a presigned S3 URL.",
                        "headers": {"Location": {"required": True, "schema": {"type": "string"}}}},
                **_errors(401, 404),
            },
        },
        ("post", "/webhooks/wavespeed/{job_id}"): {
            "operationId": "receiveWavespeedWebhook", "tags": ["receiver"],
            "summary": "WaveSpeed's completion webhook (the URL given to WaveSpeed for each job)",
            "description": "Verified (HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`, constant time, "
                           "timestamp tolerance) before anything else is read; idempotent on webhook-id.",
            "parameters": [JOB_ID] + [
                {"name": name, "in": "header", "required": True, "schema": {"type": "string"}}
                for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
            ],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "description": "WaveSpeed's prediction object (id, status, outputs, ...)."}}}},
            "responses": {
                "200": _json(WebhookAck, "Recorded (or recognised as a duplicate)."),
                "400": _json(Error, "Verified, but not a JSON object."),
                "401": _json(Error, "Missing, wrong, tampered or stale signature: nothing recorded."),
                "413": _json(Error, "The body is over WEBHOOK_MAX_BODY_BYTES."),
            },
        },
        ("get", "/healthz"): {
            "operationId": "healthz", "tags": ["operations"], "summary": "The process is alive",
            "responses": {"200": _json(Health, "Alive.")},
        },
        ("get", "/readyz"): {
            "operationId": "readyz", "tags": ["operations"], "summary": "Postgres and S3 answer",
            "responses": {"200": _json(Readiness, "Ready."), "503": _json(Readiness, "Not ready: see checks.")},
        },
        ("get", "/metrics"): {
            "operationId": "metrics", "tags": ["operations"], "summary": "Prometheus metrics",
            "responses": {"200": {"description": "Prometheus text format 0.0.4 (OpenMetrics when asked).",
                                  "content": {"text/plain": {"schema": {"type": "string"}},
                                              "application/openmetrics-text": {"schema": {"type": "string"}}}}},
        },
        ("get", "/openapi.json"): {
            "operationId": "openapi", "tags": ["operations"], "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3.1.",
                                  "content": {"application/json": {"schema": {"type": "object"}}}}},
        },
        ("get", "/api/v3/predictions/{job_id}/result"): {
            "operationId": "wavespeedResult", "tags": ["wavespeed-compatible"],
            "summary": "A job as WaveSpeed's prediction result", "security": BEARER, "parameters": [JOB_ID],
            "responses": {"200": _json(PredictionEnvelope, "The prediction."), **_errors(401, 404, envelope=True)},
        },
    }
    for name, input_model in INPUT_MODELS.items():
        short = name.rsplit("/", 1)[-1]
        ops[("post", f"/api/v3/{name}")] = {
            "operationId": "wavespeedSubmit" + "".join(p.capitalize() for p in short.split("-")),
            "tags": ["wavespeed-compatible"],
            "summary": f"Submit a `{name}` task as WaveSpeed's API does",
            "description": "The body is the model's input; `webhook` becomes the job's callback URL. With "
                           "`enable_sync_mode` the answer waits for the job (up to FACADE_SYNC_TIMEOUT_SECONDS).",
            "security": BEARER,
            "parameters": [{"name": "webhook", "in": "query", "required": False,
                            "schema": {"type": "string", **{k: v for k, v in _URL.items() if k != "description"}},
                            "description": "Becomes the job's callback_url."}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(input_model)}}},
            "responses": {"200": _json(PredictionEnvelope, "The prediction (its id is the job id)."),
                          **_errors(400, 401, 409, 413, 422, envelope=True)},
        }
    return ops


# --------------------------------------------------------------------------- the document


def _served(routes: Sequence[BaseRoute]) -> set[tuple[str, str]]:
    """(method, path) of every API route the app serves."""
    out = set()
    for route in routes:
        if not isinstance(route, Route) or route.path in NOT_API_PATHS:
            continue
        if getattr(route.endpoint, "__module__", "") in NOT_API_MODULES:
            continue
        for method in route.methods or ():
            if method != "HEAD":  # Starlette adds HEAD to every GET
                out.add((method.lower(), route.path))
    return out


def undocumented(routes: Sequence[BaseRoute]) -> list[tuple[str, str]]:
    """API routes the document does not describe (should be none)."""
    return sorted(_served(routes) - set(_operations()))


def _components() -> dict[str, Any]:
    requests: list[type[BaseModel]] = [*_job_create_variants(), *INPUT_MODELS.values()]
    answers: list[type[BaseModel]] = [Error, Job, JobList, JobEventList, Delivery, WebhookAck, Health, Readiness,
                                      PredictionEnvelope, ErrorEnvelope]
    _, schemas = models_json_schema(
        [(m, "validation") for m in requests] + [(m, "serialization") for m in answers],
        ref_template=REF,
    )
    defs = schemas.get("$defs", {})
    for model in requests:
        _with_rules(defs[model.__name__])
    # FluxDevLoraInput's model validator: a mask is for inpainting an image.
    defs["FluxDevLoraInput"]["dependentRequired"] = {"mask_image": ["image"]}
    return dict(sorted(defs.items()))


def build(routes: Sequence[BaseRoute], version: str = "0.1.0") -> dict[str, Any]:
    """The document for an app serving ``routes``: operations it does not serve are left
    out, so the document never promises what is not there."""
    served = _served(routes)
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), operation in sorted(_operations().items(), key=lambda item: item[0][1]):
        if (method, path) in served:
            paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wavespeed-jobs",
            "version": version,
            "description": "A self-hosted job service in front of WaveSpeedAI's Flux LoRA models: validated jobs in "
                           "Postgres, signed webhooks, outputs in S3, signed callbacks, searchable history.",
        },
        "tags": [
            {"name": "jobs", "description": "The job API (Authorization: Bearer <API key>)."},
            {"name": "receiver", "description": "Where WaveSpeed reports results."},
            {"name": "wavespeed-compatible", "description": "WaveSpeed's own API shape, for its SDK."},
            {"name": "operations", "description": "Health, readiness, metrics, this document."},
        ],
        "paths": paths,
        "components": {
            "schemas": _components(),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "An API key from `wavespeed-jobs keys create`."}},
        },
    }
