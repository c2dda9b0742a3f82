"""Signing in to the history page with an API key, and signing out.

Sessions are server-side (service/db/page_sessions.py): the cookie holds a random
token, is HttpOnly and SameSite=Lax (Secure over https). The sign-in and sign-out forms
carry an anti-CSRF token and must come from this origin.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from service.api.plumbing.auth import resources
from service.db import page_sessions as sessions
from service.domain.errors import FieldError, PayloadTooLarge, ServiceError, ValidationFailed
from service.web.rendering import page

CSRF_COOKIE = "wsj_csrf"
MAX_FORM_BYTES = 16 * 1024

Handler = Callable[[Request], Awaitable[Response]]


class Forbidden(ServiceError, status=403, kind="forbidden"):
    """The form did not come from this site; reload the page and try again."""


def safe_next(value: str | None) -> str:
    """Only a path on this site: never an open redirect to another host."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _secure(request: Request) -> bool:
    # Secure whenever the public address is https, so a TLS-terminating proxy needs no
    # FORWARDED_ALLOW_IPS for it; uvicorn also sets the scheme from X-Forwarded-Proto
    # for trusted proxies (serve --forwarded-allow-ips).
    public = resources(request).settings.public_base_url or ""
    return public.lower().startswith("https://") or request.url.scheme == "https"


def same_origin(request: Request) -> bool:
    """The form was posted by a page of this site. Browsers send Origin on every POST;
    Referer is the fallback; with neither, the form token alone decides."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return True
    if source == "null":
        return False
    netloc = urlsplit(source).netloc
    allowed = {request.headers.get("host", "")}
    public = resources(request).settings.public_base_url
    if public:
        allowed.add(urlsplit(public).netloc)
    return netloc in allowed


async def read_form(request: Request) -> dict[str, str]:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise PayloadTooLarge(f"the form must be at most {MAX_FORM_BYTES} bytes")
    form = await request.form(max_files=0, max_fields=20)
    return {k: v for k, v in form.items() if isinstance(v, str)}


async def current_owner(request: Request) -> str | None:
    token = request.cookies.get(sessions.COOKIE)
    if not token:
        return None
    return await sessions.session_owner(resources(request).engine, token)


def login_form(request: Request, *, status_code: int = 200, errors: Sequence[FieldError] = (),
               message: str | None = None) -> HTMLResponse:
    csrf = request.cookies.get(CSRF_COOKIE)
    if not csrf or len(csrf) > 100:
        csrf = secrets.token_urlsafe(32)
    response = page(request, "login.html", status_code, csrf=csrf, errors=list(errors), message=message,
                    next=safe_next(request.query_params.get("next")), owner=None)
    # Double-submit token: a page on another site can post the form but cannot read
    # or set this cookie, so it cannot make the two match.
    response.set_cookie(CSRF_COOKIE, csrf, max_age=3600, path="/login", httponly=True, samesite="strict",
                        secure=_secure(request))
    return response


async def login_page(request: Request) -> Response:
    if await current_owner(request):
        return RedirectResponse(safe_next(request.query_params.get("next")), status_code=303)
    return login_form(request)


async def login(request: Request) -> Response:
    form = await read_form(request)
    csrf_ok = sessions.tokens_match(request.cookies.get(CSRF_COOKIE, ""), form.get("csrf", ""))
    if not same_origin(request) or not csrf_ok:
        return login_form(request, status_code=403, errors=[FieldError("csrf", Forbidden.__doc__ or "")])
    key = form.get("api_key", "").strip()
    if not key:
        return login_form(request, status_code=422, errors=[FieldError("api_key", "is required")])
    res = resources(request)
    session = await sessions.open_session(res.engine, key, dt.timedelta(hours=res.settings.dashboard_session_hours))
    if session is None:
        return login_form(request, status_code=401, errors=[FieldError("api_key", "is invalid or revoked")])
    response = RedirectResponse(safe_next(form.get("next")), status_code=303)
    response.set_cookie(sessions.COOKIE, session.token, max_age=int(res.settings.dashboard_session_hours * 3600),
                        path="/", httponly=True, samesite="lax", secure=_secure(request))
    response.delete_cookie(CSRF_COOKIE, path="/login")
    return response


async def logout(request: Request) -> Response:
    form = await read_form(request)
    token = request.cookies.get(sessions.COOKIE, "")
    if token:
        if not same_origin(request) or not sessions.tokens_match(sessions.form_token(token), form.get("csrf", "")):
            error = Forbidden()
            return page(request, "error.html", error.status_code, error=error, owner=None,
                        fields=[FieldError("csrf", error.message)])
        await sessions.close_session(resources(request).engine, token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/", httponly=True, samesite="lax", secure=_secure(request))
    return response


def signed_in(handler: Callable[[Request, str], Awaitable[Response]]) -> Handler:
    """A page for a signed-in person: otherwise off to the sign-in form, coming back
    here afterwards. Errors become an HTML page with the same status."""

    async def wrapped(request: Request) -> Response:
        owner = await current_owner(request)
        if owner is None:
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/login?" + urlencode({"next": here}), status_code=303)
        try:
            return await handler(request, owner)
        except ServiceError as exc:
            if exc.status_code >= 500:
                raise
            fields = exc.fields if isinstance(exc, ValidationFailed) else (
                [FieldError(exc.context["field"], exc.message)] if "field" in exc.context else [])
            return page(request, "error.html", exc.status_code, error=exc, fields=fields,
                        owner=owner, form_token=sessions.form_token(request.cookies[sessions.COOKIE]))

    return wrapped


def chrome(request: Request, owner: str) -> dict[str, Any]:
    """What every signed-in page's header needs."""
    return {"owner": owner, "form_token": sessions.form_token(request.cookies[sessions.COOKIE])}


