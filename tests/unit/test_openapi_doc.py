"""service/api/plumbing/openapi_doc.py reads operations off the route table: an API route without
``@documented`` is reported, a route marked ``include_in_schema=False`` is not API, and
a class named in an operation becomes a ``$ref`` to its one schema."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from typing_extensions import TypedDict

from service.api.plumbing.openapi_doc import answer, build, documented, undocumented
from service.app import routes


class Thing(TypedDict):
    name: str


async def _bare(request: Request) -> JSONResponse:
    return JSONResponse({})


@documented(operationId="getThing", responses={"200": answer(Thing, "The thing.")})
async def _thing(request: Request) -> JSONResponse:
    return JSONResponse({"name": "x"})


def test_an_undocumented_api_route_is_reported_and_a_hidden_one_is_not() -> None:
    table = [Route("/a", _bare, methods=["POST"]), Route("/b", _bare, include_in_schema=False),
             Route("/c", _thing, methods=["GET"])]
    assert undocumented(table) == [("post", "/a")]


def test_a_class_in_an_operation_becomes_a_ref_to_its_schema() -> None:
    doc: dict[str, Any] = build([Route("/c", _thing, methods=["GET"])])
    content = doc["paths"]["/c"]["get"]["responses"]["200"]["content"]["application/json"]
    assert content["schema"] == {"$ref": "#/components/schemas/Thing"}
    assert doc["components"]["schemas"]["Thing"]["required"] == ["name"]


def test_every_route_of_the_app_is_documented_or_marked_not_api() -> None:
    assert undocumented(routes()) == []


def test_the_job_answer_schema_is_the_typed_dict_serialize_builds() -> None:
    from service.domain.serialize import Job

    job = build(routes())["components"]["schemas"]["Job"]
    assert set(job["properties"]) == set(Job.__annotations__)
