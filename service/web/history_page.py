"""The web page for people: browse the job history with the API's filters, open a job
(input, outputs, events, callback attempts) and watch a running one finish.

Server-rendered and served whole by the service: rendering and security headers in
rendering.py, signing in and out (server-side sessions, CSRF) in sign_in.py, the bulk
actions in bulk_page.py, the pages themselves here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from service.api.owner_account import usage_answer
from service.api.plumbing.auth import resources
from service.db import jobs, owners
from service.db.history import MAX_LIMIT, job_deliveries, job_events, jobs_by_id, list_jobs, parse_filter
from service.domain.errors import FieldError, Unauthorized, ValidationFailed
from service.domain.ids import checked_job_id
from service.domain.records import OutputRecord
from service.domain.serialize import iso, job_dict
from service.domain.states import TERMINAL, JobStatus
from service.resources import Resources
from service.web import spend_overview
from service.web.rendering import WEB, fragment, page
from service.web.sign_in import chrome, current_owner, login, login_page, logout, signed_in

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


def card(job: Mapping[str, Any], outputs: Sequence[OutputRecord] = ()) -> dict[str, Any]:
    """A job as the history list shows it; ``outputs`` (its records) tell which images
    carry Content Credentials."""
    first = job["outputs"][0] if job["outputs"] else None
    signed = {o.index for o in outputs if o.content_credentials}
    return {**job, "thumb": (first["thumbnail_url"] or first["url"]) if first else None,
            "terminal": job["status"] in {s.value for s in TERMINAL},
            "outputs": [{**o, "content_credentials": o["index"] in signed} for o in job["outputs"]],
            "content_credentials": bool(job["outputs"]) and len(signed) >= len(job["outputs"]),
            "has_receipt": job["status"] == JobStatus.COMPLETED.value and not job["deleted_at"]}


async def history(request: Request, owner: str) -> Response:
    res = resources(request)
    query = list(request.query_params.multi_items())
    params, errors = history_params(query)
    form = {
        "status": set(request.query_params.getlist("status")),
        **{k: request.query_params.get(k, "") for k in ("model", "created_after", "created_before", "meta")},
    }
    cards: list[dict[str, Any]] = []
    spend: dict[str, Any] | None = None
    days: dict[str, Any] | None = None
    next_cursor = None
    status_code = 200
    try:
        if errors:
            raise ValidationFailed(errors)
        f = parse_filter(params)
        async with res.engine.connect() as conn:
            spend, days = await spend_figures(conn, owner)
            rows, next_cursor = await list_jobs(conn, owner, f)
            outputs = await jobs.get_outputs(conn, [r.id for r in rows], owner=owner)
        cards = [card(job_dict(r, outputs.get(r.id, []), res.presign), outputs.get(r.id, [])) for r in rows]
    except ValidationFailed as exc:
        errors, status_code = list(exc.fields), exc.status_code
    kept = [(k, v) for k, v in query if k != "cursor"]
    older = "/?" + urlencode([*kept, ("cursor", next_cursor)]) if next_cursor else None
    running = [c["id"] for c in cards if not c["terminal"]]
    return page(
        request, "history.html", status_code, jobs=cards, errors=errors, form=form, older=older,
        newest="/?" + urlencode(kept),
        paged=any(k == "cursor" for k, _ in query),
        filtered=any(k != "cursor" and v.strip() for k, v in query),
        live_url=live_list_url(running), spend=spend, days=days,
        bulk_fields=[(k, v) for k, v in kept if k != "cursor" and v.strip()],  # the bulk form acts on this filter
        **chrome(request, owner),
    )


async def spend_figures(conn: AsyncConnection, owner: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The month's spend against the budget (GET /v1/owner's figures) and the last 30
    days' jobs and cost (GET /v1/usage's, by day), ready to draw (service/web/spend_overview.py)."""
    now = dt.datetime.now(dt.UTC)
    start, end = spend_overview.window(now)
    budget = (await owners.view(conn, owner, now))["budget"]
    usage = await usage_answer(conn, owner, start, end, "day")
    return spend_overview.budget_bar(budget), spend_overview.chart(usage, start)


async def live_list(request: Request) -> JSONResponse:
    """Fresh list rows for the history page's running jobs (polled by history_page.js)."""
    res = resources(request)
    owner = await _live_owner(request)
    # Ids this page handed out; anything else is a 404 before any query.
    ids = [checked_job_id(value) for value in request.query_params.getlist("id")[:MAX_LIMIT]]
    async with res.engine.connect() as conn:
        rows = await jobs_by_id(conn, owner, ids)
        outputs = await jobs.get_outputs(conn, [r.id for r in rows], owner=owner)
    cards = [card(job_dict(r, outputs.get(r.id, []), res.presign), outputs.get(r.id, [])) for r in rows]
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
        raise Unauthorized("the history page session has expired; sign in again")
    return owner


# --------------------------------------------------------------------------- one job


async def job_view(res: Resources, job_id: str, owner: str) -> dict[str, Any]:
    """The job with its events and callback deliveries, oldest first."""
    async with res.engine.connect() as conn:
        row = await jobs.get_job(conn, job_id, owner)
        outputs = (await jobs.get_outputs(conn, [row.id], owner=owner)).get(row.id, [])
        events = await job_events(conn, row.id, owner=owner)
        deliveries = await job_deliveries(conn, row.id, owner=owner)
    job = card(job_dict(row, outputs, res.presign), outputs)
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
    job = await job_view(resources(request), checked_job_id(request.path_params["job_id"]), owner)
    live_url = None if job["terminal"] else f"/jobs/{job['id']}/live"
    return page(request, "job.html", job=job, live_url=live_url, **chrome(request, owner))


async def live_job(request: Request) -> JSONResponse:
    """The job page's changing sections, re-rendered (polled by history_page.js)."""
    owner = await _live_owner(request)
    job = await job_view(resources(request), checked_job_id(request.path_params["job_id"]), owner)
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
    Mount("/static", app=StaticFiles(directory=WEB / "static"), name="static"),
]
