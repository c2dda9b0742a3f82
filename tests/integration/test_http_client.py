"""The process's HTTP clients keep no cookies, and their connection pool keeps httpcore's
rules (reuse, expiry, the keep-alive and connection limits) while checking idle
connections less often: proved against real HTTP/1.1 servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpcore
import httpx
import pytest

from service.clients.http_client import LeanConnectionPool, _NoCookies, http_client, lean_transport

REQUEST_TIMEOUT = httpx.Timeout(5.0)


class CountingServer:
    """Answers every request ``ok`` after ``hold`` seconds, keeping the connection open
    unless ``hang_up`` (then it closes it after answering, without saying so, as a server
    whose idle timeout ran out would)."""

    def __init__(self, *, hold: float = 0.0, hang_up: bool = False, answer_headers: bytes = b"") -> None:
        self.hold = hold
        self.hang_up = hang_up
        self.answer_headers = answer_headers
        self.heads: list[str] = []
        self.accepted = 0
        self.open = 0
        self.most_open = 0
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                self.heads.append(head.decode().lower())
                await asyncio.sleep(self.hold)
                writer.write(b"HTTP/1.1 200 OK\r\n" + self.answer_headers + b"Content-Length: 2\r\n\r\nok")
                await writer.drain()
                if self.hang_up:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[CountingServer]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        try:
            yield self
        finally:
            server.close()


def _client(**limits: float) -> tuple[httpx.AsyncClient, LeanConnectionPool]:
    transport = lean_transport(
        max_connections=int(limits.get("max_connections", 10)),
        max_keepalive_connections=int(limits.get("max_keepalive_connections", 10)),
        keepalive_expiry=limits.get("keepalive_expiry", 5.0),
    )
    pool = transport._pool
    assert isinstance(pool, LeanConnectionPool)
    return http_client(transport, timeout=REQUEST_TIMEOUT), pool


async def test_sequential_requests_reuse_one_keep_alive_connection() -> None:
    async with CountingServer().running() as server:
        client, _ = _client()
        async with client:
            for _ in range(20):
                assert (await client.get(server.url)).text == "ok"
        assert server.accepted == 1


async def test_a_connection_the_server_hung_up_on_is_never_handed_a_request() -> None:
    async with CountingServer(hang_up=True).running() as server:
        client, pool = _client()
        pool.sweep_seconds = 3600  # only the check of the connection about to be reused runs
        async with client:
            for _ in range(10):
                assert (await client.get(server.url)).text == "ok"
                await asyncio.sleep(0.02)  # the server's FIN arrives
        assert server.accepted == 10


async def test_a_connection_whose_keep_alive_ran_out_is_not_reused() -> None:
    async with CountingServer().running() as server:
        client, pool = _client(keepalive_expiry=0.1)
        pool.sweep_seconds = 3600
        async with client:
            await client.get(server.url)
            await asyncio.sleep(0.25)
            await client.get(server.url)
        assert server.accepted == 2


async def test_the_sweep_closes_expired_idle_connections_of_other_origins() -> None:
    async with CountingServer().running() as first, CountingServer().running() as second:
        client, pool = _client(keepalive_expiry=0.1)
        pool.sweep_seconds = 0.05
        async with client:
            await client.get(first.url)
            await asyncio.sleep(0.25)
            await client.get(second.url)
            origins = {c._origin.port for c in pool.connections}  # type: ignore[attr-defined]
            assert origins == {int(second.url.rsplit(":", 1)[1].rstrip("/"))}
            await asyncio.sleep(0.05)
            assert first.open == 0  # closed, not only forgotten


async def test_no_more_idle_connections_are_kept_than_the_keep_alive_limit() -> None:
    async with CountingServer(hold=0.05).running() as server:
        client, pool = _client(max_connections=10, max_keepalive_connections=2)
        async with client:
            await asyncio.gather(*(client.get(server.url) for _ in range(8)))
            assert server.most_open == 8
            assert len(pool.connections) <= 2
            # the kept ones serve the next burst; only the rest are new
            before = server.accepted
            await asyncio.gather(*(client.get(server.url) for _ in range(8)))
            assert server.accepted - before == 6


async def test_requests_past_the_connection_limit_wait_for_a_free_connection() -> None:
    async with CountingServer(hold=0.05).running() as server:
        client, _ = _client(max_connections=3, max_keepalive_connections=3)
        async with client:
            answers = await asyncio.gather(*(client.get(server.url) for _ in range(10)))
        assert [a.text for a in answers] == ["ok"] * 10
        assert server.most_open == 3
        assert server.accepted == 3


async def test_a_full_pool_closes_an_idle_connection_to_reach_a_new_origin() -> None:
    async with CountingServer().running() as first, CountingServer().running() as second:
        client, pool = _client(max_connections=1, max_keepalive_connections=1)
        async with client:
            await client.get(first.url)
            assert (await client.get(second.url)).text == "ok"
            assert len(pool.connections) == 1
        assert (first.accepted, second.accepted) == (1, 1)


def test_the_overridden_method_is_still_httpcores_to_override() -> None:
    # An httpcore that renamed it would leave the override dead and its stock pool in use.
    assert "_assign_requests_to_connections" in vars(httpcore.AsyncConnectionPool)
    stock = httpcore.AsyncConnectionPool._assign_requests_to_connections
    assert LeanConnectionPool._assign_requests_to_connections is not stock


@pytest.mark.parametrize("which", ["egress", "app"])
async def test_both_of_the_process_clients_use_the_lean_pool_and_keep_no_cookies(which: str) -> None:
    from service.clients.egress import Egress

    if which == "egress":
        egress = Egress(allow_private=True)
        try:
            assert isinstance(egress.http._transport._pool, LeanConnectionPool)  # type: ignore[attr-defined]
            assert isinstance(egress.http.cookies, _NoCookies)
        finally:
            await egress.aclose()
    else:
        from service.app import provider_http_client

        async with provider_http_client() as http:
            assert isinstance(http._transport._pool, LeanConnectionPool)  # type: ignore[attr-defined]
            assert isinstance(http.cookies, _NoCookies)


async def test_a_cookie_one_backend_sets_never_goes_out_again() -> None:
    """One owner's backend must not hand a cookie to the requests made to another's on
    the same host."""
    setting = CountingServer(answer_headers=b"Set-Cookie: session=owner-a-secret; Path=/\r\n")
    async with setting.running() as server:
        client, _ = _client()
        async with client:
            first = await client.get(server.url)
            assert first.headers["set-cookie"].startswith("session=")  # the answer itself is untouched
            await client.get(server.url + "other-owner/callback")
            assert len(client.cookies) == 0
            with pytest.raises(TypeError):
                client.cookies.set("session", "x")
    assert all("cookie" not in head for head in server.heads)
    assert len(server.heads) == 2


def test_an_idle_connection_is_given_up_before_a_uvicorn_server_would_close_it() -> None:
    """At equal keep-alive timeouts a request can go out on a connection in the moment the
    server closes it: a submit whose answer is lost that way waits for the reconciler."""
    import uvicorn

    pool = lean_transport(max_connections=1, max_keepalive_connections=1)._pool
    assert pool._keepalive_expiry is not None
    assert pool._keepalive_expiry < uvicorn.Config(app="service.app:unused").timeout_keep_alive
