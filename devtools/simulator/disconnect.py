"""Waits inside a request (a hung submit, a sync-mode hold, a paced download) end when
the client hangs up, or they run on for nobody and hold up the server's shutdown.

The product has its own copy (service/api/plumbing/disconnect.py): devtools imports nothing from
service, so the simulator stays a separate reading of the provider's document."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

T = TypeVar("T")


async def until_disconnect(receive: Receive) -> None:
    """Returns when the client disconnects. Call only once the body has been read:
    after that, the only message ``receive`` can still deliver is the disconnect."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> tuple[bool, T | None]:
    """Await ``work`` unless the client goes away first: (finished, result)."""
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnect(receive))
    try:
        await asyncio.wait({work_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work_task, watcher):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    if work_task.done() and not work_task.cancelled():
        return True, work_task.result()
    return False, None
