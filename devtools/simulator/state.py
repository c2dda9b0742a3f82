"""The simulator's in-memory world: tasks, uploads, counters, dice and background work.

One ``SimulatorState`` per app, created by ``create_simulator_app`` and reached through
``request.app.state.sim``; nothing here is module-level, so tests can run several
simulators side by side.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import uuid
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from devtools.simulator.config import SimulatorConfig
from devtools.simulator.images import ImageCache, ImageSpec, parse_size

log = logging.getLogger("devtools.simulator")

CREATED, PROCESSING, COMPLETED, FAILED = "created", "processing", "completed", "failed"
TERMINAL = frozenset({COMPLETED, FAILED})


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``; microseconds, so a time read back filters exactly."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Delivery:
    """One webhook POST attempt, kept so tests can see exactly what was sent."""

    webhook_id: str
    kind: str  # "final", "duplicate" or "stale"
    status: str  # the prediction status carried in the body
    attempt: int
    http_status: int | None = None
    error: str = ""
    bad_signature: bool = False
    sent_at: float = 0.0  # epoch seconds the POST began (benchmarks time the path from it)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SimTask:
    """One prediction; ``input`` is the validated body with its defaults filled in."""

    id: str
    model: str
    input: dict[str, Any]
    base_url: str
    webhook_url: str | None
    created_at: datetime
    seed: int  # the seed actually used: the input's, or a random one when it is -1
    # The submit's W3C traceparent header, as it came (shown to tests: did the trace go upstream?).
    traceparent: str | None = None
    status: str = CREATED
    outputs: list[str] = field(default_factory=list)
    error: str = ""
    inference_ms: int = 0
    ended_at: float = 0.0  # epoch seconds the task turned terminal (0: not yet)
    hung: bool = False
    webhook_dropped: bool = False
    deliveries: list[Delivery] = field(default_factory=list)
    # Set when the task is terminal and its outputs exist; sync-mode submits wait on it.
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    # Set by ``POST /_sim/tasks/{id}/finish``: the task ends now instead of at its delay, so a
    # test can hold a job running for as long as it needs (a loaded machine is slow to get there).
    finish_now: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def output_format(self) -> str:
        return str(self.input.get("output_format", "jpeg"))

    @property
    def num_outputs(self) -> int:
        return int(self.input.get("num_images", 1))

    def image_spec(self, index: int) -> ImageSpec:
        width, height = parse_size(str(self.input.get("size", "1024*1024")))
        prompt = str(self.input.get("prompt", ""))
        return ImageSpec(width, height, self.output_format, self.seed, prompt, index)

    def output_url(self, index: int) -> str:
        return f"{self.base_url}/outputs/{self.id}/{index}.{self.output_format}"

    def result_url(self) -> str:
        return f"{self.base_url}/api/v3/predictions/{self.id}/result"

    def prediction(self, *, status: str | None = None) -> dict[str, Any]:
        """The provider's prediction object; ``status`` overrides it for stale events."""
        shown = status or self.status
        outputs = list(self.outputs) if shown == COMPLETED else []
        return {
            "id": self.id,
            "model": self.model,
            "input": self.input,
            "outputs": outputs,
            "urls": {"get": self.result_url()},
            "has_nsfw_contents": [False] * len(outputs),
            "status": shown,
            "created_at": iso(self.created_at),
            "error": self.error if shown == FAILED else "",
            "timings": {"inference": self.inference_ms if shown in TERMINAL else 0},
        }

    def summary(self) -> dict[str, Any]:
        """What ``GET /_sim/tasks`` shows about this task."""
        return {
            "id": self.id,
            "model": self.model,
            "status": self.status,
            "webhook_url": self.webhook_url,
            "webhook_attempts": len(self.deliveries),
            "webhook_ids": [d.webhook_id for d in self.deliveries],
            "webhook_dropped": self.webhook_dropped,
            "deliveries": [d.as_dict() for d in self.deliveries],
            "hung": self.hung,
            "created_at": iso(self.created_at),
            "ended_at": self.ended_at or None,
            "traceparent": self.traceparent,
        }


@dataclass
class Upload:
    id: str
    filename: str
    content_type: str
    declared_size: int
    data: bytes | None = None


@dataclass
class Stats:
    """Counters for ``GET /_sim/stats``; every fault that fires is counted."""

    submits_accepted: int = 0
    submits_invalid: int = 0
    submits_rejected_429: int = 0
    submits_rejected_500: int = 0
    submits_hung: int = 0
    tasks_completed: int = 0
    tasks_failed: int = 0
    webhooks_sent: int = 0
    webhooks_delivered: int = 0
    webhooks_failed: int = 0
    webhooks_dropped: int = 0
    webhooks_bad_signature: int = 0
    output_downloads: int = 0
    download_failures: int = 0
    uploads: int = 0
    blob_downloads: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class Dice:
    """Fault decisions from one seeded RNG, so a seeded run replays the same faults.

    A rate of 0 or 1 never draws a number: it is certain, and leaves the sequence of the
    other knobs' draws as it was.
    """

    def __init__(self, seed: int | None) -> None:
        self.rng = random.Random(seed)

    def hit(self, rate: float) -> bool:
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        return self.rng.random() < rate

    def uniform(self, high: float) -> float:
        return self.rng.uniform(0.0, high) if high > 0 else 0.0

    def seed(self) -> int:
        return self.rng.randint(0, 2_147_483_647)


class TaskTracker:
    """Every background coroutine the simulator starts, so shutdown can cancel them all."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("simulator background task %s failed", task.get_name(), exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class SimulatorState:
    def __init__(self, config: SimulatorConfig) -> None:
        self.initial_config = config
        self.config = config
        self.dice = Dice(config.seed)
        self.tasks: OrderedDict[str, SimTask] = OrderedDict()
        self.uploads: OrderedDict[str, Upload] = OrderedDict()
        self.stats = Stats()
        self.images = ImageCache(config.image_cache_size)
        self.background = TaskTracker()
        # Opened and closed by the app's lifespan: one pooled client for every webhook.
        self.client: httpx.AsyncClient | None = None

    def set_config(self, config: SimulatorConfig) -> None:
        previous = self.config
        self.config = config
        if config.seed != previous.seed:
            self.dice = Dice(config.seed)
        self.images.capacity = config.image_cache_size

    def add_task(self, task: SimTask) -> None:
        self.tasks[task.id] = task
        # Bounded memory for long dev sessions: forget the oldest tasks first.
        while len(self.tasks) > max(1, self.config.max_tasks):
            self.tasks.popitem(last=False)

    def add_upload(self, upload: Upload) -> None:
        self.uploads[upload.id] = upload
        # Uploads can be 200 MB each: keep only the most recent few.
        while len(self.uploads) > max(1, self.config.max_uploads):
            self.uploads.popitem(last=False)

    async def reset(self) -> None:
        """Forget everything and go back to the startup config (a clean slate per test)."""
        await self.background.cancel_all()
        self.tasks.clear()
        self.uploads.clear()
        self.stats = Stats()
        self.images.clear()
        self.set_config(self.initial_config)
        self.dice = Dice(self.initial_config.seed)
