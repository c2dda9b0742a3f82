"""A request whose header block is over MAX_REQUEST_HEADER_BYTES is refused with a 431,
at two levels:

* ``capped_httptools``: the HTTP protocol ``serve`` runs (uvicorn's httptools, which has
  no header limit of its own; h11 has one but halves the throughput:
  tests/benchmarks/bench_egress.py) counts the bytes of the header block and refuses as
  they arrive, before the parser holds or joins them; what follows the headers and is not
  body (chunk extensions, trailers) counts against the same limit;
* ``HeaderGuard``: the app's own check, a sum over the parsed headers before any route
  runs, for servers started otherwise (the dev stack, tests, another ASGI server).

In production the proxy in front should cap headers too (docs/security.md)."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Protocol
else:
    _Protocol = object  # uvicorn's protocol is the next base (capped_httptools), imported when used


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


# Room per chunk of a chunked body for its framing (a size of up to 16 hex digits and two
# CRLFs); anything more (chunk extensions, trailers) counts against the header limit.
CHUNK_FRAMING_BYTES = 24


def head_end(data: bytes) -> int:
    """Where the header block ends in ``data`` (the index just past its empty line), or -1.
    An empty line is LF, optional CR, LF: what the parser accepts as the end."""
    lf_lf, lf_cr_lf = data.find(b"\n\n"), data.find(b"\n\r\n")
    ends = ([lf_lf + 2] if lf_lf >= 0 else []) + ([lf_cr_lf + 3] if lf_cr_lf >= 0 else [])
    return min(ends, default=-1)


class HeaderCap(_Protocol):
    """The part of uvicorn's httptools protocol that refuses a request whose request line
    and headers pass ``limit`` bytes with a 431 and a closed connection, as the bytes arrive.

    httptools itself has no limit, and it joins a long header value chunk by chunk: a
    20 MB header cost ~670 ms of CPU before the app could refuse it. Counting the bytes
    that arrive before the headers are complete costs one search per read.

    Only the header block counts: a read that brings the headers and part of the body
    counts up to the empty line that ends them (a 200 KB body sent with its headers in
    one write was refused as "headers too large"). After the headers, what a read brings
    that is not body (chunk framing past CHUNK_FRAMING_BYTES a chunk, chunk extensions,
    trailers) counts against the same limit, and trailers are dropped: uvicorn would add
    them to the request's headers while the app runs."""

    limit: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False
        self._next_message()

    def _next_message(self) -> None:
        self._in_head = True
        self._started = False  # a byte other than the CR/LF a request may start with
        self._head_bytes = 0
        self._tail = b""  # the head's last bytes, for an empty line split across reads
        self._extra = 0  # bytes after the head that were not body
        self._chunks = 0

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        after_head = len(data)
        if self._in_head:
            after_head = self._count_head(data)
            if self._head_bytes > self.limit:
                self._refuse()
                return
        self._extra += after_head
        super().data_received(data)
        if self._extra > self.limit + CHUNK_FRAMING_BYTES * self._chunks:
            self._refuse()

    def _count_head(self, data: bytes) -> int:
        """Count this read's bytes of the header block; the bytes after it."""
        skipped = 0
        if not self._started:
            rest = data.lstrip(b"\r\n")
            skipped, self._started = len(data) - len(rest), bool(rest)
        seen = self._tail + data[skipped:]
        end = head_end(seen) if self._started else -1
        if end < 0:
            self._head_bytes += len(data)
            self._tail = seen[-3:]
            return 0
        in_head = skipped + end - len(self._tail)
        self._head_bytes += in_head
        return len(data) - in_head

    def _refuse(self) -> None:
        self._refused = True
        # Answer unless a response is under way: in the head, the cycle is the previous
        # request's (its answer may still be going out); after it, this request's.
        cycle = self.cycle
        if cycle is None or (cycle.response_complete if self._in_head else not cycle.response_started):
            body = f"the request's headers must be at most {self.limit} bytes in all".encode()
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8"
                b"\r\nconnection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.transport.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:  # after the head, a trailer: dropped
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_body(self, body: bytes) -> None:
        self._extra -= len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._next_message()  # the next request on this connection


def capped_httptools(limit: int) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with ``HeaderCap`` at ``limit`` bytes."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    return type("CappedHttpToolsProtocol", (HeaderCap, HttpToolsProtocol), {"limit": limit})
