"""HTTP answers of the simulator: the provider's envelope, and bodies that are slow,
throttled or cut off on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from devtools.simulator.disconnect import until_disconnect

T = TypeVar("T")


class ConnectionCut(Exception):
    """Raised on purpose to make uvicorn drop a connection mid-answer (a lost answer or a
    broken download); ASGI has no other way to abort a response that has started."""


class QuietCuts(logging.Filter):
    """Keeps uvicorn from logging a traceback for every deliberate ``ConnectionCut``."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ConnectionCut)


QUIET_CUTS = QuietCuts()


def envelope(data: Any, code: int = 200, message: str = "success") -> dict[str, Any]:
    return {"code": code, "message": message, "data": data}


def ok(data: Any) -> JSONResponse:
    return JSONResponse(envelope(data))


def error(code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Errors use the same envelope as successes, with ``data`` null."""
    return JSONResponse(envelope(None, code, message), status_code=code, headers=headers)




class PacedResponse(Response):
    """A body streamed in chunks with a declared Content-Length, optionally throttled to
    ``bytes_per_second`` and optionally cut after ``cut_at`` bytes (the client then sees
    a connection closed before the declared length, like a broken CDN download).

    It stops early when the client disconnects: uvicorn silently ignores writes to a
    closed connection, so without this a 100 MB blob would still be generated in full.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        length: int,
        media_type: str,
        status_code: int = 200,
        bytes_per_second: int = 0,
        cut_at: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(content=None, status_code=status_code, media_type=media_type, headers=headers)
        self.headers["content-length"] = str(length)
        self.chunks = chunks
        self.bytes_per_second = bytes_per_second
        self.cut_at = cut_at

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        disconnected = asyncio.Event()

        async def watch() -> None:
            await until_disconnect(receive)
            disconnected.set()

        watcher = asyncio.ensure_future(watch())
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            if scope.get("method") == "HEAD":
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await self._stream(send, disconnected)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _stream(self, send: Send, disconnected: asyncio.Event) -> None:
        started = time.monotonic()
        sent = 0
        async for chunk in self.chunks:
            if disconnected.is_set():
                return
            if self.cut_at is not None and sent + len(chunk) >= self.cut_at:
                await send(
                    {"type": "http.response.body", "body": chunk[: self.cut_at - sent], "more_body": True}
                )
                raise ConnectionCut(f"cut after {self.cut_at} bytes on purpose")
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent += len(chunk)
            # uvicorn's send returns without suspending once the client is gone (it drops
            # the write), so without a yield here the disconnect watcher never ran and a
            # hung-up 1 GiB blob was generated in full, holding the event loop for seconds.
            await asyncio.sleep(0)
            if self.bytes_per_second > 0:
                # Pace against the start time, not per chunk, so sleeps do not drift.
                ahead = started + sent / self.bytes_per_second - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        if self.cut_at is not None:
            raise ConnectionCut("cut at the end of the body on purpose")
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def chunks_of(data: bytes, chunk_size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), chunk_size):
        yield data[start : start + chunk_size]


def chunk_size_for(bytes_per_second: int, default: int = 64 * 1024) -> int:
    """Small chunks when throttled, so the pace is smooth (about ten writes a second)."""
    if bytes_per_second <= 0:
        return default
    return max(1, min(default, bytes_per_second // 10))
