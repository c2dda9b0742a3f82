"""Provenance receipts: ``GET /v1/jobs/{id}/receipt`` (a completed job's facts as a
compact JWS, ``application/jose``) and ``GET /.well-known/jwks.json`` (every public key
that ever signed one). What a receipt says and how to verify it: docs/provenance.md.

A job that is not completed (still running, failed, canceled, timed out, or deleted) is
the caller's and exists, so it answers 409, not 404: come back once it is completed.
Another owner's job, or none, is a 404 like everywhere in the API (the owner filter is
in the statement that reads the job)."""

from __future__ import annotations

from typing import Any, Literal, NotRequired

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from typing_extensions import TypedDict

from service.api.plumbing.auth import authenticate, resources
from service.api.plumbing.openapi_doc import BEARER, JOB_ID, answer, documented, errors
from service.db import jobs, receipt_keys
from service.db.engine import raw_statement
from service.domain import receipts
from service.domain.errors import Conflict
from service.domain.ids import checked_job_id
from service.domain.receipt_keys import jwks
from service.domain.states import JobStatus

COMPACT_JWS = r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$"
# Keys change only on rotation, and a verifier refetches on an unknown kid.
JWKS_MAX_AGE_SECONDS = 300


class PublicKey(TypedDict):
    """A receipt signing key's public part (RFC 7517)."""

    kty: Literal["OKP", "EC"]
    crv: Literal["Ed25519", "P-256"]
    x: str
    y: NotRequired[str]
    kid: str
    alg: Literal["Ed25519", "ES256"]
    use: Literal["sig"]


class KeySet(TypedDict):
    """The JWK Set receipts verify with: the signing key first, then every older key."""

    keys: list[PublicKey]


RECEIPT_ANSWER: dict[str, Any] = {
    "description": "The receipt: a compact JWS whose header names its key (`kid`) and whose payload is the job's "
                   "facts as JSON (docs/provenance.md).",
    "content": {receipts.MEDIA_TYPE: {"schema": {"type": "string", "pattern": COMPACT_JWS}}},
}


@documented(operationId="getJobReceipt", tags=["jobs"], summary="A completed job's signed receipt", security=BEARER,
            parameters=[JOB_ID], responses={"200": RECEIPT_ANSWER, **errors(401, 404, 409)})
async def receipt(request: Request) -> Response:
    """The job id, owner, model, full input (seed resolved), upstream task id, each
    output's S3 key, size and sha256, `cost_usd` and the job's times, signed. Verify it
    offline with `/.well-known/jwks.json`. A job that is not completed is a 409."""
    owner = await authenticate(request)
    res = resources(request)
    job_id = checked_job_id(request.path_params["job_id"])  # 404 before any query
    async with raw_statement(res.engine) as conn:
        job, outputs = await jobs.get_job_with_outputs(conn, job_id, owner)
    if job.deleted or job.status != JobStatus.COMPLETED:
        state = "deleted" if job.deleted else job.status.value
        raise Conflict(f"job {job.id} is {state}: only a completed job has a receipt")
    token = receipts.sign(receipts.payload(job, outputs), await res.receipt_signer.key(res.engine))
    return Response(token, media_type=receipts.MEDIA_TYPE, headers={"Cache-Control": "no-store"})


@documented(operationId="getReceiptKeys", tags=["operations"], summary="The public keys receipts verify with",
            responses={"200": answer(KeySet, "The JWK Set.")})
async def key_set(request: Request) -> JSONResponse:
    """Every key that ever signed a receipt (rotation keeps old keys), the current one
    first. No API key needed."""
    res = resources(request)
    async with res.engine.connect() as conn:
        published = await receipt_keys.published(conn)
    return JSONResponse(jwks(published), headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE_SECONDS}"})


routes = [
    Route("/v1/jobs/{job_id}/receipt", receipt, methods=["GET"]),
    Route("/.well-known/jwks.json", key_set, methods=["GET"]),
]
