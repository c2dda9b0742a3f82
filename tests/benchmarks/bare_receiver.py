"""The baseline of bench_receiver: a bare Starlette app that does what the receiver does
before the database (the same body cap, WaveSpeed v3 signature check and JSON parse, with
the service's own functions) and answers 200, under uvicorn configured as ``serve`` is.

``python -m tests.benchmarks.bare_receiver PORT SECRET MAX_BODY``
"""

from __future__ import annotations

import json
import sys
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.api.plumbing.body import read_capped
from service.domain.errors import BadRequest, SignatureInvalid
from service.domain.signing import verify_wavespeed

TOLERANCE = 300


def create_app(secret: str, max_body: int) -> Starlette:
    async def receive(request: Request) -> JSONResponse:
        body = await read_capped(request, max_body)
        try:
            verify_wavespeed(secret, request.headers, body, now=time.time(), tolerance=TOLERANCE)
        except SignatureInvalid:
            return JSONResponse({"error": "invalid signature"}, status_code=401)
        try:
            prediction = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, BadRequest):
            return JSONResponse({"error": "not JSON"}, status_code=400)
        if not isinstance(prediction, dict):
            return JSONResponse({"error": "not an object"}, status_code=400)
        return JSONResponse({"received": True, "outcome": "advanced"})

    async def health(_request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/webhooks/wavespeed/{job_id}", receive, methods=["POST"]),
                             Route("/healthz", health)])


def main(argv: list[str]) -> None:
    port, secret, max_body = int(argv[0]), argv[1], int(argv[2])
    config = uvicorn.Config(create_app(secret, max_body), host="127.0.0.1", port=port, log_level="warning",
                            access_log=False)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main(sys.argv[1:])
