"""The facade's translations, without I/O: our job → WaveSpeed's prediction, our field
paths → the caller's, our errors → WaveSpeed's messages."""

from __future__ import annotations

from typing import Any

import pytest

from service.api.facade import (
    SYNC_TIMEOUT_CODE,
    allowed_methods,
    envelope,
    error_message,
    error_text,
    prediction,
    sync_timed_out,
    wavespeed_loc,
)
from service.domain.errors import (
    BadRequest,
    Conflict,
    FieldError,
    NotFound,
    ServiceError,
    Unauthorized,
    ValidationFailed,
)
from service.domain.states import JobStatus

RESULT_URL = "http://svc.test/api/v3/predictions/job_1/result"


def job(status: str, **overrides: Any) -> dict[str, Any]:
    """A job as ``job_dict`` renders it (only the fields the facade reads matter)."""
    base: dict[str, Any] = {
        "id": "job_1",
        "model": "wavespeed-ai/flux-dev-lora",
        "status": status,
        "input": {"prompt": "a fox", "size": "256*256", "enable_base64_output": False},
        "provider": {"task_id": "t_1", "status": None, "inference_ms": None},
        "outputs": [],
        "has_nsfw_contents": None,
        "error": None,
        "created_at": "2025-01-02T03:04:05.123456Z",
    }
    base.update(overrides)
    return base


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("queued", "created"),
        ("submitted", "created"),
        ("processing", "processing"),
        ("storing", "processing"),
        ("completed", "completed"),
        ("failed", "failed"),
        ("canceled", "failed"),
        ("timed_out", "failed"),
    ],
)
def test_every_status_maps_to_one_of_wavespeeds_four(ours: str, theirs: str) -> None:
    assert prediction(job(ours), [], RESULT_URL)["status"] == theirs


def test_the_mapping_table_covers_every_status() -> None:
    seen = {prediction(job(s.value), [], RESULT_URL)["status"] for s in JobStatus}
    assert seen == {"created", "processing", "completed", "failed"}


def test_completed_job_shows_outputs_nsfw_flags_and_inference_time() -> None:
    done = job("completed", has_nsfw_contents=[False, True], provider={"inference_ms": 812})
    data = prediction(done, ["https://s3/a.jpeg", "https://s3/b.jpeg"], RESULT_URL)
    assert data == {
        "id": "job_1",
        "model": "wavespeed-ai/flux-dev-lora",
        "input": done["input"],
        "outputs": ["https://s3/a.jpeg", "https://s3/b.jpeg"],
        "urls": {"get": RESULT_URL},
        "has_nsfw_contents": [False, True],
        "status": "completed",
        "created_at": "2025-01-02T03:04:05.123456Z",
        "error": "",
        "timings": {"inference": 812},
    }


@pytest.mark.parametrize("status", ["queued", "submitted", "processing", "storing", "failed"])
def test_outputs_are_hidden_until_the_job_is_completed(status: str) -> None:
    # While storing, some outputs may already be in S3: WaveSpeed shows none before completion.
    data = prediction(job(status, has_nsfw_contents=[False]), ["https://s3/a.jpeg"], RESULT_URL)
    assert data["outputs"] == []
    assert data["has_nsfw_contents"] == []
    assert data["timings"] == {"inference": 0}


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        ("completed", None, ""),
        ("processing", None, ""),
        ("failed", "NSFW content detected", "NSFW content detected"),
        ("failed", None, "the job failed"),
        ("canceled", None, "the job was canceled"),
        ("timed_out", None, "the job timed out before the provider finished it"),
        (
            "timed_out",
            "no news from the provider",
            "the job timed out before the provider finished it: no news from the provider",
        ),
    ],
)
def test_error_names_the_reason_a_job_ended_without_result(
    status: str, error: str | None, expected: str
) -> None:
    assert error_text(job(status, error=error)) == expected


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("input.prompt", "prompt"),
        ("input.loras.0.scale", "loras.0.scale"),
        ("input", "body"),
        ("callback_url", "webhook"),
        ("Idempotency-Key", "Idempotency-Key"),
        ("body", "body"),
    ],
)
def test_field_paths_are_named_as_the_caller_sent_them(ours: str, theirs: str) -> None:
    assert wavespeed_loc(ours) == theirs


def test_validation_message_lists_every_field_and_rule() -> None:
    exc = ValidationFailed(
        [
            FieldError("input.size", "must be 'W*H', e.g. '1024*1024'"),
            FieldError("callback_url", "must be an http(s) URL"),
        ]
    )
    assert error_message(exc) == "size: must be 'W*H', e.g. '1024*1024'; webhook: must be an http(s) URL"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (BadRequest("the body must be valid JSON", field="body"), "body: the body must be valid JSON"),
        (Conflict("already used", field="Idempotency-Key"), "Idempotency-Key: already used"),
        (NotFound("no job with id 'x'"), "no job with id 'x'"),
        (Unauthorized(), "A valid API key is required: send `Authorization: Bearer <key>`."),
    ],
)
def test_other_errors_keep_their_message(exc: ServiceError, expected: str) -> None:
    assert error_message(exc) == expected


def test_sync_timeout_is_what_the_sdk_recognises() -> None:
    data = sync_timed_out(prediction(job("queued"), [], RESULT_URL))
    # wavespeed.api.client reads data.code == 5004 as "sync wait over, task still runs".
    assert data["code"] == SYNC_TIMEOUT_CODE == 5004
    assert "Sync mode timed out" in data["error"] and RESULT_URL in data["error"]
    assert data["status"] == "created"


@pytest.mark.parametrize(
    ("rest", "methods"),
    [
        ("wavespeed-ai/flux-dev-lora", ["POST"]),
        ("wavespeed-ai/flux-krea-dev-lora", ["POST"]),
        ("predictions/job_1/result", ["GET"]),
        ("predictions/job_1", []),
        ("wavespeed-ai/flux-schnell", []),
        ("webhook/secret", []),
        ("", []),
    ],
)
def test_allowed_methods_know_only_the_served_endpoints(rest: str, methods: list[str]) -> None:
    assert allowed_methods(rest) == methods


def test_envelope_is_wavespeeds() -> None:
    assert envelope({"id": "x"}) == {"code": 200, "message": "success", "data": {"id": "x"}}
    assert envelope(None, 404, "nope") == {"code": 404, "message": "nope", "data": None}
