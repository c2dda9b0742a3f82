"""Signed webhooks to the ``?webhook=`` URL of a task, with every delivery fault.

The body is the prediction object without the envelope, signed per the provider's "v3"
scheme (devtools/simulator/signing.py, written from the document). Faults: drop, delay, duplicates with
the same webhook-id, a stale ``processing`` event after the final one, a wrong key.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from devtools.simulator.signing import sign
from devtools.simulator.state import PROCESSING, Delivery, SimTask, SimulatorState, new_id

# What a "bad signature" is signed with: a well-formed secret that is not the account's.
WRONG_SECRET = "whsec_not_the_account_secret"


def encode(prediction: dict[str, Any]) -> bytes:
    return json.dumps(prediction, separators=(",", ":")).encode("utf-8")


def signed_headers(secret: str, webhook_id: str, body: bytes, now: float) -> dict[str, str]:
    timestamp = str(int(now))
    return {
        "content-type": "application/json",
        "user-agent": "wavespeed-simulator",
        "webhook-id": webhook_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": sign(secret, webhook_id, timestamp, body),
    }


async def deliver_final(sim: SimulatorState, task: SimTask) -> None:
    """Send the terminal event of ``task`` (and its configured extra, stale copies)."""
    config = sim.config
    url = task.webhook_url
    if url is None:
        return
    if config.webhook_delay > 0:
        await asyncio.sleep(config.webhook_delay)
    if sim.dice.hit(config.webhook_drop_rate):
        task.webhook_dropped = True
        sim.stats.webhooks_dropped += 1
        return
    bad_signature = sim.dice.hit(config.webhook_bad_signature_rate)
    if bad_signature:
        sim.stats.webhooks_bad_signature += 1
    body = encode(task.prediction())
    webhook_id = "evt_" + new_id()
    await _send(sim, task, url, webhook_id, body, "final", task.status, bad_signature)
    # Duplicates carry the same webhook-id: a receiver must deduplicate on it.
    for _ in range(config.webhook_duplicate_count):
        await _send(sim, task, url, webhook_id, body, "duplicate", task.status, bad_signature)
    if config.webhook_out_of_order:
        # A stale event arriving last, under its own id: a receiver must not go backwards.
        stale = encode(task.prediction(status=PROCESSING))
        await _send(sim, task, url, "evt_" + new_id(), stale, "stale", PROCESSING, bad_signature)


async def _send(
    sim: SimulatorState,
    task: SimTask,
    url: str,
    webhook_id: str,
    body: bytes,
    kind: str,
    status: str,
    bad_signature: bool,
) -> None:
    """POST one event, retrying connection errors and 5xx with the same webhook-id."""
    config = sim.config
    secret = WRONG_SECRET if bad_signature else config.webhook_secret
    for attempt in range(1, config.webhook_retries + 2):
        delivery = Delivery(webhook_id, kind, status, attempt, bad_signature=bad_signature, sent_at=time.time())
        task.deliveries.append(delivery)
        sim.stats.webhooks_sent += 1
        # Re-signed per attempt with a fresh timestamp, as a retrying sender would.
        headers = signed_headers(secret, webhook_id, body, time.time())
        try:
            response = await _post(sim, url, body, headers, config.webhook_timeout)
        except httpx.HTTPError as exc:
            delivery.error = f"{type(exc).__name__}: {exc}"
        else:
            delivery.http_status = response.status_code
            if response.status_code < 500:
                if response.is_success:
                    sim.stats.webhooks_delivered += 1
                else:
                    sim.stats.webhooks_failed += 1
                return
        if attempt <= config.webhook_retries:
            await asyncio.sleep(config.webhook_retry_delay * attempt)
    sim.stats.webhooks_failed += 1


async def _post(
    sim: SimulatorState, url: str, body: bytes, headers: dict[str, str], timeout: float
) -> httpx.Response:
    if sim.client is not None:
        return await sim.client.post(url, content=body, headers=headers, timeout=timeout)
    # Only when the app runs without its lifespan (e.g. a bare ASGI transport in a test).
    async with httpx.AsyncClient() as client:
        return await client.post(url, content=body, headers=headers, timeout=timeout)
