"""One callback to a backend: the Standard Webhooks headers and one bounded POST.

The endpoint is someone else's server, so every part of the exchange is bounded: connect,
write and read timeouts plus an overall deadline (a server that trickles its answer a
byte at a time cannot hold a delivery slot), no redirects followed (a 3xx is a failed
attempt, not an invitation to post the signed body somewhere else), and at most
``ANSWER_CAP`` bytes of the answer read. Nothing here raises for a bad endpoint: every
outcome comes back as an ``Attempt`` for the deliverer to record.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from service.domain.errors import EgressRefused
from service.domain.signing import standard_signature

# Enough to show a backend's error message in the job's events, small enough that a
# hostile endpoint answering gigabytes costs us nothing.
ANSWER_CAP = 4096
ANSWER_KEPT = 512
USER_AGENT = "wavespeed-jobs-callbacks/0.1"


@dataclass(frozen=True)
class Attempt:
    """What happened when we POSTed one callback."""

    status_code: int | None  # None when no answer came (timeout, refused, reset, DNS)
    latency_ms: int
    error: str | None
    answer: str  # the first bytes of the answer's body, decoded leniently
    retry_after: float | None  # seconds, from a Retry-After header (any status)

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def signed_headers(secrets: str | Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers for ``body``; ``msg_id`` is the delivery's id, the
    same on every retry so a backend can deduplicate on it. With several secrets (the
    owner's new one and, during a rotation's overlap, the previous one) the signature
    header carries one ``v1,…`` entry per secret, space-separated, newest first."""
    if isinstance(secrets, str):
        secrets = [secrets]
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        # Ask for an uncompressed answer: we read only its first bytes anyway, and a
        # compressed one could expand without bound.
        "accept-encoding": "identity",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(standard_signature(s, msg_id, timestamp, body) for s in secrets),
    }


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now``: either delay-seconds or an HTTP-date
    (RFC 9110 §10.2.3). None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - now)


def _describe(exc: BaseException, url: str) -> str:
    """A short, secret-free description of a transport failure. The URL is left out
    (its query string may carry the backend's own token)."""
    kinds: list[tuple[type[BaseException], str]] = [
        (httpx.ConnectTimeout, "connect timeout"),
        (httpx.ReadTimeout, "read timeout"),
        (httpx.WriteTimeout, "write timeout"),
        (httpx.PoolTimeout, "no free connection in time"),
        (httpx.ConnectError, "connection failed"),
        (httpx.RemoteProtocolError, "the endpoint broke the HTTP exchange"),
        (httpx.ReadError, "connection lost while reading the answer"),
        (TimeoutError, "the whole request took too long"),
    ]
    label = next((text for kind, text in kinds if isinstance(exc, kind)), type(exc).__name__)
    detail = str(exc).replace(url, "<callback_url>").replace("\x00", "")[:200]
    return f"{label}: {detail}" if detail else label


async def send(
    http: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], timeout: float
) -> Attempt:
    """POST ``body`` to ``url`` once; never raises for what the endpoint does."""
    started = time.perf_counter()
    status: int | None = None
    retry_after: float | None = None
    answer = bytearray()
    error: str | None = None
    try:
        # The per-phase timeouts bound each wait; this bounds their sum.
        async with asyncio.timeout(timeout * 2 + 1):
            async with http.stream(
                "POST", url, content=body, headers=headers,
                timeout=httpx.Timeout(timeout), follow_redirects=False,
            ) as response:
                status = response.status_code
                retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
                async for chunk in response.aiter_raw():
                    answer += chunk
                    if len(answer) >= ANSWER_CAP:
                        break  # closing the stream drops the rest
    except EgressRefused as exc:
        # The connection itself refused the address it resolved (service/clients/egress.py).
        error = f"callback_url refused at send time: {exc.message}"
    except (httpx.HTTPError, httpx.InvalidURL, TimeoutError, OSError) as exc:
        error = _describe(exc, url)
        if status is not None:
            error = f"answer cut short ({error})"
    latency_ms = round((time.perf_counter() - started) * 1000)
    if error is None and status is not None and not 200 <= status < 300:
        error = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
    return Attempt(
        status_code=status,
        latency_ms=latency_ms,
        error=error,
        # Postgres text and jsonb cannot hold NUL; whatever the endpoint sent must not
        # stop the attempt from being recorded.
        answer=bytes(answer[:ANSWER_KEPT]).decode("utf-8", "replace").replace("\x00", "\ufffd"),
        retry_after=retry_after,
    )
