"""Bearer API keys: every job API call names its owner through one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request

from service.db import page_sessions as sessions
from service.db.keys import hash_key, owner_for
from service.domain.errors import Unauthorized
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


@dataclass(frozen=True)
class Credential:
    """What a request was let in with: an API key or a history-page session, as the
    sha256 the tables keep (a live stream rechecks it: service/api/stream_gate.py)."""

    kind: Literal["key", "session"]
    digest: str


async def authenticate(request: Request) -> str:
    """The owner of the request's API key, or of the history page's session cookie, or
    Unauthorized. The cookie counts only for reads (GET/HEAD): a cookie rides along on
    requests other sites make, so anything that changes state needs the header."""
    return (await authenticate_credential(request))[0]


async def authenticate_credential(request: Request) -> tuple[str, Credential]:
    """``authenticate``, and the credential that let the request in."""
    token = bearer_token(request)
    if token:
        owner = await owner_for(resources(request).engine, token)
        if owner is None:
            raise Unauthorized("the API key is invalid or revoked")
        return owner, Credential("key", hash_key(token))
    cookie = request.cookies.get(sessions.COOKIE)
    if cookie and request.method in ("GET", "HEAD"):
        owner = await sessions.session_owner(resources(request).engine, cookie)
        if owner is None:
            raise Unauthorized("the history page session has expired; sign in again")
        return owner, Credential("session", sessions.token_digest(cookie))
    raise Unauthorized()


async def authenticate_bearer(request: Request) -> str:
    """The owner of the request's API key; a history-page session alone is refused (for
    answers a page has no use for and a stolen cookie must not read, such as a secret)."""
    owner, credential = await authenticate_credential(request)
    if credential.kind != "key":
        raise Unauthorized("this needs an API key in the Authorization header; a history-page session cannot read it")
    return owner
