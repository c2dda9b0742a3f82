"""The receiver: ``POST /webhooks/wavespeed/{job_id}``.

Order matters: cap the body, verify the signature over the raw bytes (constant time),
and only then parse JSON. The news is then written by the one path for provider news
(service/db/news.py) through the group-commit writer (service/db/news_writer.py): the
answer goes back once the transaction holding this webhook has committed. Downloads
happen in the storer, never here.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

import structlog
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from typing_extensions import TypedDict

from service.api.plumbing.auth import resources
from service.api.plumbing.body import parse_json, read_capped
from service.api.plumbing.error_responses import ErrorBody
from service.api.plumbing.openapi_doc import JOB_ID, answer, documented
from service.db import jobs, news
from service.db.news import News, Result
from service.db.news_writer import NewsWriter
from service.domain.errors import BadRequest, SignatureInvalid
from service.domain.signing import verify_wavespeed
from service.observability import logs, metrics
from service.observability.tracing import job_attributes, job_span
from service.resources import Resources

log = structlog.get_logger(__name__)


class WebhookAck(TypedDict):
    received: bool
    outcome: Annotated[str, Field(description="advanced, unchanged, duplicate, late, task_mismatch or unknown_job.")]


@documented(
    operationId="receiveWavespeedWebhook", tags=["receiver"],
    summary="WaveSpeed's completion webhook (the URL given to WaveSpeed for each job)",
    description="Verified (HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`, constant time, timestamp "
                "tolerance) before anything else is read; idempotent on webhook-id. Answered once the "
                "transaction that records it has committed.",
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
        "503": answer(ErrorBody, "The database could not record it: nothing recorded, send it again."),
    },
)
async def receive(request: Request) -> JSONResponse:
    arrived = time.time_ns()
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
    job_id = request.path_params["job_id"]
    prediction = checked_prediction(text, job_id)
    item = news.plan(
        job_id, prediction, source="webhook", reconcile_after=settings.reconcile_after_seconds,
        webhook_id=webhook_id, body=text,
    )
    logs.bind_job(job_id, item.task_id)
    writer: NewsWriter = request.app.state.news_writer
    result = await writer.write(item)
    metrics.webhook_received(result.outcome)
    if res.tracing.exporting or log.is_enabled_for(logging.INFO):
        record(res, arrived, job_id, item, webhook_id, result)
    ack: WebhookAck = {"received": True, "outcome": result.outcome}
    return JSONResponse(ack)


def record(res: Resources, arrived: int, job_id: str, item: News, webhook_id: str, result: Result) -> None:
    """The webhook's span and log line. Skipped when neither is kept (no exporter, log
    level above info): a span that records nothing served only the line's trace ids."""
    # A span of the job's own trace (its context came back with the write), from the
    # webhook's arrival to its commit (the request itself gets no span of its own:
    # service/observability/instrumentation.py UNTRACED).
    with job_span(res.tracing, "webhook.receive", result.traceparent, start_time=arrived,
                  attributes={**job_attributes(job_id), "webhook.outcome": result.outcome,
                              "provider.status": item.provider_status or "", "provider.task_id": item.task_id or ""}):
        log.info("webhook.received", job_id=job_id, task_id=item.task_id, webhook_id=webhook_id,
                 outcome=result.outcome)


def checked_prediction(text: str, job_id: str) -> dict[str, Any]:
    """The verified body as a prediction, or a 400 saying what is wrong with it."""
    prediction: Any = parse_json(text, "the webhook body")
    if not isinstance(prediction, dict):
        raise BadRequest("the webhook body is not a JSON object")
    task_id = prediction.get("id")
    # Right after verification, before anything reads the job: a signed body must name
    # its task, so the task-id check of provider news cannot be skipped by leaving
    # ``id`` out. Changes nothing; the provider always sends one.
    if not isinstance(task_id, str) or not task_id or "\x00" in task_id:
        metrics.webhook_received("no_task_id")
        raise BadRequest("the webhook body has no string id (the task id)", field="id")
    if jobs.impossible_id(job_id):
        raise BadRequest("the job id in the path cannot be a job's", field="job_id")
    return prediction


routes = [Route("/webhooks/wavespeed/{job_id}", receive, methods=["POST"])]
