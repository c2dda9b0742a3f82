"""The provider's ``/api/v3`` surface: submit, result, history, webhook secret, uploads."""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.requests import Request
from starlette.responses import Response

from devtools.simulator.disconnect import unless_disconnected
from devtools.simulator.lifecycle import run_task
from devtools.simulator.params import MODELS, InvalidInput, validate
from devtools.simulator.responses import PacedResponse, chunks_of, error, ok
from devtools.simulator.state import (
    COMPLETED,
    CREATED,
    FAILED,
    PROCESSING,
    TERMINAL,
    SimTask,
    SimulatorState,
    Upload,
    iso,
    new_id,
)

Endpoint = Callable[[Request], Awaitable[Response]]

LIST_STATUSES = (COMPLETED, FAILED, PROCESSING)
RETENTION_DAYS = 7
SYNC_TIMEOUT_MESSAGE = "Sync mode timed out before the task finished; query the result later"


class InvalidField(Exception):
    """A request field the provider would reject; the message starts with its name."""


def sim_of(request: Request) -> SimulatorState:
    sim: SimulatorState = request.app.state.sim
    return sim


def base_url(request: Request) -> str:
    """Where clients reach us: ``public_url`` if configured, else this request's origin."""
    configured = sim_of(request).config.public_url
    return (configured or str(request.base_url)).rstrip("/")


def authed(endpoint: Endpoint) -> Endpoint:
    """Every /api/v3 call needs ``Authorization: Bearer <api_key>``."""

    @functools.wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        expected = ("Bearer " + sim_of(request).config.api_key).encode()
        given = request.headers.get("authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, expected):
            return error(401, "Unauthorized: invalid or missing API key")
        return await endpoint(request)

    return wrapper


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if not body.strip():
        return {}
    return json.loads(body)


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


# -- submit ------------------------------------------------------------------------------


def submit_endpoint(model: str) -> Endpoint:
    @authed
    async def submit(request: Request) -> Response:
        return await _submit(request, model)

    submit.__name__ = "submit_" + model.rsplit("/", 1)[-1].replace("-", "_")
    return submit


async def _submit(request: Request, model: str) -> Response:
    sim = sim_of(request)
    config = sim.config
    # Like a gateway in front of the provider, rate limits and outages come first.
    if sim.dice.hit(config.submit_429_rate):
        sim.stats.submits_rejected_429 += 1
        retry_after = {"Retry-After": str(config.retry_after_seconds)}
        return error(429, "Too many requests: rate limit exceeded", headers=retry_after)
    if sim.dice.hit(config.submit_500_rate):
        sim.stats.submits_rejected_500 += 1
        return error(500, "Internal server error")
    try:
        raw = await _json_body(request)
    except ValueError:
        sim.stats.submits_invalid += 1
        return error(400, "Invalid JSON body")
    if not isinstance(raw, dict):
        sim.stats.submits_invalid += 1
        return error(422, "body: must be a JSON object")
    webhook = request.query_params.get("webhook")
    if webhook is not None and not _is_http_url(webhook):
        sim.stats.submits_invalid += 1
        return error(422, "webhook: must be an http(s) URL")
    try:
        input_ = validate(model, raw)
    except InvalidInput as exc:
        sim.stats.submits_invalid += 1
        return error(422, str(exc))

    seed = int(input_["seed"]) if input_.get("seed", -1) != -1 else sim.dice.seed()
    task = SimTask(
        id=new_id(),
        model=model,
        input=input_,
        base_url=base_url(request),
        webhook_url=webhook,
        created_at=datetime.now(UTC),
        seed=seed,
        traceparent=request.headers.get("traceparent"),
    )
    sim.add_task(task)
    sim.stats.submits_accepted += 1
    sim.background.spawn(run_task(sim, task), name=f"sim-task-{task.id}")

    if sim.dice.hit(config.submit_hang_rate):
        return await _hang(request, sim, task)
    if input_.get("enable_sync_mode"):
        return await _sync_answer(request, sim, task)
    return ok(task.prediction())


async def _hang(request: Request, sim: SimulatorState, task: SimTask) -> Response:
    """The task exists and runs, but its answer is lost: hang, then cut the connection."""
    task.hung = True
    sim.stats.submits_hung += 1
    waited, _ = await unless_disconnected(request.receive, asyncio.sleep(sim.config.submit_hang_seconds))
    if not waited:
        return Response(status_code=499)  # the client gave up; nobody reads this
    body = json.dumps({"code": 200, "message": "success", "data": task.prediction()}).encode()
    # Headers go out, half the body, then the connection drops: an answer nobody can read.
    return PacedResponse(
        chunks_of(body, len(body)), length=len(body), media_type="application/json", cut_at=len(body) // 2
    )


async def _sync_answer(request: Request, sim: SimulatorState, task: SimTask) -> Response:
    async def finished() -> bool:
        try:
            await asyncio.wait_for(task.finished.wait(), timeout=sim.config.sync_timeout)
        except TimeoutError:
            return False
        return True

    _, done = await unless_disconnected(request.receive, finished())
    prediction = task.prediction()
    if not done and prediction["status"] not in TERMINAL:
        # What the official SDK recognises as a sync-mode timeout.
        prediction["error"] = SYNC_TIMEOUT_MESSAGE
    return ok(prediction)


# -- queries -----------------------------------------------------------------------------


@authed
async def result(request: Request) -> Response:
    task = sim_of(request).tasks.get(request.path_params["task_id"])
    if task is None:
        return error(404, "Prediction not found")
    return ok(task.prediction())


@authed
async def list_predictions(request: Request) -> Response:
    sim = sim_of(request)
    try:
        raw = await _json_body(request)
    except ValueError:
        return error(400, "Invalid JSON body")
    try:
        query = parse_history_query(raw)
    except InvalidField as exc:
        return error(422, str(exc))
    _arrive(sim, request, query.get("model"), sim.config.list_arrivals)
    oldest = datetime.now(UTC).timestamp() - RETENTION_DAYS * 86400
    matches = [
        task
        for task in reversed(sim.tasks.values())  # insertion order is creation order
        if task.created_at.timestamp() >= oldest and _matches(task, query)
    ]
    page, page_size = query["page"], query["page_size"]
    start = (page - 1) * page_size
    items = matches[start : start + min(page_size, sim.config.list_page_cap or page_size)]
    return ok(
        {
            "page": page,
            "page_size": page_size,
            "total": len(matches),
            "items": [task.prediction() for task in items],
        }
    )


def _arrive(sim: SimulatorState, request: Request, model: str | None, count: int) -> None:
    """``count`` tasks of another user of the account, created now (never run)."""
    for i in range(count):
        model_id = model or "wavespeed-ai/flux-dev-lora"
        sim.add_task(SimTask(id=new_id(), model=model_id, input={"prompt": f"another user's task {i}"},
                             base_url=base_url(request), webhook_url=None, created_at=datetime.now(UTC),
                             seed=sim.dice.seed()))


def parse_history_query(raw: Any) -> dict[str, Any]:
    """The history body, checked like the provider would: InvalidField names the field."""
    if not isinstance(raw, dict):
        raise InvalidField("body: must be a JSON object")
    unknown = sorted(set(raw) - {"page", "page_size", "model", "status", "created_after", "created_before"})
    if unknown:
        raise InvalidField(f"{unknown[0]}: unknown field")
    query: dict[str, Any] = {
        "page": _int_field(raw, "page", 1, 1, None),
        "page_size": _int_field(raw, "page_size", 20, 1, 100),
    }
    model = raw.get("model")
    if model is not None and model not in MODELS:
        raise InvalidField(f"model: must be one of {', '.join(MODELS)}")
    status = raw.get("status")
    if status is not None and status not in LIST_STATUSES:
        raise InvalidField(f"status: must be one of {', '.join(LIST_STATUSES)}")
    query["model"], query["status"] = model, status
    for name in ("created_after", "created_before"):
        query[name] = _time_field(raw, name)
    return query


def _int_field(raw: dict[str, Any], name: str, default: int, low: int, high: int | None) -> int:
    value = raw.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidField(f"{name}: must be an integer")
    if value < low or (high is not None and value > high):
        raise InvalidField(
            f"{name}: must be between {low} and {high}" if high else f"{name}: must be >= {low}"
        )
    return value


def _time_field(raw: dict[str, Any], name: str) -> datetime | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidField(f"{name}: must be an ISO 8601 time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidField(f"{name}: must be an ISO 8601 time") from None
    # A time without an offset is taken as UTC, like the provider's own timestamps.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _matches(task: SimTask, query: dict[str, Any]) -> bool:
    if query["model"] is not None and task.model != query["model"]:
        return False
    status = query["status"]
    # History has no "created" filter: a task not yet started counts as processing.
    shown = PROCESSING if task.status == CREATED else task.status
    if status is not None and shown != status:
        return False
    after: datetime | None = query["created_after"]
    before: datetime | None = query["created_before"]
    if after is not None and task.created_at <= after:
        return False
    return before is None or task.created_at < before


@authed
async def webhook_secret(request: Request) -> Response:
    # The spec only says "the envelope with the secret": an object with `secret` is the
    # shape clients should expect; they should also accept a bare string.
    return ok({"secret": sim_of(request).config.webhook_secret})


# -- media uploads -----------------------------------------------------------------------


@authed
async def create_upload(request: Request) -> Response:
    sim = sim_of(request)
    try:
        raw = await _json_body(request)
    except ValueError:
        return error(400, "Invalid JSON body")
    if not isinstance(raw, dict):
        return error(422, "body: must be a JSON object")
    filename, size = raw.get("filename"), raw.get("size")
    content_type = raw.get("content_type") or "application/octet-stream"
    if not isinstance(filename, str) or not filename.strip() or "/" in filename:
        return error(422, "filename: must be a non-empty file name")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return error(422, "size: must be a non-negative integer")
    if not isinstance(content_type, str):
        return error(422, "content_type: must be a string")
    if size > sim.config.upload_max_bytes:
        return error(413, f"size: must be at most {sim.config.upload_max_bytes} bytes")
    upload_id = new_id()
    sim.add_upload(Upload(upload_id, filename, content_type, size))
    base = base_url(request)
    return ok(
        {
            "upload": {
                "method": "PUT",
                "url": f"{base}/media/upload/{upload_id}",
                "headers": {"Content-Type": content_type},
            },
            "download_url": f"{base}/media/{upload_id}/{quote(filename)}",
            "created_at": iso(datetime.now(UTC)),
        }
    )


@authed
async def not_found(request: Request) -> Response:
    return error(404, f"Not found: {request.method} {request.url.path}")
