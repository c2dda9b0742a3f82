"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from typing import Literal

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from typing_extensions import TypedDict

from service.api.plumbing.auth import resources
from service.api.plumbing.openapi_doc import answer, documented
from service.db.engine import ping
from service.observability import metrics


class Health(TypedDict):
    status: Literal["ok"]


class Readiness(TypedDict):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]


@documented(operationId="healthz", tags=["operations"], summary="The process is alive",
            responses={"200": answer(Health, "Alive.")})
async def healthz(request: Request) -> JSONResponse:
    alive: Health = {"status": "ok"}
    return JSONResponse(alive)


@documented(operationId="readyz", tags=["operations"], summary="Postgres and S3 answer",
            responses={"200": answer(Readiness, "Ready."), "503": answer(Readiness, "Not ready: see checks.")})
async def readyz(request: Request) -> JSONResponse:
    """Ready when the database and S3 both answer; each check is bounded in time."""
    res = resources(request)
    checks: dict[str, str] = {}

    async def database() -> None:
        await ping(res.engine)

    for name, check in (("database", database), ("s3", res.storage.ping)):
        try:
            await asyncio.wait_for(check(), timeout=3)
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001  a probe reports every failure, never raises
            checks[name] = f"unavailable: {type(exc).__name__}"
        metrics.readiness(name, checks[name] == "ok")  # for alerts (deploy/prometheus/alerts.yaml)
    ok = all(v == "ok" for v in checks.values())
    readiness: Readiness = {"status": "ok" if ok else "unavailable", "checks": checks}
    return JSONResponse(readiness, status_code=200 if ok else 503)


routes = [Route("/healthz", healthz), Route("/readyz", readyz)]
