"""The OpenAPI 3.1 document of the routes an app serves (``GET /openapi.json``).

Nothing here describes an endpoint. Each API module declares its operations beside its
handlers with ``@documented(...)``; this module reads them off the route table, so:

* every route of the API must be documented (``undocumented()`` lists the gaps and a
  test fails on any); routes that are not API say so with ``include_in_schema=False``;
* an operation the app does not serve is never in the document;
* a schema is named by the class that makes or checks the data, never restated: the
  TypedDict a handler answers with (``service/domain/serialize.py``'s ``Job``), the
  pydantic model that validates a request (``service/domain/schemas.py``). Where an
  operation dict holds a class, the document holds a ``$ref`` to that class's schema.

How to document a new endpoint: docs/architecture.md, "To add an endpoint".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, TypeVar

from pydantic import TypeAdapter
from starlette.routing import BaseRoute, Route

from service.api.plumbing.error_responses import ErrorBody

REF = "#/components/schemas/{model}"
ATTRIBUTE = "__openapi__"
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]
JOB_ID: dict[str, Any] = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
ERROR_TEXT = {
    400: "The body could not be read (not JSON).",
    401: "A valid API key is required.",
    402: "budget_exceeded: the owner's monthly budget cannot cover the job's estimate; nothing was created.",
    404: "No such job (another owner's job is a 404 too).",
    409: "The request conflicts with the job's state (or an Idempotency-Key's first body).",
    413: "The body is too large.",
    422: "Invalid: every problem is listed with its field and rule.",
}
TAGS = [
    {"name": "jobs", "description": "The job API (Authorization: Bearer <API key>)."},
    {"name": "callbacks", "description": "The owner's callback signing secret."},
    {"name": "receiver", "description": "Where WaveSpeed reports results."},
    {"name": "wavespeed-compatible", "description": "WaveSpeed's own API shape, for its SDK."},
    {"name": "operations", "description": "Health, readiness, metrics, this document."},
]
E = TypeVar("E", bound=Callable[..., Any])
Mode = Literal["validation", "serialization"]


# --------------------------------------------------------------------------- declaring


def documented(**operation: Any) -> Callable[[E], E]:
    """Attach an OpenAPI operation object to an endpoint. Values may hold classes (a
    TypedDict or pydantic model) where a schema goes; they become ``$ref``s. Without a
    ``description``, the endpoint's docstring is the operation's (one paragraph)."""

    def mark(endpoint: E) -> E:
        if "description" not in operation and endpoint.__doc__:
            operation["description"] = " ".join(endpoint.__doc__.split())
        setattr(endpoint, ATTRIBUTE, operation)
        return endpoint

    return mark


def answer(schema: Any, description: str, **extra: Any) -> dict[str, Any]:
    """A JSON response object whose body is ``schema`` (usually a class)."""
    return {"description": description, "content": {"application/json": {"schema": schema}}, **extra}


def json_body(schema: Any) -> dict[str, Any]:
    """A required JSON request body."""
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def errors(*codes: int, shape: Any = ErrorBody) -> dict[str, Any]:
    """The error answers an operation gives, each with the body ``shape``."""
    out: dict[str, Any] = {}
    for code in codes:
        extra = {"headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}} if code == 401 else {}
        out[str(code)] = answer(shape, ERROR_TEXT[code], **extra)
    return out


# --------------------------------------------------------------------------- reading


def _api_routes(routes: Sequence[BaseRoute]) -> Iterator[tuple[str, str, Route]]:
    """(method, path, route) of every API route (``include_in_schema`` left true)."""
    for route in routes:
        if not isinstance(route, Route) or not route.include_in_schema:
            continue
        for method in sorted(route.methods or ()):
            if method != "HEAD":  # Starlette adds HEAD to every GET
                yield method.lower(), route.path, route


def undocumented(routes: Sequence[BaseRoute]) -> list[tuple[str, str]]:
    """API routes whose endpoint declares no operation (should be none)."""
    return sorted((m, p) for m, p, r in _api_routes(routes) if getattr(r.endpoint, ATTRIBUTE, None) is None)


def _classes(node: Any, mode: Mode, found: dict[tuple[type, Mode], None]) -> None:
    """Every class named in an operation, with the mode its schema is wanted in."""
    if isinstance(node, type):
        found[(node, mode)] = None
    elif isinstance(node, dict):
        for key, value in node.items():
            _classes(value, "validation" if key == "requestBody" else mode, found)
    elif isinstance(node, list):
        for value in node:
            _classes(value, mode, found)


def _resolve(node: Any, mode: Mode, refs: dict[tuple[type, Mode], str], key: str = "") -> Any:
    """The operation with every class replaced by its ``$ref`` (a discriminator's
    ``mapping`` takes the bare reference)."""
    if isinstance(node, type):
        return refs[(node, mode)] if key == "mapping" else {"$ref": refs[(node, mode)]}
    if isinstance(node, dict):
        inner: Mode = "validation" if key == "requestBody" else mode
        return {k: _resolve(v, inner, refs, key if key == "mapping" else k) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, mode, refs) for v in node]
    return node


def _schemas(classes: Sequence[tuple[type, Mode]]) -> tuple[dict[tuple[type, Mode], str], dict[str, Any]]:
    """The ``$ref`` of each class and the component schemas they point into."""
    inputs: list[tuple[tuple[type, Mode], Mode, TypeAdapter[Any]]] = [
        (key, key[1], TypeAdapter(key[0])) for key in classes
    ]
    refs, document = TypeAdapter.json_schemas(inputs, ref_template=REF)
    return {key: ref["$ref"] for (key, _), ref in refs.items()}, dict(sorted(document.get("$defs", {}).items()))


def build(routes: Sequence[BaseRoute], version: str = "0.1.0") -> dict[str, Any]:
    """The document for an app serving ``routes``."""
    operations: list[tuple[str, str, dict[str, Any]]] = []
    for method, path, route in _api_routes(routes):
        operation = getattr(route.endpoint, ATTRIBUTE, None)
        if operation is not None:
            operations.append((method, path, operation))
    found: dict[tuple[type, Mode], None] = {}
    for _, _, operation in operations:
        _classes(operation, "serialization", found)
    refs, components = _schemas(list(found))
    paths: dict[str, dict[str, Any]] = {}
    for method, path, operation in sorted(operations, key=lambda item: item[1]):
        paths.setdefault(path, {})[method] = _resolve(operation, "serialization", refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wavespeed-jobs",
            "version": version,
            "description": "A self-hosted job service in front of WaveSpeedAI's Flux LoRA models: validated jobs in "
                           "Postgres, signed webhooks, outputs in S3, signed callbacks, searchable history.",
        },
        "tags": TAGS,
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "An API key from `wavespeed-jobs keys create`."}},
        },
    }
