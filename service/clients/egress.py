"""The one egress layer: every request made on someone else's behalf (callbacks to a
backend, input image checks, output downloads) goes through ``Egress``.

Why a layer of its own: checking a URL's host and then letting httpx resolve the name
again to connect is a DNS-rebinding hole (a zero-TTL name answers a public address to
the check and 127.0.0.1 to the connect). Here the name is resolved ONCE, inside the
connection itself (``PinnedBackend.connect_tcp``), every address of the answer is
checked, and the socket is opened to an address that was checked. The URL's host still
goes out as the Host header and the TLS server name, because httpcore takes both from
the URL, not from the socket.

The resolver is an interface (``Resolver``) so tests replace it; the address policy is
one function (``address_problem``). With ``ALLOW_PRIVATE_NETWORKS`` on (development and
tests) the policy lets every address through, but the pinning is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import certifi
import httpcore
import httpx

from service.clients.http_client import http_client, lean_transport
from service.domain.errors import EgressRefused

USER_AGENT = "wavespeed-jobs/0.1"
RESOLVE_TIMEOUT_SECONDS = 5.0
MAX_REDIRECTS = 3

# Cloud metadata names that resolve to link-local addresses anyway; refused by name so
# the answer names the reason even where they would not resolve.
_METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data"}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_TEREDO = ipaddress.ip_network("2001::/32")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, 6to4, NAT64, IPv4-compatible):
    the packet ends up there, so that is the address to judge."""
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip in _SIX_TO_FOUR:
        return ip.sixtofour
    if any(ip in net for net in _NAT64) or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_problem(address: str) -> str | None:
    """None when ``address`` is a global unicast address; otherwise the rule it breaks.
    Raises ValueError when ``address`` is not an IP address literal."""
    ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _TEREDO:
            return "must not point at a Teredo tunnel address"
        if ip in _SITE_LOCAL:
            return "must not point at a site-local address"
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            ip = embedded
    if ip.is_loopback:
        return "must not point at a loopback address"
    if ip.is_link_local:
        return "must not point at a link-local or cloud metadata address"
    if ip.is_multicast:
        return "must not point at a multicast address"
    if ip.is_unspecified:
        return "must not point at the unspecified address"
    if ip.is_private or ip.is_reserved or ip in _CGNAT or not ip.is_global:
        return "must not point at a private or reserved address"
    return None


class Resolver(Protocol):
    """Turns a host name into its addresses (tests replace it)."""

    async def resolve(self, host: str, port: int) -> list[str]: ...


class SystemResolver:
    """The operating system's resolver (getaddrinfo), bounded in time."""

    def __init__(self, timeout: float = RESOLVE_TIMEOUT_SECONDS) -> None:
        self.timeout = timeout

    async def resolve(self, host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), self.timeout)
        except (TimeoutError, OSError, UnicodeError):
            return []
        return list(dict.fromkeys(str(info[4][0]) for info in infos))


def url_shape_problem(url: str) -> str | None:
    """What is wrong with ``url`` before any lookup: scheme, host, port range."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError outside 0-65535
    except ValueError:
        return "must be an http(s) URL with a valid host and a port from 1 to 65535"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http(s) URL with a host"
    if port == 0:
        return "must use a port from 1 to 65535"
    return None


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the lookup done by ``Egress.addresses``: the
    socket goes to an address that was checked, and to nothing else."""

    def __init__(self, egress: Egress, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._egress = egress
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._egress.addresses(host, port)
        last: Exception | None = None
        for address in addresses:  # every one was checked; try them in the resolver's order
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout, OSError) as exc:
                last = exc
        assert last is not None  # addresses() never returns an empty list
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise EgressRefused("unix sockets are not reachable through the egress layer")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class Egress:
    """The HTTP client for requests made on someone else's behalf; opened once in the
    lifespan. ``addresses`` is the one place that decides where a connection may go."""

    def __init__(
        self,
        *,
        allow_private: bool,
        resolver: Resolver | None = None,
        network: httpcore.AsyncNetworkBackend | None = None,
        max_connections: int = 200,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.allow_private = allow_private
        self.resolver: Resolver = resolver or SystemResolver()
        # httpx offers no way to pass a network backend, so the transport's pool is built
        # by lean_transport, with the same TLS defaults (certifi's roots) and ours.
        transport = lean_transport(
            max_connections=max_connections,
            max_keepalive_connections=max(1, max_connections // 4),
            network_backend=PinnedBackend(self, network),
            ssl_context=ssl_context or ssl.create_default_context(cafile=certifi.where()),
        )
        # trust_env=False: an HTTP(S)_PROXY from the environment would connect to the
        # proxy and let it resolve the name, which undoes the pinning.
        self.http = http_client(transport, follow_redirects=False, trust_env=False,
                                headers={"User-Agent": USER_AGENT})

    async def aclose(self) -> None:
        await self.http.aclose()

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses ``host`` may be reached at: resolved once, every one checked.
        Raises EgressRefused naming the rule when any is refused or none is found."""
        host = host.strip("[]").lower()
        if not self.allow_private and host in _METADATA_HOSTS:
            raise EgressRefused("must not point at a cloud metadata address")
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
            found = [host]
        except ValueError:
            found = await self.resolver.resolve(host, port)
        if not found:
            raise EgressRefused("host name does not resolve")
        if not self.allow_private:
            for address in found:
                problem = address_problem(address)
                if problem:
                    # Any bad address refuses the name: a name that answers one public
                    # and one private address is a rebinding attempt, not a choice.
                    raise EgressRefused(problem)
        return found

    async def url_problem(self, url: str) -> str | None:
        """None when ``url`` could be requested now; otherwise the rule it breaks (for a
        422 that names the field). A job's URLs are checked when it is created and
        again, by the connection itself, whenever one is used."""
        problem = url_shape_problem(url)
        if problem or self.allow_private:
            return problem
        parts = urlsplit(url)
        try:
            await self.addresses(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        except EgressRefused as exc:
            return exc.message
        return None

    @contextlib.asynccontextmanager
    async def get_following(
        self,
        url: str,
        *,
        timeout: httpx.Timeout,
        host_problem: Callable[[str], str | None] = lambda host: None,
        max_redirects: int = MAX_REDIRECTS,
    ) -> AsyncIterator[httpx.Response]:
        """GET ``url`` following at most ``max_redirects`` redirects by hand: every hop's
        URL is checked (shape, ``host_problem``) and its connection pinned like the first.
        Yields the final response, streaming; raises EgressRefused for a refused hop."""
        for hop in range(max_redirects + 1):
            where = "" if hop == 0 else f"redirect {hop} refused: "
            problem = url_shape_problem(url)
            if problem is None:
                problem = host_problem((urlsplit(url).hostname or "").lower())
            if problem:
                raise EgressRefused(where + problem)
            request = self.http.build_request("GET", url, timeout=timeout)
            try:
                response = await self.http.send(request, stream=True)
            except EgressRefused as exc:  # the connection refused the address it resolved
                raise EgressRefused(where + exc.message) from None
            location = response.headers.get("location")
            if not (response.is_redirect and location):
                try:
                    yield response
                finally:
                    await response.aclose()
                return
            await response.aclose()
            url = urljoin(url, location)
        raise EgressRefused(f"more than {max_redirects} redirects")
