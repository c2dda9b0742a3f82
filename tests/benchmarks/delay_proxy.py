"""A loopback TCP proxy that holds every chunk it forwards for ``delay`` seconds, each
direction in order: a database a network hop away (a managed Postgres), on one machine
whose kernel has no ``tc netem``. Used by ``bench_pipeline --db-delay-ms``.

``delayed`` runs it as a process of its own (``python -m tests.benchmarks.delay_proxy
HOST PORT DELAY_MS``, which prints the port it bound): inside the benchmark's process its
timers would wait for the GIL behind the load generator's threads and the callback
catcher, so a busy benchmark would add its own stalls to every round trip, and its CPU
would hide in the benchmark's. ``DelayProxy`` binds 127.0.0.1 on a free port, runs its
own event loop in a daemon thread, and stops with ``close()`` (or with the process).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

from tests.benchmarks import procs


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float,
                counts: list[int]) -> None:
    """Forward what ``reader`` gives to ``writer``, each chunk ``delay`` after it arrived;
    ``counts[0]`` counts the chunks."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        while chunk := await reader.read(65536):
            counts[0] += 1
            queue.put_nowait((time.monotonic() + delay, chunk))
        queue.put_nowait((0.0, b""))

    reading = asyncio.create_task(read())
    try:
        while True:
            due, chunk = await queue.get()
            if not chunk:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(chunk)
            await writer.drain()
    finally:
        reading.cancel()
        with contextlib.suppress(Exception):
            writer.close()


class DelayProxy:
    def __init__(self, target_host: str, target_port: int, delay: float) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="db-delay-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        # Chunks the clients sent (each a write by the client: a statement, or a batch of
        # messages sent together, so about one round trip each) and the server sent back.
        self.up = [0]
        self.down = [0]

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        with contextlib.suppress(asyncio.CancelledError):  # close() cancels what is still open
            await asyncio.gather(_pipe(client_r, server_w, self.delay, self.up),
                                 _pipe(server_r, client_w, self.delay, self.down), return_exceptions=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def start(self) -> DelayProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the delay proxy did not start")
        return self

    def close(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class Running:
    """A proxy process: its ``url`` (the database's, through it), ``pid``, and ``counts()``."""

    def __init__(self, url: str, child: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.pid = child.pid
        self._child = child

    def counts(self) -> tuple[int, int]:
        """(chunks the clients sent, chunks sent back) so far: SIGUSR1 makes it print them."""
        assert self._child.stdout is not None
        os.kill(self.pid, signal.SIGUSR1)
        up, down = self._child.stdout.readline().split()
        return int(up), int(down)


@contextlib.contextmanager
def delayed(url: str, delay_ms: float) -> Iterator[Running]:
    """A proxy process holding each chunk ``delay_ms`` each way, in front of ``url`` (a
    Postgres URL). Its CPU is the benchmark's, not the service's."""
    parts = urlsplit(url)
    child = procs.spawn([procs.PYTHON, "-m", "tests.benchmarks.delay_proxy", parts.hostname or "127.0.0.1",
                         str(parts.port or 5432), str(delay_ms)], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        line = child.stdout.readline().decode().strip()
        if not line.isdigit():
            raise RuntimeError(f"the delay proxy did not start (it said {line!r})")
        netloc = (parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else "") + f"127.0.0.1:{line}"
        yield Running(urlunsplit(parts._replace(netloc=netloc)), child)
    finally:
        procs.stop(child)


@contextlib.contextmanager
def delayed_url(url: str, delay_ms: float) -> Iterator[str]:
    """``url`` rewritten to pass through a proxy process holding each chunk ``delay_ms``."""
    with delayed(url, delay_ms) as proxy:
        yield proxy.url


def main(argv: Sequence[str]) -> int:
    """HOST PORT DELAY_MS: proxy to HOST:PORT until stopped; the first line out is our
    port, and each SIGUSR1 prints the chunks counted so far each way."""
    host, port, delay_ms = argv[0], int(argv[1]), float(argv[2])
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # before the proxy's thread inherits the mask
    proxy = DelayProxy(host, port, delay_ms / 1000).start()
    print(proxy.port, flush=True)
    while True:
        signal.sigwait({signal.SIGUSR1})
        print(proxy.up[0], proxy.down[0], flush=True)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
