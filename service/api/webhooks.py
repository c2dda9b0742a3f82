"""The receiver: ``POST /webhooks/wavespeed/{job_id}``.

Order matters: cap the body, verify the signature over the raw bytes (constant time),
and only then parse JSON. One transaction records the event (deduplicated on
webhook-id) and advances the job; the answer goes back at once. Downloads happen in
the storer, never here.
"""

from __future__ import annotations

import json
import time
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service import jobs, queries
from service.api.auth import resources
from service.errors import BadRequest, Conflict, PayloadTooLarge
from service.signing import verify_wavespeed

log = structlog.get_logger(__name__)


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"webhook bodies are capped at {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"webhook bodies are capped at {limit} bytes")
    return bytes(body)


async def receive(request: Request) -> JSONResponse:
    res = resources(request)
    settings = res.settings
    body = await _read_capped(request, settings.webhook_max_body_bytes)
    webhook_id = verify_wavespeed(
        res.webhook_secret, request.headers, body, now=time.time(), tolerance=settings.webhook_tolerance_seconds
    )
    try:
        prediction: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the webhook body is not JSON") from None
    if not isinstance(prediction, dict):
        raise BadRequest("the webhook body is not a JSON object")

    job_id = request.path_params["job_id"]
    task_id = prediction.get("id") if isinstance(prediction.get("id"), str) else None
    outcome = await record(res, webhook_id, job_id, task_id, prediction, body)
    log.info("webhook.received", job_id=job_id, task_id=task_id, webhook_id=webhook_id, outcome=outcome)
    return JSONResponse({"received": True, "outcome": outcome})


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
                {"webhook_id": webhook_id, "job_id": None, "task_id": task_id, "body": raw.decode(), "outcome": "unknown_job"},
            )
            return "unknown_job"
        inserted = (
            await conn.execute(
                queries.INSERT_WEBHOOK_EVENT,
                {"webhook_id": webhook_id, "job_id": job_id, "task_id": task_id, "body": raw.decode(), "outcome": "received"},
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
