"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.api.auth import resources


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """Ready when the database and S3 both answer; each check is bounded in time."""
    res = resources(request)
    checks: dict[str, str] = {}

    async def database() -> None:
        async with res.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    for name, check in (("database", database), ("s3", res.storage.ping)):
        try:
            await asyncio.wait_for(check(), timeout=3)
            checks[name] = "ok"
        except Exception as exc:  # report, never raise: this is a probe
            checks[name] = f"unavailable: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)


routes = [Route("/healthz", healthz), Route("/readyz", readyz)]
