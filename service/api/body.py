"""Request bodies read with a cap: a declared Content-Length over the cap is refused
before reading, and a chunked body is cut off as soon as it passes it (413 either way)."""

from __future__ import annotations

from starlette.requests import Request

from service.domain.errors import PayloadTooLarge


async def read_capped(request: Request, limit: int) -> bytes:
    message = f"the body must be at most {limit} bytes"
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(message)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(message)
    return bytes(body)
