"""``create_simulator_app``: WaveSpeed's v3 API, in memory, for development and tests."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devtools.simulator import api, control, files
from devtools.simulator.config import DEFAULT_PORT, SimulatorConfig
from devtools.simulator.params import MODELS
from devtools.simulator.responses import QUIET_CUTS, error
from devtools.simulator.state import SimulatorState

log = logging.getLogger("devtools.simulator")


def routes() -> list[Route]:
    submit = [Route(f"/api/v3/{model}", api.submit_endpoint(model), methods=["POST"]) for model in MODELS]
    return [
        *submit,
        Route("/api/v3/predictions/{task_id}/result", api.result, methods=["GET"]),
        Route("/api/v3/predictions", api.list_predictions, methods=["POST"]),
        Route("/api/v3/webhook/secret", api.webhook_secret, methods=["GET"]),
        Route("/api/v3/media/uploads", api.create_upload, methods=["POST"]),
        Route("/api/v3/{rest:path}", api.not_found, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        Route("/outputs/{task_id}/{filename}", files.output, methods=["GET"]),
        Route("/media/upload/{upload_id}", files.put_upload, methods=["PUT"]),
        Route("/media/{upload_id}/{filename}", files.get_upload, methods=["GET"]),
        Route("/_sim/blob/{n_bytes:int}", files.blob, methods=["GET"]),
        Route("/_sim/tasks", control.list_tasks, methods=["GET"]),
        Route("/_sim/tasks/{task_id}", control.get_task, methods=["GET"]),
        Route("/_sim/tasks/{task_id}/finish", control.finish_task, methods=["POST"]),
        Route("/_sim/stats", control.stats, methods=["GET"]),
        Route("/_sim/config", control.config, methods=["GET", "POST"]),
        Route("/_sim/reset", control.reset, methods=["POST"]),
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    # 404/405 from routing in the provider's envelope too, not Starlette's plain text.
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "Internal server error"
    return error(status, str(detail))


def create_simulator_app(config: SimulatorConfig) -> Starlette:
    sim = SimulatorState(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        logging.getLogger("uvicorn.error").addFilter(QUIET_CUTS)
        async with httpx.AsyncClient(timeout=config.webhook_timeout, follow_redirects=False) as client:
            sim.client = client
            try:
                yield
            finally:
                # Pending task lifecycles and webhook sends would otherwise outlive the
                # server (and its client): cancel them so shutdown is prompt and clean.
                await sim.background.cancel_all()
                sim.client = None

    app = Starlette(routes=routes(), lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    app.state.sim = sim
    return app


def run(config: SimulatorConfig, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Serve the simulator until interrupted (blocking)."""
    # Printed, not logged: uvicorn configures logging only once it starts.
    print(
        f"WaveSpeed simulator on http://{host}:{port}  "
        f"api key: {config.api_key}  webhook secret: {config.webhook_secret}",
        flush=True,
    )
    uvicorn.run(
        create_simulator_app(config),
        host=host,
        port=port,
        log_level="info",
        # A hung submit or a slow download must not hold shutdown for long.
        timeout_graceful_shutdown=5,
    )
