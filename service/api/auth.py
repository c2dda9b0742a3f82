"""Bearer API keys: every job API call names its owner through one."""

from __future__ import annotations

from starlette.requests import Request

from service.errors import Unauthorized
from service.keys import owner_for
from service.resources import Resources


def resources(request: Request) -> Resources:
    res: Resources = request.app.state.resources
    return res


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


async def authenticate(request: Request) -> str:
    """The owner of the request's API key (from the header, or the dashboard's session
    cookie), or Unauthorized."""
    token = bearer_token(request) or request.cookies.get("wsj_session")
    if not token:
        raise Unauthorized()
    owner = await owner_for(resources(request).engine, token)
    if owner is None:
        raise Unauthorized("the API key is invalid or revoked")
    return owner
