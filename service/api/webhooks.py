"""The receiver: ``POST /webhooks/wavespeed/{job_id}``.

Order matters: cap the body, verify the signature over the raw bytes (constant time),
and only then parse JSON. One transaction records the event (deduplicated on
webhook-id) and advances the job; the answer goes back at once. Downloads happen in
the storer, never here.

Final events (``completed``/``failed``) and redeliveries first try the one-round-trip
fast path in service/webhook_store.py; whatever it does not cover, or any trouble it
has, goes through ``record`` below, the general path.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import asyncpg
import structlog
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from typing_extensions import TypedDict

from service.api.auth import resources
from service.api.body import parse_json, read_capped
from service.api.error_responses import ErrorBody
from service.api.openapi_doc import JOB_ID, answer, documented
from service.db import jobs, queries
from service.db.webhook_store import WebhookStore, final_news
from service.domain.errors import BadRequest, Conflict, SignatureInvalid
from service.domain.signing import verify_wavespeed
from service.observability import logs, metrics

log = structlog.get_logger(__name__)


class WebhookAck(TypedDict):
    received: bool
    outcome: Annotated[str, Field(description="advanced, unchanged, duplicate, late, task_mismatch or unknown_job.")]


@documented(
    operationId="receiveWavespeedWebhook", tags=["receiver"],
    summary="WaveSpeed's completion webhook (the URL given to WaveSpeed for each job)",
    description="Verified (HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`, constant time, timestamp "
                "tolerance) before anything else is read; idempotent on webhook-id.",
    parameters=[JOB_ID] + [{"name": name, "in": "header", "required": True, "schema": {"type": "string"}}
                           for name in ("webhook-id", "webhook-timestamp", "webhook-signature")],
    requestBody={"required": True, "content": {"application/json": {"schema": {
        "type": "object", "description": "WaveSpeed's prediction object (id, status, outputs, ...)."}}}},
    responses={
        "200": answer(WebhookAck, "Recorded (or recognised as a duplicate)."),
        "400": answer(ErrorBody, "Verified, but not a JSON object with a string `id` (the task id)."),
        "401": answer(ErrorBody, "Missing, wrong, tampered or stale signature, or a `webhook-signature` over "
                                 "1 KiB or with more than 5 entries (refused before any HMAC): nothing recorded."),
        "413": answer(ErrorBody, "The body is over WEBHOOK_MAX_BODY_BYTES."),
    },
)

async def receive(request: Request) -> JSONResponse:
    res = resources(request)
    settings = res.settings
    body = await read_capped(request, settings.webhook_max_body_bytes)
    try:
        webhook_id = verify_wavespeed(
            res.webhook_secret, request.headers, body, now=time.time(), tolerance=settings.webhook_tolerance_seconds
        )
    except SignatureInvalid:
        metrics.webhook_received("invalid_signature")
        raise
    try:
        # Decoded first: the body is stored as text, so it must be UTF-8 (json.loads
        # alone would also accept UTF-16 and leave the decode to fail later as a 500).
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the webhook body is not UTF-8 JSON") from None
    prediction: Any = parse_json(text, "the webhook body")
    if not isinstance(prediction, dict):
        raise BadRequest("the webhook body is not a JSON object")

    job_id = request.path_params["job_id"]
    task_id = prediction.get("id")
    # Right after verification, before anything reads the job: a signed body must name
    # its task, so the task-id check below (and in jobs.apply_prediction) cannot be
    # skipped by leaving ``id`` out. Changes nothing; the provider always sends one.
    if not isinstance(task_id, str) or not task_id or "\x00" in task_id:
        metrics.webhook_received("no_task_id")
        raise BadRequest("the webhook body has no string id (the task id)", field="id")
    if jobs.impossible_id(job_id):
        raise BadRequest("the job id in the path cannot be a job's", field="job_id")
    logs.bind_job(job_id, task_id)
    outcome = await record_fast(request, webhook_id, job_id, prediction, text)
    if outcome is None:
        outcome = await record(res, webhook_id, job_id, task_id, prediction, body)
    metrics.webhook_received(outcome)
    log.info("webhook.received", job_id=job_id, task_id=task_id, webhook_id=webhook_id, outcome=outcome)
    ack: WebhookAck = {"received": True, "outcome": outcome}
    return JSONResponse(ack)


async def record_fast(
    request: Request, webhook_id: str, job_id: str, prediction: dict[str, Any], text: str
) -> str | None:
    """The fast path's outcome, or None to take the general path (nothing written)."""
    store: WebhookStore | None = getattr(request.app.state, "webhook_store", None)
    news = final_news(prediction)
    if store is None or news is None:
        return None
    try:
        return await store.record_final(webhook_id, job_id, prediction, text, news)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        # One statement, so nothing was committed (or, if the connection broke after the
        # commit, the general path will see a duplicate): the general path decides.
        log.warning("webhook.fast_path_failed", job_id=job_id, error=type(exc).__name__)
        return None


async def record(
    res: Any, webhook_id: str, job_id: str, task_id: str | None, prediction: dict[str, Any], raw: bytes
) -> str:
    async with res.engine.begin() as conn:
        job = await jobs.lock_job(conn, job_id)
        if job is None:
            # Verified, but not ours (or already purged): log it, answer 2xx so the
            # provider stops retrying.
            await conn.execute(
                queries.INSERT_WEBHOOK_EVENT,
                {"webhook_id": webhook_id, "job_id": None, "task_id": task_id, "body": raw.decode(),
                 "outcome": "unknown_job"},
            )
            return "unknown_job"
        inserted = (
            await conn.execute(
                queries.INSERT_WEBHOOK_EVENT,
                # A deleted job's erased data must not come back with a late webhook.
                {"webhook_id": webhook_id, "job_id": job_id, "task_id": task_id,
                 "body": "{}" if job.deleted_at else raw.decode(), "outcome": "received"},
            )
        ).first()
        detail = {"webhook_id": webhook_id, "task_id": task_id, "status": prediction.get("status")}
        if inserted is None:
            await jobs.add_event(conn, job_id, "webhook.received", {**detail, "duplicate": True})
            return "duplicate"
        await jobs.add_event(conn, job_id, "webhook.received", {**detail, "duplicate": False})
        try:
            return await jobs.apply_prediction(
                conn, job, prediction, source="webhook", reconcile_after=res.settings.reconcile_after_seconds
            )
        except Conflict:
            return "task_mismatch"


routes = [Route("/webhooks/wavespeed/{job_id}", receive, methods=["POST"])]
