"""The history page's bulk actions: act on the page's current filter.

``POST /bulk`` with the filter form's fields and an action first runs a dry run and
shows how many jobs match, asking for confirmation; only the confirmed form (the same
fields plus ``confirm``) acts. Both steps carry the session's form token and must come
from this origin, like sign-out. The action itself is service/work/bulk.py's, with the
same filter meaning, bounds and batches as ``POST /v1/jobs/bulk``.
"""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.api.plumbing.auth import resources
from service.db import bulk
from service.db import page_sessions as sessions
from service.domain.errors import PayloadTooLarge
from service.web.history_page import history_params
from service.web.rendering import page
from service.web.sign_in import MAX_FORM_BYTES, Forbidden, chrome, same_origin, signed_in
from service.work.bulk import run_bulk

FILTER_FIELDS = ("status", "model", "created_after", "created_before", "meta")
VERBS = {"cancel": "Cancel", "retry": "Retry", "redeliver": "Resend the callback of", "delete": "Delete"}


async def bulk_page(request: Request, owner: str) -> Response:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise PayloadTooLarge(f"the form must be at most {MAX_FORM_BYTES} bytes")
    form = await request.form(max_files=0, max_fields=40)
    fields = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    token = request.cookies.get(sessions.COOKIE, "")
    csrf_ok = sessions.tokens_match(sessions.form_token(token), str(form.get("csrf", "")))
    if not same_origin(request) or not csrf_ok:
        raise Forbidden()
    kept = [(k, v) for k, v in fields if k in FILTER_FIELDS and v.strip()]
    params, errors = history_params(kept)
    action = str(form.get("action", ""))
    confirmed = form.get("confirm") == "yes"
    request_ = bulk.bulk_request(action, params, not confirmed, errors)
    res = resources(request)
    result = await run_bulk(res.engine, owner, request_, res.settings.bulk_batch_size, res.pacer,
                                 res.settings.bulk_pause_factor, res.settings.bulk_target_seconds,
                                 tracing=res.tracing)
    if result["affected"]:
        res.notifications.kick()
    return page(request, "bulk.html", result=result, verb=VERBS[action], action=action, kept=kept,
                back="/?" + urlencode(kept), **chrome(request, owner))


routes: list[BaseRoute] = [Route("/bulk", signed_in(bulk_page), methods=["POST"], include_in_schema=False)]
