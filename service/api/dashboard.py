"""The web page for people: sign in with an API key, browse the job history with the
API's filters, open a job (input, outputs, events, callback attempts) and watch a
running one finish.

Server-rendered with Jinja2 (autoescape on: prompts and metadata are user text) and
served whole by the service: one stylesheet and one small script under /static, no
third-party assets, a Content-Security-Policy that allows nothing else. Images load
from the presigned S3 URLs the API hands out too, so S3's origin is the one exception.

Sessions are server-side (service/sessions.py): the cookie holds a random token, is
HttpOnly and SameSite=Lax (Secure over https). The sign-in and sign-out forms carry an
anti-CSRF token and must come from this origin.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from service.api.auth import resources
from service.db import dashboard_sessions as sessions
from service.db import jobs
from service.db.history import MAX_LIMIT, list_jobs, parse_filter
from service.db.models import Delivery, Job, JobEvent, table
from service.domain.errors import FieldError, PayloadTooLarge, ServiceError, Unauthorized, ValidationFailed
from service.domain.schemas import MODELS
from service.domain.serialize import iso, job_dict
from service.domain.states import TERMINAL, JobStatus
from service.resources import Resources

PACKAGE = Path(__file__).resolve().parent.parent  # service/
CSRF_COOKIE = "wsj_csrf"
MAX_FORM_BYTES = 16 * 1024
events_t = table(JobEvent)
jobs_t = table(Job)
deliveries_t = table(Delivery)

Handler = Callable[[Request], Awaitable[Response]]


class Forbidden(ServiceError):
    """The form did not come from this site; reload the page and try again."""

    status_code = 403
    error_type = "forbidden"


# --------------------------------------------------------------------------- templates


def _when(value: str | None) -> str:
    if not value:
        return "—"
    stamp = dt.datetime.fromisoformat(value)
    return stamp.strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(start: str | None, end: str | None) -> str:
    if not start or not end:
        return "—"
    seconds = (dt.datetime.fromisoformat(end)
               - dt.datetime.fromisoformat(start)).total_seconds()
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _size(value: int | None) -> str:
    if value is None:
        return "—"
    if value < 1024:
        return f"{value} B"
    if value < 1024 * 1024:
        return f"{value / 1024:.1f} KB"
    return f"{value / (1024 * 1024):.1f} MB"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _compact(value: Any) -> str:
    if value is None:
        return "—"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)


def _datetime_input(value: str) -> str:
    """A filter time as <input type="datetime-local"> shows it (UTC, no zone); a value
    it cannot show is left blank rather than sent back wrong."""
    try:
        stamp = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        return ""
    if stamp.tzinfo:
        stamp = stamp.astimezone(dt.UTC).replace(tzinfo=None)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S")


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(PACKAGE / "templates"),
        autoescape=select_autoescape(["html"], default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=_when, size=_size, pretty=_pretty, compact=_compact, datetime_input=_datetime_input)
    env.globals.update(duration=_duration, statuses=[s.value for s in JobStatus], models=list(MODELS),
                       terminal={s.value for s in TERMINAL})
    return env


# One environment per process: templates are compiled once and are not a client.
templates = _environment()


def _headers(res: Resources) -> dict[str, str]:
    """No script, style, font or frame from anywhere but here; images also from S3,
    where the presigned output URLs point."""
    probe = urlsplit(res.presign("csp-probe"))
    s3_origin = f"{probe.scheme}://{probe.netloc}"
    return {
        "Content-Security-Policy": (
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
            f"img-src 'self' {s3_origin}; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        # Presigned URLs and job ids stay out of the Referer sent to S3.
        "Referrer-Policy": "same-origin",
        # Pages show one owner's private data: never keep them in a shared cache.
        "Cache-Control": "no-store",
    }


def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = templates.get_template(name).render(request=request, **context)
    return HTMLResponse(html, status_code=status_code, headers=_headers(resources(request)))


def fragment(macro: str, *args: Any) -> str:
    """One macro of _parts.html rendered alone: the live updates swap these in."""
    return str(getattr(templates.get_template("_parts.html").module, macro)(*args))


# --------------------------------------------------------------------------- sign-in


def safe_next(value: str | None) -> str:
    """Only a path on this site: never an open redirect to another host."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _secure(request: Request) -> bool:
    # uvicorn sets the scheme from X-Forwarded-Proto for trusted proxies.
    return request.url.scheme == "https"


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
    if not same_origin(request) or not sessions.tokens_match(request.cookies.get(CSRF_COOKIE, ""), form.get("csrf", "")):
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


def _chrome(request: Request, owner: str) -> dict[str, Any]:
    """What every signed-in page's header needs."""
    return {"owner": owner, "form_token": sessions.form_token(request.cookies[sessions.COOKIE])}


# --------------------------------------------------------------------------- history


def history_params(query: Sequence[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[FieldError]]:
    """The filter form's fields → the API's query parameters. Empty fields mean "any";
    ``meta`` takes ``key=value`` pairs separated by commas (API style
    ``metadata.<key>=<value>`` works in the URL too)."""
    params: list[tuple[str, str]] = []
    errors: list[FieldError] = []
    for key, value in query:
        value = value.strip()
        if not value:
            continue
        if key == "meta":
            for pair in value.split(","):
                name, sep, wanted = pair.strip().partition("=")
                if not sep or not name.strip():
                    errors.append(FieldError("meta", "must be key=value pairs separated by commas, e.g. user_id=u_1"))
                    continue
                params.append((f"metadata.{name.strip()}", wanted.strip()))
        else:
            params.append((key, value))
    return params, errors


def card(job: Mapping[str, Any]) -> dict[str, Any]:
    """A job as the history list shows it."""
    first = job["outputs"][0] if job["outputs"] else None
    return {**job, "thumb": (first["thumbnail_url"] or first["url"]) if first else None,
            "terminal": job["status"] in {s.value for s in TERMINAL}}


async def history(request: Request, owner: str) -> Response:
    res = resources(request)
    query = list(request.query_params.multi_items())
    params, errors = history_params(query)
    form = {
        "status": set(request.query_params.getlist("status")),
        **{k: request.query_params.get(k, "") for k in ("model", "created_after", "created_before", "meta")},
    }
    cards: list[dict[str, Any]] = []
    next_cursor = None
    status_code = 200
    try:
        if errors:
            raise ValidationFailed(errors)
        f = parse_filter(params)
        async with res.engine.connect() as conn:
            rows, next_cursor = await list_jobs(conn, owner, f)
            outputs = await jobs.get_outputs(conn, [r.id for r in rows])
        cards = [card(job_dict(r, outputs.get(r.id, []), res.presign)) for r in rows]
    except ValidationFailed as exc:
        errors, status_code = list(exc.fields), exc.status_code
    kept = [(k, v) for k, v in query if k != "cursor"]
    older = "/?" + urlencode(kept + [("cursor", next_cursor)]) if next_cursor else None
    running = [c["id"] for c in cards if not c["terminal"]]
    return page(
        request, "history.html", status_code, jobs=cards, errors=errors, form=form, older=older,
        newest="/?" + urlencode(kept),
        paged=any(k == "cursor" for k, _ in query),
        filtered=any(k != "cursor" and v.strip() for k, v in query),
        live_url=live_list_url(running),
        bulk_fields=[(k, v) for k, v in kept if k != "cursor" and v.strip()],  # the bulk form acts on this filter
        **_chrome(request, owner),
    )


async def live_list(request: Request) -> JSONResponse:
    """Fresh list rows for the history page's running jobs (polled by dashboard.js)."""
    res = resources(request)
    owner = await _live_owner(request)
    ids = request.query_params.getlist("id")[:MAX_LIMIT]
    async with res.engine.connect() as conn:
        # One query for all of them; another owner's ids simply match nothing.
        rows = (await conn.execute(select(jobs_t).where(jobs_t.c.id.in_(ids), jobs_t.c.owner == owner))).all()
        outputs = await jobs.get_outputs(conn, [r.id for r in rows])
    cards = [card(job_dict(r, outputs.get(r.id, []), res.presign)) for r in rows]
    running = [c["id"] for c in cards if not c["terminal"]]
    return JSONResponse({
        "done": not running,
        "sections": {f"job-{c['id']}": fragment("job_row", c) for c in cards},
        # A row is sent once more when it ends, then no longer asked for.
        "next_url": live_list_url(running),
    }, headers={"Cache-Control": "no-store"})


def live_list_url(job_ids: Sequence[str]) -> str | None:
    return "/live?" + urlencode([("id", i) for i in job_ids]) if job_ids else None


async def _live_owner(request: Request) -> str:
    owner = await current_owner(request)
    if owner is None:
        raise Unauthorized("the dashboard session has expired; sign in again")
    return owner


# --------------------------------------------------------------------------- one job


async def job_view(res: Resources, job_id: str, owner: str) -> dict[str, Any]:
    """The job with its events and callback deliveries, oldest first."""
    async with res.engine.connect() as conn:
        row = await jobs.get_job(conn, job_id, owner)
        outputs = (await jobs.get_outputs(conn, [row.id])).get(row.id, [])
        events = (await conn.execute(
            select(events_t).where(events_t.c.job_id == row.id).order_by(events_t.c.id))).all()
        deliveries = (await conn.execute(
            select(deliveries_t).where(deliveries_t.c.job_id == row.id).order_by(deliveries_t.c.created_at))).all()
    job = card(job_dict(row, outputs, res.presign))
    job["events"] = [{"at": iso(e.at), "type": e.type, "detail": e.detail} for e in events]
    job["deliveries"] = [
        {"id": d.id, "event_type": d.event_type, "status": d.status, "attempts": d.attempts,
         "last_status_code": d.last_status_code, "last_error": d.last_error, "created_at": iso(d.created_at),
         "next_attempt_at": iso(d.next_attempt_at), "delivered_at": iso(d.delivered_at)}
        for d in deliveries
    ]
    return job


LIVE_SECTIONS = ("status", "summary", "outputs", "events", "callbacks")


async def job_page(request: Request, owner: str) -> Response:
    job = await job_view(resources(request), request.path_params["job_id"], owner)
    live_url = None if job["terminal"] else f"/jobs/{job['id']}/live"
    return page(request, "job.html", job=job, live_url=live_url, **_chrome(request, owner))


async def live_job(request: Request) -> JSONResponse:
    """The job page's changing sections, re-rendered (polled by dashboard.js)."""
    owner = await _live_owner(request)
    job = await job_view(resources(request), request.path_params["job_id"], owner)
    return JSONResponse({
        "done": job["terminal"],
        "sections": {name: fragment(f"job_{name}", job) for name in LIVE_SECTIONS},
    }, headers={"Cache-Control": "no-store"})


routes: list[BaseRoute] = [
    Route("/", signed_in(history), methods=["GET"], include_in_schema=False),
    Route("/login", login_page, methods=["GET"], include_in_schema=False),
    Route("/login", login, methods=["POST"], include_in_schema=False),
    Route("/logout", logout, methods=["POST"], include_in_schema=False),
    Route("/live", live_list, methods=["GET"], include_in_schema=False),
    Route("/jobs/{job_id}", signed_in(job_page), methods=["GET"], include_in_schema=False),
    Route("/jobs/{job_id}/live", live_job, methods=["GET"], include_in_schema=False),
    Mount("/static", app=StaticFiles(directory=PACKAGE / "static"), name="static"),
]
