"""A request whose header block is over MAX_REQUEST_HEADER_BYTES is refused with a 431,
at two levels:

* ``capped_httptools``: the HTTP protocol ``serve`` runs (uvicorn's httptools, which has
  no header limit of its own; h11 has one but halves the throughput:
  tests/benchmarks/bench_egress.py) counts the bytes before the headers are complete and
  refuses as they arrive, before the parser holds or joins them;
* ``HeaderGuard``: the app's own check, a sum over the parsed headers before any route
  runs, for servers started otherwise (the dev stack, tests, another ASGI server).

In production the proxy in front should cap headers too (docs/security.md)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send


class HeaderGuard:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > self.limit:
                body = json.dumps({"error": {
                    "type": "headers_too_large",
                    "message": f"the request's headers must be at most {self.limit} bytes in all"}}).encode()
                await send({"type": "http.response.start", "status": 431, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def capped_httptools(limit: int) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, refusing a request whose request line and headers
    pass ``limit`` bytes with a 431 and a closed connection, as the bytes arrive.

    httptools itself has no limit, and it joins a long header value chunk by chunk: a
    20 MB header cost ~670 ms of CPU before the app could refuse it. Counting the bytes
    that arrive before the headers are complete costs one addition per read."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class CappedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_bytes = 0
            self._in_head = True
            self._refused = False

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._in_head:
                self._head_bytes += len(data)
                if self._head_bytes > limit:
                    self._refused = True
                    body = f"the request's headers must be at most {limit} bytes in all".encode()
                    self.transport.write(
                        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8"
                        b"\r\nconnection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                    self.transport.close()
                    return
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head, self._head_bytes = True, 0  # the next request on this connection

    return CappedHttpToolsProtocol
