"""SSRF guard: URLs we fetch or post to on a user's behalf must point at the public
internet unless ALLOW_PRIVATE_NETWORKS is on (development and tests)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

# Cloud metadata endpoints that are not otherwise private (AWS/GCP/Azure use
# 169.254.169.254, which is link-local; these cover the rest).
_METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data"}
_EXTRA_BLOCKED = [ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("fd00:ec2::254/128")]


def address_problem(address: str) -> str | None:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "must not point at a loopback address"
    if ip.is_link_local:
        return "must not point at a link-local or cloud metadata address"
    if ip.is_multicast:
        return "must not point at a multicast address"
    if ip.is_private or ip.is_reserved or ip.is_unspecified or any(ip in n for n in _EXTRA_BLOCKED):
        return "must not point at a private or reserved address"
    return None


async def check_public_url(url: str) -> str | None:
    """None when ``url`` is an http(s) URL whose host resolves only to public addresses;
    otherwise the rule it breaks (for a 422 that names the field)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http(s) URL with a host"
    host = parts.hostname.lower()
    if host in _METADATA_HOSTS:
        return "must not point at a cloud metadata address"
    try:
        return address_problem(host)
    except ValueError:
        pass  # a name, not a literal address: resolve it
    try:
        infos = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM), timeout=5
        )
    except (TimeoutError, OSError):
        return "host name does not resolve"
    for info in infos:
        problem = address_problem(str(info[4][0]))
        if problem:
            return problem
    return None
