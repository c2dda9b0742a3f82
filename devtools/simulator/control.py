"""``/_sim/*``: inspection and live control for tests and the dev stack (no auth)."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from devtools.simulator.api import sim_of
from devtools.simulator.responses import error


async def list_tasks(request: Request) -> Response:
    """Every task, oldest first, with its webhook deliveries."""
    return JSONResponse([task.summary() for task in sim_of(request).tasks.values()])


async def get_task(request: Request) -> Response:
    task = sim_of(request).tasks.get(request.path_params["task_id"])
    if task is None:
        return error(404, "Task not found")
    return JSONResponse({**task.summary(), "prediction": task.prediction()})


async def finish_task(request: Request) -> Response:
    """End a task now rather than at its ``completion_delay`` (tests hold a job running
    with a long delay, then let it go once they are ready to watch it end)."""
    task = sim_of(request).tasks.get(request.path_params["task_id"])
    if task is None:
        return error(404, "Task not found")
    task.finish_now.set()
    return JSONResponse(task.summary())


async def stats(request: Request) -> Response:
    sim = sim_of(request)
    return JSONResponse({**sim.stats.as_dict(), "tasks": len(sim.tasks), "background": len(sim.background)})


async def config(request: Request) -> Response:
    """GET: the live knobs. POST ``{"knob": value, ...}``: change them from now on."""
    sim = sim_of(request)
    if request.method == "POST":
        try:
            changes = json.loads(await request.body() or b"{}")
        except ValueError:
            return error(400, "Invalid JSON body")
        if not isinstance(changes, dict):
            return error(422, "body: must be a JSON object of knob names")
        try:
            sim.set_config(sim.config.updated(changes))
        except (ValueError, TypeError) as exc:
            return error(422, str(exc))
    return JSONResponse(sim.config.as_dict())


async def reset(request: Request) -> Response:
    """Forget every task, upload and counter; restore the startup knobs."""
    sim = sim_of(request)
    await sim.reset()
    return JSONResponse(sim.config.as_dict())
