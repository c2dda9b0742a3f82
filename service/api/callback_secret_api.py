"""The owner's callback secret: ``GET /v1/callback-secret`` and
``POST /v1/callback-secret/rotate``. Each owner's callbacks are signed with its own
secret (service/db/callback_secrets.py); these answers only ever show the caller's."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.api.plumbing.auth import authenticate, authenticate_bearer, resources
from service.api.plumbing.body import parse_json, read_capped
from service.api.plumbing.openapi_doc import BEARER, answer, documented, errors
from service.db import callback_secrets
from service.db.callback_secrets import DEFAULT_KEEP_PREVIOUS_SECONDS, MAX_KEEP_PREVIOUS_SECONDS, OwnerSecrets
from service.domain.errors import FieldError, ValidationFailed
from service.domain.serialize import iso

MAX_BODY_BYTES = 4096


class CallbackSecret(BaseModel):
    """The owner's callback secret (Standard Webhooks ``whsec_…``)."""

    secret: str = Field(pattern=r"^whsec_")
    previous_expires_at: str | None = Field(
        description="While set, callbacks carry a second signature made with the previous secret.")


class RotateCallbackSecret(BaseModel):
    """Body of POST /v1/callback-secret/rotate (optional)."""

    model_config = ConfigDict(extra="forbid")
    keep_previous_seconds: int = Field(
        DEFAULT_KEEP_PREVIOUS_SECONDS, ge=0, le=MAX_KEEP_PREVIOUS_SECONDS,
        description="How long the replaced secret still signs callbacks beside the new one (0: not at all).")


def _answer(secrets: OwnerSecrets) -> JSONResponse:
    # no-store: a secret must not linger in a cache between the backend and us.
    return JSONResponse(
        {"secret": secrets.secret, "previous_expires_at": iso(secrets.previous_expires_at)},
        headers={"Cache-Control": "no-store"},
    )


def parse_rotate(body: bytes) -> int:
    """``{"keep_previous_seconds": N}`` (or an empty body) → N, bounded."""
    if not body.strip():
        return DEFAULT_KEEP_PREVIOUS_SECONDS
    data: Any = parse_json(body)
    if not isinstance(data, dict):
        raise ValidationFailed([FieldError("body", "must be a JSON object")])
    unknown = sorted(set(data) - {"keep_previous_seconds"})
    if unknown:
        raise ValidationFailed([FieldError(k[:100], "is not a known field") for k in unknown[:20]])
    keep = data.get("keep_previous_seconds", DEFAULT_KEEP_PREVIOUS_SECONDS)
    if isinstance(keep, float) and keep.is_integer():
        keep = int(keep)  # 60.0 is an integer to JSON Schema
    if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep <= MAX_KEEP_PREVIOUS_SECONDS:
        raise ValidationFailed([FieldError(
            "keep_previous_seconds", f"must be an integer from 0 to {MAX_KEEP_PREVIOUS_SECONDS} (seconds)")])
    return keep


@documented(operationId="getCallbackSecret", tags=["callbacks"], summary="The owner's callback secret",
            security=BEARER, description="Each owner's callbacks are signed with its own secret; verify them with it.",
            responses={"200": answer(CallbackSecret, "The current secret."), **errors(401)})
async def show(request: Request) -> JSONResponse:
    owner = await authenticate_bearer(request)  # never with a history-page cookie alone
    res = resources(request)
    async with res.engine.begin() as conn:
        secrets = await callback_secrets.current(conn, owner, res.sealer, res.callback_secret)
    return _answer(secrets)


@documented(operationId="rotateCallbackSecret", tags=["callbacks"], summary="Replace the owner's callback secret",
            security=BEARER,
            description="A new random secret signs every callback from now on; the previous one signs beside it "
                        "(two space-separated `v1,` entries in `webhook-signature`) until `previous_expires_at`.",
            requestBody={"required": False, "content": {"application/json": {"schema": RotateCallbackSecret}}},
            responses={"200": answer(CallbackSecret, "The new secret."), **errors(400, 401, 413, 422)})
async def rotate(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    res = resources(request)
    keep = parse_rotate(await read_capped(request, MAX_BODY_BYTES))
    async with res.engine.begin() as conn:
        secrets = await callback_secrets.rotate(conn, owner, res.sealer, res.callback_secret, keep)
    return _answer(secrets)


routes = [
    Route("/v1/callback-secret", show, methods=["GET"]),
    Route("/v1/callback-secret/rotate", rotate, methods=["POST"]),
]
