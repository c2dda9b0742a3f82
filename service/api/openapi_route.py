"""``GET /openapi.json``: the OpenAPI 3.1 document of the routes this app serves
(service/openapi.py builds it from the route table and the validating models)."""

from __future__ import annotations

from importlib import metadata

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.api import openapi_doc as openapi


def _version() -> str:
    try:
        return metadata.version("wavespeed-jobs")
    except metadata.PackageNotFoundError:
        return "0.0.0"


async def document(request: Request) -> JSONResponse:
    # Built once per app: the routes and models do not change while it runs.
    cached = getattr(request.app.state, "openapi_document", None)
    if cached is None:
        cached = openapi.build(request.app.routes, _version())
        request.app.state.openapi_document = cached
    return JSONResponse(cached)


routes = [Route("/openapi.json", document, methods=["GET"])]
