"""How the history page is rendered: the Jinja2 environment (autoescape on: prompts and
metadata are user text), its filters, and the security headers of every page.

One stylesheet and one small script under /static, no third-party assets, and a
Content-Security-Policy that allows nothing else. Images load from the presigned S3
URLs the API hands out too, so S3's origin is the one exception.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from service.api.plumbing.auth import resources
from service.domain.schemas import MODELS
from service.domain.states import TERMINAL, JobStatus
from service.resources import Resources

WEB = Path(__file__).resolve().parent  # service/web/: templates/ and static/


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
        loader=FileSystemLoader(WEB / "templates"),
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


