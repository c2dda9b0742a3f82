"""A small HTTP/1.1 load generator on raw asyncio protocols (uvloop), for pre-built
requests: open loop at a fixed rate, or closed loop as fast as the connections go.

Why not httpx: at thousands of requests a second on a shared 2-core machine, a client
library's per-request cost would be measured instead of the service. This one writes
pre-built bytes and parses only the status line and Content-Length.

In open loop, latency is measured from the moment a request was *due*, not from when a
connection became free, so a stalled server shows up in the tail instead of hiding in
the generator (the "coordinated omission" problem). Service time (write to answer) is
reported beside it.

``python -m tests.benchmarks.loadgen ok-server PORT`` serves a fixed 200 answer: run a
generator against it to measure the generator's own ceiling on this machine.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

OK_BODY = b'{"received":true,"outcome":"advanced"}'
OK_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(OK_BODY), OK_BODY)


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (NaN when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _head_length(head: bytes, default: int | None = None) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    if default is not None:
        return default
    raise ValueError("answer without Content-Length (chunked answers are not supported here)")


class _Client(asyncio.Protocol):
    """One keep-alive connection, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence the cast.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end])
        total = end + 4 + _head_length(head)
        if len(self.buffer) < total:
            return
        del self.buffer[:total]
        self.waiter.set_result(int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed before the answer"))

    async def send(self, request: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


@dataclass
class LoadResult:
    """What happened to each request, by its index in the request list."""

    n: int
    status: list[int] = field(default_factory=list)  # 0 = never answered, -1 = connection error
    due: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)
    issued: int = 0
    elapsed: float = 0.0

    def __post_init__(self) -> None:
        self.status = [0] * self.n
        self.due = [0.0] * self.n
        self.sent = [0.0] * self.n
        self.done = [0.0] * self.n

    @property
    def answered(self) -> list[int]:
        return [i for i in range(self.issued) if self.status[i] > 0]

    def accepted(self) -> list[int]:
        return [i for i in range(self.issued) if 200 <= self.status[i] < 300]

    def figures(self) -> dict[str, float]:
        answered = self.answered
        latency = sorted(self.done[i] - self.due[i] for i in answered)
        service = sorted(self.done[i] - self.sent[i] for i in answered)
        ok = len(self.accepted())
        return {
            "issued": self.issued,
            "answered": len(answered),
            "ok": ok,
            "errors": self.issued - ok,
            "rps": len(answered) / self.elapsed if self.elapsed else math.nan,
            "p50_ms": percentile(latency, 50) * 1000,
            "p95_ms": percentile(latency, 95) * 1000,
            "p99_ms": percentile(latency, 99) * 1000,
            "max_ms": (latency[-1] * 1000) if latency else math.nan,
            "service_p50_ms": percentile(service, 50) * 1000,
            "service_p99_ms": percentile(service, 99) * 1000,
        }

    def timeline(self, step: float = 1.0) -> list[tuple[float, int, float]]:
        """(second, answers, p99 ms) per ``step`` of the run, by due time: shows whether a
        tail is steady or a few stalls."""
        buckets: dict[int, list[float]] = {}
        start = min((self.due[i] for i in self.answered), default=0.0)
        for i in self.answered:
            buckets.setdefault(int((self.due[i] - start) / step), []).append(self.done[i] - self.due[i])
        return [(k * step, len(v), percentile(sorted(v), 99) * 1000) for k, v in sorted(buckets.items())]




async def drive(host: str, port: int, requests: Sequence[bytes], *, connections: int, duration: float,
                rate: float = 0.0, drain_timeout: float = 10.0) -> LoadResult:
    """Send ``requests`` in order for ``duration`` seconds (or until they run out).

    rate > 0: open loop, request i is due at start + i/rate. rate == 0: closed loop, each
    connection sends its next request as soon as the previous one is answered.
    """
    loop = asyncio.get_running_loop()
    result = LoadResult(len(requests))
    clients: list[_Client] = []
    for _ in range(connections):
        _, proto = await loop.create_connection(_Client, host, port)
        clients.append(proto)
    idle: asyncio.Queue[_Client] = asyncio.Queue()
    for client in clients:
        idle.put_nowait(client)

    async def one(client: _Client, i: int) -> _Client:
        result.sent[i] = time.perf_counter()
        try:
            if client.closed:
                _, client = await loop.create_connection(_Client, host, port)
                clients.append(client)
            result.status[i] = await client.send(requests[i])
        except (ConnectionError, OSError):
            result.status[i] = -1
        result.done[i] = time.perf_counter()
        return client

    start = time.perf_counter()
    end = start + duration
    pending: set[asyncio.Task[None]] = set()
    if rate > 0:
        async def open_one(client: _Client, i: int) -> None:
            idle.put_nowait(await one(client, i))

        for i in range(len(requests)):
            due = start + i / rate
            if due >= end:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            client = await idle.get()
            result.due[i] = due
            result.issued = i + 1
            task = asyncio.ensure_future(open_one(client, i))
            pending.add(task)
            task.add_done_callback(pending.discard)
    else:
        counter = iter(range(len(requests)))

        async def closed_worker(client: _Client) -> None:
            for i in counter:
                now = time.perf_counter()
                if now >= end:
                    return
                result.due[i] = now
                result.issued = max(result.issued, i + 1)
                client = await one(client, i)

        pending = {asyncio.ensure_future(closed_worker(c)) for c in clients}
    if pending:
        await asyncio.wait(pending, timeout=max(0.0, end - time.perf_counter()) + drain_timeout)
    for task in pending:
        task.cancel()
    result.elapsed = time.perf_counter() - start
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    return result


def run(host: str, port: int, requests: Sequence[bytes], **options: float) -> LoadResult:
    """``drive`` on a fresh uvloop event loop (plain asyncio if uvloop is missing)."""
    try:
        import uvloop

        return uvloop.run(drive(host, port, requests, **options))  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(drive(host, port, requests, **options))  # type: ignore[arg-type]


class _OkServer(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence the cast.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            total = end + 4 + _head_length(bytes(self.buffer[:end]), default=0)
            if len(self.buffer) < total:
                return
            del self.buffer[:total]
            assert self.transport is not None
            self.transport.write(OK_ANSWER)


async def _ok_server(port: int, lifetime: float) -> None:
    server = await asyncio.get_running_loop().create_server(_OkServer, "127.0.0.1", port)
    async with server:
        await asyncio.sleep(lifetime)  # stops by itself even if nobody stops it


def main(argv: Sequence[str]) -> int:
    if len(argv) >= 2 and argv[0] == "ok-server":
        import uvloop

        lifetime = float(argv[2]) if len(argv) > 2 else 300.0
        uvloop.run(_ok_server(int(argv[1]), lifetime))
        return 0
    print("usage: python -m tests.benchmarks.loadgen ok-server PORT [LIFETIME_S]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
