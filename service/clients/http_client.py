"""The process's two httpx clients (the egress layer's, and the one for WaveSpeed and S3)
are built here: ``http_client`` gives a client that keeps no cookies, on a
``LeanConnectionPool``.

No cookies: the egress client calls every owner's backends, so a cookie one backend set
would go out with the requests to another's on the same host; and extracting cookies
from each answer (urllib's Request and CookieJar machinery) cost ~2 % of ``serve``'s CPU
in a burst. httpx has no switch for it, so ``_CookielessClient`` answers an empty,
inert cookie store.

The pool, and why not httpcore's own as it is: it re-plans the whole pool twice per
request (when the request arrives and when its response closes), and each time asks
every idle connection ``has_expired()``, which for an idle HTTP/1.1 connection is a readability
poll of its socket through anyio's typed attributes (a dict of callables built per
call). With the tens of keep-alive connections a busy storer and deliverer hold, that
was 7.8 % of ``serve``'s CPU in a 400-job burst (docs/benchmarks.md, a job's CPU by
stage), more than the requests' own HTTP work. It also closed an idle connection
whenever the pool held more connections in all than ``max_keepalive_connections``.

``LeanConnectionPool`` keeps httpcore's rules and changes when they are checked:
- the connection a request is about to reuse is polled, as before: a socket the server
  closed is never handed a request;
- the other idle connections are swept for expiry (keep-alive timeout, server gone) at
  most once per ``sweep_seconds``, not on every call;
- at most ``max_keepalive_connections`` idle connections are kept, counted once a call.

It overrides one method of httpcore's pool (``_assign_requests_to_connections``);
pyproject pins httpcore to the 1.0 series, whose pool it was written against, and
tests/integration/test_http_client.py proves the rules against a real server.
"""

from __future__ import annotations

import ssl
import time
from typing import Any, NoReturn

import httpcore
import httpx

SWEEP_SECONDS = 1.0
# Below the 5 s after which uvicorn, Node.js and many other servers close an idle
# connection: at equal timeouts a request can go out on a connection in the moment the
# server closes it (later still on a busy server), and a submit whose answer is lost
# that way waits for the reconciler.
KEEPALIVE_EXPIRY_SECONDS = 4.0


class LeanConnectionPool(httpcore.AsyncConnectionPool):
    sweep_seconds = SWEEP_SECONDS
    _next_sweep = 0.0

    def _assign_requests_to_connections(self) -> list[Any]:
        # Runs under the pool's lock, as httpcore's own; the returned connections are
        # closed by the caller outside it.
        closing: list[Any] = []
        now = time.monotonic()
        sweep = now >= self._next_sweep
        if sweep:
            self._next_sweep = now + self.sweep_seconds
        kept: list[Any] = []
        idle = 0
        for connection in self._connections:
            if connection.is_closed():
                continue
            if connection.is_idle():
                if idle >= self._max_keepalive_connections or (sweep and connection.has_expired()):
                    closing.append(connection)
                    continue
                idle += 1
            kept.append(connection)
        self._connections[:] = kept

        for pool_request in self._requests:
            if not pool_request.is_queued():
                continue
            origin = pool_request.request.url.origin
            chosen = self._reusable(origin, closing)
            if chosen is None:
                if len(self._connections) >= self._max_connections:
                    idle_connection = next((c for c in self._connections if c.is_idle()), None)
                    if idle_connection is None:
                        continue  # stays queued until a connection frees up
                    self._connections.remove(idle_connection)
                    closing.append(idle_connection)
                chosen = self.create_connection(origin)
                self._connections.append(chosen)
            pool_request.assign_to_connection(chosen)
        return closing

    def _reusable(self, origin: httpcore.Origin, closing: list[Any]) -> Any | None:
        """The first connection that can take a request to ``origin`` now; an idle one is
        polled first, and closed instead when its keep-alive ran out or the server
        hung up."""
        for connection in list(self._connections):
            if not (connection.can_handle_request(origin) and connection.is_available()):
                continue
            if connection.is_idle() and connection.has_expired():
                self._connections.remove(connection)
                closing.append(connection)
                continue
            return connection
        return None


def lean_transport(
    *,
    max_connections: int,
    max_keepalive_connections: int,
    network_backend: httpcore.AsyncNetworkBackend | None = None,
    ssl_context: ssl.SSLContext | None = None,
    keepalive_expiry: float = KEEPALIVE_EXPIRY_SECONDS,
) -> httpx.AsyncHTTPTransport:
    """An httpx transport on a ``LeanConnectionPool``. httpx takes no pool class, so the
    transport's pool is replaced; the transport keeps httpx's mapping of httpcore's
    errors to its own. ``ssl_context`` defaults to httpx's (certifi's roots)."""
    transport = httpx.AsyncHTTPTransport(retries=0)
    transport._pool = LeanConnectionPool(
        ssl_context=ssl_context or httpx.create_ssl_context(),
        max_connections=max_connections,
        max_keepalive_connections=max_keepalive_connections,
        keepalive_expiry=keepalive_expiry,
        network_backend=network_backend,
    )
    return transport


class _NoCookies(httpx.Cookies):
    """Always empty: nothing an answer sets is kept, so nothing is ever sent."""

    def extract_cookies(self, response: httpx.Response) -> None:
        pass

    def set(self, name: str, value: str, domain: str = "", path: str = "/") -> NoReturn:
        raise TypeError("this client keeps no cookies")


class _CookielessClient(httpx.AsyncClient):
    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        if cookies:
            raise TypeError("this client keeps no cookies")


_NO_COOKIES = _NoCookies()


def http_client(transport: httpx.AsyncHTTPTransport, **options: Any) -> httpx.AsyncClient:
    """An httpx client on ``transport`` that keeps no cookies; ``options`` as httpx's."""
    return _CookielessClient(transport=transport, **options)
