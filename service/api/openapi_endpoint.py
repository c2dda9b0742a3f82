"""``GET /openapi.json``: the OpenAPI 3.1 document of the routes this app serves
(service/api/plumbing/openapi_doc.py builds it from the route table: each API module declares
its own operations)."""

from __future__ import annotations

from importlib import metadata

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.api.plumbing import openapi_doc as openapi
from service.api.plumbing.openapi_doc import documented


def _version() -> str:
    try:
        return metadata.version("wavespeed-jobs")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@documented(operationId="openapi", tags=["operations"], summary="This document",
            responses={"200": {"description": "OpenAPI 3.1.",
                               "content": {"application/json": {"schema": {"type": "object"}}}}})
async def document(request: Request) -> JSONResponse:
    # Built once per app: the routes and models do not change while it runs.
    cached = getattr(request.app.state, "openapi_document", None)
    if cached is None:
        cached = openapi.build(request.app.routes, _version())
        request.app.state.openapi_document = cached
    return JSONResponse(cached)


routes = [Route("/openapi.json", document, methods=["GET"])]
