"""Request bodies read with a cap: a declared Content-Length over the cap is refused
before reading, and a chunked body is cut off as soon as it passes it (413 either way)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from service.domain.errors import BadRequest, PayloadTooLarge

# No request body this service accepts nests deeper than a handful of levels (a job is
# four: body → input → loras → item). 32 leaves room and keeps every later walk of the
# value (validation, hashing, jsonb) far from Python's recursion limit.
MAX_JSON_DEPTH = 32


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


def json_depth(value: Any) -> int:
    """How deeply ``value`` nests (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            stack.extend((child, depth) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_json(body: bytes | str, what: str = "the body") -> Any:
    """JSON with a depth limit; BadRequest naming the rule otherwise (never a 500: a
    document nested thousands deep makes the parser itself raise RecursionError)."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest(f"{what} must be valid JSON", field="body") from None
    # Each level of nesting opens with its own bracket, so a text with few of them cannot
    # nest deeply: counted in C, this spares the walk (three times the parse's cost on
    # a webhook) for almost every body.
    openers = body.count(b"[") + body.count(b"{") if isinstance(body, bytes) else body.count("[") + body.count("{")
    if openers > MAX_JSON_DEPTH and json_depth(value) > MAX_JSON_DEPTH:
        raise BadRequest(f"{what} nests deeper than {MAX_JSON_DEPTH} levels", field="body")
    return value
