"""The provider's v3 REST API over one shared httpx.AsyncClient.

The one subtle part is the submit: it is not idempotent upstream, so this client tells
apart "the request never left" (safe to send again) from "the request may have arrived
but we have no answer" (SubmitOutcomeUnknown: never send again, recover instead).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from service.domain.errors import ProviderError, SubmitOutcomeUnknown
from service.observability import metrics

# Errors raised before any byte of the request could reach the provider.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    if isinstance(body, dict):
        for key in ("message", "error", "detail"):
            if isinstance(body.get(key), str) and body[key]:
                return f"HTTP {response.status_code}: {body[key]}"
    return f"HTTP {response.status_code}"


class WaveSpeedClient:
    def __init__(self, http: httpx.AsyncClient, base_url: str, api_key: str, timeout: float = 30.0) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._http.request(
                method, self._base + path, headers=self._headers, timeout=self._timeout, **kwargs
            )
        except httpx.HTTPError as exc:
            metrics.provider_failure(path, metrics.transport_code(exc))
            raise ProviderError(f"{type(exc).__name__} talking to the provider") from exc
        return self._envelope(response)

    def _envelope(self, response: httpx.Response) -> dict[str, Any]:
        path = response.request.url.path
        metrics.provider_answer(path, response.status_code, response.elapsed.total_seconds())
        if response.status_code != 200:
            raise ProviderError(
                _message(response), http_status=response.status_code, retry_after=_retry_after(response)
            )
        try:
            body = response.json()
        except ValueError:
            metrics.provider_failure(path, "invalid_answer")
            raise ProviderError("the provider answered with something that is not JSON", http_status=200) from None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            metrics.provider_failure(path, "invalid_answer")
            raise ProviderError("the provider's answer has no data object", http_status=200)
        return data

    async def submit(self, model: str, body: dict[str, Any], webhook_url: str,
                     traceparent: str | None = None) -> dict[str, Any]:
        """POST a task. Raises ProviderError (safe to retry if not is_permanent) or
        SubmitOutcomeUnknown (the request went out; the task may exist). ``traceparent``:
        the job's trace, sent along (W3C Trace Context)."""
        url = f"{self._base}/api/v3/{model}?webhook={quote(webhook_url, safe='')}"
        headers = {**self._headers, "traceparent": traceparent} if traceparent else self._headers
        try:
            response = await self._http.post(url, json=body, headers=headers, timeout=self._timeout)
        except _NOT_SENT as exc:
            metrics.provider_failure(f"/api/v3/{model}", metrics.transport_code(exc))
            raise ProviderError(f"could not reach the provider ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            metrics.provider_failure(f"/api/v3/{model}", metrics.transport_code(exc))
            raise SubmitOutcomeUnknown(f"submit sent but no answer ({type(exc).__name__})") from exc
        data = self._envelope(response)
        if not isinstance(data.get("id"), str):
            raise SubmitOutcomeUnknown("the provider accepted the submit but its answer has no task id")
        return data

    async def result(self, task_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/api/v3/predictions/{quote(task_id, safe='')}/result")

    async def webhook_secret(self) -> str:
        data = await self._call("GET", "/api/v3/webhook/secret")
        secret = data.get("secret") or data.get("webhook_secret")
        if not isinstance(secret, str) or not secret:
            raise ProviderError("the provider's webhook secret answer has no secret")
        return secret

    async def predictions(self, *, page: int = 1, page_size: int = 100, **filters: Any) -> dict[str, Any]:
        body = {"page": page, "page_size": page_size, **{k: v for k, v in filters.items() if v is not None}}
        return await self._call("POST", "/api/v3/predictions", json=body)
