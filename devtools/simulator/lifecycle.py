"""What happens to a task after its submit: ``processing``, then ``completed`` or
``failed``, then its webhook. Runs as one tracked background coroutine per task."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time

from devtools.simulator.images import content_type
from devtools.simulator.state import COMPLETED, FAILED, PROCESSING, SimTask, SimulatorState
from devtools.simulator.webhooks import deliver_final

# Mentions an HTTP 5xx on purpose: the official SDK re-runs a task only for such errors.
FAILURE_MESSAGE = "simulated failure: the inference server answered HTTP 500"


async def run_task(sim: SimulatorState, task: SimTask) -> None:
    config = sim.config
    total = config.completion_delay + sim.dice.uniform(config.completion_jitter)
    first = min(config.processing_delay, total)
    await _sleep_unless_finished(task, first)
    task.status = PROCESSING
    await _sleep_unless_finished(task, total - first)
    if sim.dice.hit(config.failure_rate):
        task.error = FAILURE_MESSAGE
        task.status = FAILED
        sim.stats.tasks_failed += 1
    else:
        task.outputs = await _outputs(sim, task)
        task.status = COMPLETED
        sim.stats.tasks_completed += 1
    task.inference_ms = int(total * 1000)
    task.ended_at = time.time()
    task.finished.set()
    await deliver_final(sim, task)


async def _sleep_unless_finished(task: SimTask, seconds: float) -> None:
    if task.finish_now.is_set():
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(task.finish_now.wait(), max(0.0, seconds))


async def _outputs(sim: SimulatorState, task: SimTask) -> list[str]:
    if not task.input.get("enable_base64_output", False):
        return [task.output_url(i) for i in range(task.num_outputs)]
    urls = []
    for index in range(task.num_outputs):
        # Encoding a large PNG takes a while: keep it off the event loop.
        data = await asyncio.to_thread(sim.images.get_or_render, task.image_spec(index))
        encoded = base64.b64encode(data).decode("ascii")
        urls.append(f"data:{content_type(task.output_format)};base64,{encoded}")
    return urls
