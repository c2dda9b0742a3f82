"""Real HTTP servers for integration tests: an ASGI app under uvicorn in a thread, and a
webhook catcher that records what it receives.

    with ServerThread(create_simulator_app(config)) as sim:
        httpx.get(sim.url + "/_sim/stats")

    with WebhookCatcher() as catcher:
        ...  # give catcher.url("/hook") to the code under test
        [request] = catcher.wait_for(1)

Each server binds port 0 (the OS picks a free port: no race between "find a free port"
and "bind it") and runs its own event loop in a daemon thread, so synchronous tests can
call it with httpx.Client and async tests with httpx.AsyncClient alike.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devtools.serverthread import ServerThread

R = TypeVar("R")


def wait_for_requests(
    cond: threading.Condition, requests: list[R], count: int, timeout: float,
    predicate: Callable[[R], bool] | None = None,
) -> list[R]:
    """Block on ``cond`` until ``requests`` holds ``count`` matching entries; return the
    matching ones. Raises TimeoutError saying how many arrived, so a failing test
    explains itself. Shared by every recording endpoint the tests run."""
    deadline = time.monotonic() + timeout
    with cond:
        while True:
            matching = [r for r in requests if predicate is None or predicate(r)]
            if len(matching) >= count:
                return matching
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"expected {count} request(s), got {len(matching)} in {timeout} s")
            cond.wait(left)


@dataclass
class CaughtRequest:
    """One request the catcher received; header names are lower-case."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    received_at: float
    answered: int

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookCatcher:
    """A tiny app that records every request to any path and answers ``status``.

    ``statuses`` are answered first, one per request, before falling back to
    ``status`` (e.g. ``catcher.statuses.extend([500, 503])`` to test retries).
    """

    status: int = 200
    statuses: deque[int] = field(default_factory=deque)
    requests: list[CaughtRequest] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _server: ServerThread | None = None

    def app(self) -> Starlette:
        async def catch(request: Request) -> Response:
            body = await request.body()
            with self._cond:
                answered = self.statuses.popleft() if self.statuses else self.status
                self.requests.append(
                    CaughtRequest(
                        method=request.method,
                        path=request.url.path,
                        query=request.url.query,
                        headers={k.lower(): v for k, v in request.headers.items()},
                        body=body,
                        received_at=time.time(),
                        answered=answered,
                    )
                )
                self._cond.notify_all()
            return Response(status_code=answered)

        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        return Starlette(routes=[Route("/{path:path}", catch, methods=methods)])

    def start(self) -> Self:
        self._server = ServerThread(self.app()).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def url(self, path: str = "/hook") -> str:
        if self._server is None:
            raise RuntimeError("the catcher is not running")
        return self._server.url + path

    def clear(self) -> None:
        with self._cond:
            self.requests.clear()
            self.statuses.clear()
            self.status = 200

    def snapshot(self, predicate: Callable[[CaughtRequest], bool] | None = None) -> list[CaughtRequest]:
        with self._cond:
            return [r for r in self.requests if predicate is None or predicate(r)]

    def wait_for(
        self,
        count: int = 1,
        timeout: float = 5.0,
        predicate: Callable[[CaughtRequest], bool] | None = None,
    ) -> list[CaughtRequest]:
        """Block until ``count`` matching requests arrived; return them (all so far).

        Raises TimeoutError saying how many did arrive, so a failing test explains itself.
        """
        return wait_for_requests(self._cond, self.requests, count, timeout, predicate)

    def answer_next(self, statuses: Iterable[int]) -> None:
        with self._cond:
            self.statuses.extend(statuses)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
