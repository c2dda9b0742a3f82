"""What a Runner needs of a process, reduced for unit tests: settings, a worker id, a
wake-up source that is only a poll timer, and the pacer."""

from __future__ import annotations

import asyncio
import types
from typing import Any

from service.domain.pacing import Pacer


class NoNews:
    """The runner's wake-up source reduced to a poll timer."""

    def kick(self, *_duties: str) -> None:
        pass

    async def wait_for_work(self, _duty: str, timeout: float) -> None:
        await asyncio.sleep(timeout)


def resources(poll: float = 0.05) -> Any:
    settings = types.SimpleNamespace(poll_interval_seconds=poll, lease_seconds=3600.0)
    return types.SimpleNamespace(settings=settings, worker_id="host:1:abcd", notifications=NoNews(),
                                 pacer=Pacer(30.0), handoff=None)
