"""The web page at / over real HTTP: sign-in and its cookie, sign-out, CSRF, owner
isolation, escaping of user text, filters, live fragments and security headers.

(The same pages in a real browser: test_browser.py.)
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest
from markupsafe import escape

from tests.conftest import Service
from tests.integration.helpers import eventually, submit, wait_terminal
from tests.servers import WebhookCatcher

XSS_PROMPT = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
XSS_META = '"><svg onload=alert(1)>'


def csrf_field(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "the form carries no csrf field"
    return match.group(1)


def browser(service: Service, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Client:
    """A cookie-keeping client that behaves like a browser on the service's own pages:
    no Authorization header, Origin on every POST."""
    return httpx.Client(base_url=service.url, timeout=30, headers={"Origin": service.url, **(headers or {})},
                        **kwargs)


@contextlib.contextmanager
def sign_in(service: Service, key: str, **kwargs: Any) -> Iterator[httpx.Client]:
    """A browser-like client signed in through the form, as a person would."""
    with browser(service, **kwargs) as web:
        form = web.get("/login")
        assert form.status_code == 200
        answer = web.post("/login", data={"api_key": key, "csrf": csrf_field(form.text), "next": "/"})
        assert answer.status_code == 303, answer.text
        assert web.cookies.get("wsj_session")
        yield web


@pytest.fixture
def web(service: Service, owner_key: str) -> Iterator[httpx.Client]:
    """A signed-in browser-like client for a fresh owner."""
    with sign_in(service, owner_key) as client:
        yield client


def image_srcs(page: str) -> list[str]:
    return [html.unescape(src) for src in re.findall(r'<img src="([^"]+)"', page)]


def image_keys(page: str) -> list[str]:
    """The S3 keys of a page's images (their presigned query strings differ per request)."""
    return [urlsplit(src).path.split("/", 2)[2] for src in image_srcs(page)]


def set_cookie_headers(response: httpx.Response, name: str) -> list[str]:
    return [h for h in response.headers.get_list("set-cookie") if h.startswith(name + "=")]


# --------------------------------------------------------------------------- sign in / out


def test_history_page_sends_a_visitor_without_a_session_to_sign_in(service: Service) -> None:
    with browser(service) as web:
        answer = web.get("/?status=completed")
        assert answer.status_code == 303
        target = urlsplit(answer.headers["location"])
        assert target.path == "/login"
        assert parse_qs(target.query)["next"] == ["/?status=completed"]
        # Another owner's job page or a live fragment shows nothing without a session either.
        assert web.get("/jobs/job_whatever").status_code == 303
        assert web.get("/jobs/job_whatever/live").status_code == 401


def test_sign_in_sets_an_httponly_samesite_cookie_holding_a_session_not_the_key(
    service: Service, owner_key: str, sql: psycopg.Connection[Any]
) -> None:
    with browser(service) as web:
        form = web.get("/login")
        answer = web.post("/login", data={"api_key": owner_key, "csrf": csrf_field(form.text), "next": "/"})
        assert answer.status_code == 303 and answer.headers["location"] == "/"
        [cookie] = set_cookie_headers(answer, "wsj_session")
        flags = [part.strip().lower() for part in cookie.split(";")]
        assert "httponly" in flags
        assert "samesite=lax" in flags
        assert "path=/" in flags
        assert "secure" not in flags  # plain http here: a Secure cookie would never come back
        token = web.cookies["wsj_session"]
        assert owner_key not in cookie and token != owner_key
        # Only the token's hash is stored, tied to the owner.
        rows = sql.execute("SELECT token_hash, owner FROM dashboard_sessions WHERE token_hash = %s",
                           (hashlib.sha256(token.encode()).hexdigest(),)).fetchall()
        assert rows == [(hashlib.sha256(token.encode()).hexdigest(), service.keys[owner_key])]
        assert sql.execute("SELECT count(*) FROM dashboard_sessions WHERE token_hash = %s", (token,)).fetchone() == (0,)
        page = web.get("/")
        assert page.status_code == 200
        assert service.keys[owner_key] in page.text  # the header names who is signed in


def test_cookies_are_secure_when_the_request_came_over_https(service: Service, owner_key: str) -> None:
    # uvicorn trusts X-Forwarded-Proto from loopback, as from a TLS-terminating proxy.
    https = {"X-Forwarded-Proto": "https", "Origin": service.url.replace("http://", "https://")}
    with browser(service, headers=https) as web:
        form = web.get("/login")
        [csrf_cookie] = set_cookie_headers(form, "wsj_csrf")
        assert "secure" in [part.strip().lower() for part in csrf_cookie.split(";")]
        # The test talks plain http to uvicorn, so hand the Secure cookie back itself.
        cookie = "wsj_csrf=" + csrf_cookie.split(";")[0].split("=", 1)[1]
        answer = web.post("/login", data={"api_key": owner_key, "csrf": csrf_field(form.text)},
                          headers={"Cookie": cookie})
        assert answer.status_code == 303
        [session_cookie] = set_cookie_headers(answer, "wsj_session")
        assert "secure" in [part.strip().lower() for part in session_cookie.split(";")]


@pytest.mark.parametrize(
    ("key", "status", "rule"),
    [("", 422, "is required"), ("wsj_not-a-real-key", 401, "is invalid or revoked")],
    ids=["empty", "unknown"],
)
def test_sign_in_with_a_bad_key_names_the_field_and_the_rule(
    service: Service, key: str, status: int, rule: str
) -> None:
    with browser(service) as web:
        form = web.get("/login")
        answer = web.post("/login", data={"api_key": key, "csrf": csrf_field(form.text)})
        assert answer.status_code == status
        assert "<code>api_key</code> " + rule in answer.text
        assert "wsj_session" not in web.cookies


@pytest.mark.parametrize(
    ("target", "lands_on"),
    [("//evil.example/x", "/"), ("https://evil.example/", "/"), ("/\\evil.example", "/"),
     ("/?model=wavespeed-ai%2Fflux-dev-lora", "/?model=wavespeed-ai%2Fflux-dev-lora")],
    ids=["scheme-relative", "absolute", "backslash", "own-path"],
)
def test_sign_in_only_redirects_to_paths_on_this_site(
    service: Service, owner_key: str, target: str, lands_on: str
) -> None:
    with browser(service) as web:
        form = web.get("/login")
        answer = web.post("/login", data={"api_key": owner_key, "csrf": csrf_field(form.text), "next": target})
        assert answer.status_code == 303
        assert answer.headers["location"] == lands_on


def test_sign_out_ends_the_session_on_the_server(
    service: Service, owner_key: str, sql: psycopg.Connection[Any]
) -> None:
    with sign_in(service, owner_key) as web:
        token = web.cookies["wsj_session"]
        page = web.get("/")
        answer = web.post("/logout", data={"csrf": csrf_field(page.text)})
        assert answer.status_code == 303 and answer.headers["location"] == "/login"
        [cleared] = set_cookie_headers(answer, "wsj_session")
        assert "max-age=0" in cleared.lower()
        digest = hashlib.sha256(token.encode()).hexdigest()
        left = sql.execute("SELECT count(*) FROM dashboard_sessions WHERE token_hash = %s", (digest,)).fetchone()
        assert left == (0,)
        # The old cookie, replayed, opens nothing.
        with browser(service, cookies={"wsj_session": token}) as replay:
            assert replay.get("/").status_code == 303


def test_a_revoked_key_or_an_expired_session_signs_the_browser_out(
    service: Service, sql: psycopg.Connection[Any]
) -> None:
    for how in ("revoke", "expire"):
        key = service.new_key()
        with sign_in(service, key) as web:
            assert web.get("/").status_code == 200
            if how == "revoke":
                sql.execute("UPDATE api_keys SET revoked_at = now() WHERE key_hash = %s",
                            (hashlib.sha256(key.encode()).hexdigest(),))
            else:
                digest = hashlib.sha256(web.cookies["wsj_session"].encode()).hexdigest()
                sql.execute("UPDATE dashboard_sessions SET expires_at = now() - interval '1 second' "
                            "WHERE token_hash = %s", (digest,))
            assert web.get("/").status_code == 303, how
            assert web.get("/v1/jobs").status_code == 401, how


# --------------------------------------------------------------------------- CSRF


@pytest.mark.parametrize(
    ("case", "origin", "token_from"),
    [
        ("no form token", None, "none"),
        ("token not matching the cookie", None, "other"),
        ("posted from another site", "http://evil.example", "page"),
        ("opaque origin", "null", "page"),
    ],
)
def test_sign_in_form_refuses_cross_site_posts(
    service: Service, owner_key: str, case: str, origin: str | None, token_from: str
) -> None:
    with browser(service) as web:
        form = web.get("/login")
        data = {"api_key": owner_key}
        if token_from == "page":
            data["csrf"] = csrf_field(form.text)
        elif token_from == "other":
            data["csrf"] = "x" * 43
        headers = {"Origin": origin} if origin else {}
        answer = web.post("/login", data=data, headers=headers)
        assert answer.status_code == 403, case
        assert "<code>csrf</code>" in answer.text
        assert "wsj_session" not in web.cookies


def test_sign_in_form_without_its_cookie_is_refused(service: Service, owner_key: str) -> None:
    # A page elsewhere can copy a token from its own visit, but not plant the cookie.
    with browser(service) as attacker:
        token = csrf_field(attacker.get("/login").text)
    with browser(service) as victim:
        answer = victim.post("/login", data={"api_key": owner_key, "csrf": token})
        assert answer.status_code == 403


def test_sign_out_needs_the_pages_form_token(service: Service, owner_key: str) -> None:
    with sign_in(service, owner_key) as web:
        for data, headers in (({}, {}), ({"csrf": "forged"}, {}),
                              ({"csrf": csrf_field(web.get("/").text)}, {"Origin": "http://evil.example"})):
            answer = web.post("/logout", data=data, headers=headers)
            assert answer.status_code == 403
            assert "<code>csrf</code>" in answer.text
        assert web.get("/").status_code == 200  # still signed in


def test_session_cookie_reads_the_api_but_never_changes_anything(service: Service, web: httpx.Client,
                                                                   api: httpx.Client) -> None:
    job = submit(api)
    assert web.get(f"/v1/jobs/{job['id']}").json()["id"] == job["id"]
    # A cookie rides along on cross-site requests: writes need the Authorization header.
    answer = web.post("/v1/jobs", json={"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "x"}})
    assert answer.status_code == 401
    assert web.post(f"/v1/jobs/{job['id']}/cancel").status_code == 401


# --------------------------------------------------------------------------- isolation


def test_owners_see_only_their_own_jobs(service: Service, web: httpx.Client, api: httpx.Client) -> None:
    mine = wait_terminal(api, submit(api, prompt="mine")["id"])
    with service.client() as other_api:
        theirs = wait_terminal(other_api, submit(other_api, prompt="theirs")["id"])
    listing = web.get("/").text
    assert f'href="/jobs/{mine["id"]}"' in listing
    assert theirs["id"] not in listing
    assert web.get(f"/jobs/{mine['id']}").status_code == 200
    other = web.get(f"/jobs/{theirs['id']}")
    assert other.status_code == 404  # not 403: ids leak nothing
    assert "theirs" not in other.text
    assert web.get(f"/jobs/{theirs['id']}/live").status_code == 404
    live = web.get("/live", params=[("id", theirs["id"]), ("id", mine["id"])]).json()
    assert list(live["sections"]) == [f"job-{mine['id']}"]


# --------------------------------------------------------------------------- escaping


def test_user_text_renders_inert_on_every_page_and_fragment(web: httpx.Client, api: httpx.Client) -> None:
    job = submit(api, prompt=XSS_PROMPT, metadata={"note": XSS_META, "<em>key</em>": "keys too"})
    bodies = {
        "history": web.get("/").text,
        "job": web.get(f"/jobs/{job['id']}").text,
        "live job": "".join(web.get(f"/jobs/{job['id']}/live").json()["sections"].values()),
        "live list": "".join(web.get("/live", params={"id": job["id"]}).json()["sections"].values()),
    }
    for name, body in bodies.items():
        for raw in ("<script>window.__pwned", "<img src=x", "<svg onload", "<em>"):
            assert raw not in body, (name, raw)
        if name != "live job":  # its sections (status, outputs, events...) hold no user text
            assert str(escape(XSS_PROMPT)) in body, name  # shown as text
    assert str(escape(XSS_META)) in bodies["job"]


def test_pages_load_nothing_from_outside_and_forbid_it(web: httpx.Client, api: httpx.Client) -> None:
    job = wait_terminal(api, submit(api)["id"])
    s3_origin = "{0.scheme}://{0.netloc}".format(urlsplit(job["outputs"][0]["url"]))
    for path in ("/", f"/jobs/{job['id']}"):
        answer = web.get(path)
        csp = answer.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
        assert f"img-src 'self' {s3_origin}" in csp
        assert "frame-ancestors 'none'" in csp
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["cache-control"] == "no-store"
        # Every URL the page refers to is this site's own, or the presigned S3 object.
        for url in re.findall(r'(?:src|href|action)="([^"]+)"', answer.text):
            assert url.startswith(("/", s3_origin + "/")), (path, url)
        assert '<meta name="viewport"' in answer.text
    for asset, kind in (("/static/history_page.css", "text/css"), ("/static/history_page.js", "javascript")):
        served = web.get(asset)
        assert served.status_code == 200 and kind in served.headers["content-type"]
    assert web.get("/static/../settings.py").status_code == 404


# --------------------------------------------------------------------------- history


def test_history_filters_like_the_api_and_names_bad_filters(web: httpx.Client, api: httpx.Client) -> None:
    a = submit(api, prompt="batch one", metadata={"batch": "b1"})
    b = submit(api, prompt="batch two", metadata={"batch": "b2"}, model="wavespeed-ai/flux-krea-dev-lora")
    for job in (a, b):
        wait_terminal(api, job["id"])

    def ids(params: Any) -> set[str]:
        page = web.get("/", params=params)
        assert page.status_code == 200, page.text
        return set(re.findall(r'href="/jobs/(job_[0-9a-z]+)"', page.text))

    assert ids({}) == {a["id"], b["id"]}
    assert ids({"meta": "batch=b1"}) == {a["id"]}
    assert ids({"metadata.batch": "b2"}) == {b["id"]}
    assert ids({"model": "wavespeed-ai/flux-krea-dev-lora"}) == {b["id"]}
    assert ids([("status", "completed"), ("status", "failed")]) == {a["id"], b["id"]}
    assert ids({"status": "queued"}) == set()
    assert ids({"created_after": "2999-01-01T00:00"}) == set()
    # Empty form fields mean "any", as a browser submits them.
    assert ids({"model": "", "created_after": "", "created_before": "", "meta": ""}) == {a["id"], b["id"]}
    # One per page: the older link walks the keyset cursor.
    first = web.get("/", params={"limit": "1"})
    older = re.search(r'href="([^"]+)" rel="next"', first.text)
    assert older
    second = web.get(html.unescape(older.group(1)))
    assert set(re.findall(r'href="/jobs/(job_[0-9a-z]+)"', first.text + second.text)) == {a["id"], b["id"]}

    for params, field in (({"status": "bogus"}, "status"), ({"meta": "no-equals"}, "meta"),
                          ({"created_after": "yesterday"}, "created_after"), ({"limit": "0"}, "limit"),
                          ({"cursor": "!!"}, "cursor"), ({"colour": "red"}, "colour")):
        page = web.get("/", params=params)
        assert page.status_code == 422, params
        assert f"<code>{field}</code>" in page.text, params


def test_history_shows_the_stored_thumbnail(web: httpx.Client, api: httpx.Client) -> None:
    job = wait_terminal(api, submit(api)["id"])
    thumb = job["outputs"][0]["thumbnail_url"]
    assert thumb and thumb != job["outputs"][0]["url"]
    page = web.get("/").text
    [src] = image_srcs(page)
    assert urlsplit(src).path == urlsplit(thumb).path
    image = httpx.get(src)
    assert image.status_code == 200 and image.content[:4] == b"RIFF" and image.content[8:12] == b"WEBP"


# --------------------------------------------------------------------------- one job


def test_job_page_shows_input_outputs_events_and_callback_attempts(
    service: Service, web: httpx.Client, api: httpx.Client
) -> None:
    with WebhookCatcher() as catcher:
        hook = catcher.url("/hooks")
        job = submit(api, prompt="a lighthouse at dusk", metadata={"user_id": "u_42"},
                     callback_url=hook, input={"num_images": 2, "seed": 1234})
        done = wait_terminal(api, job["id"])
        assert done["status"] == "completed"
        catcher.wait_for(1, timeout=20)
        eventually(lambda: api.get(f"/v1/jobs/{job['id']}").json()["callback"]["status"] == "delivered", timeout=20)
    page = web.get(f"/jobs/{job['id']}")
    assert page.status_code == 200
    text = page.text
    assert "a lighthouse at dusk" in text
    assert "<dt>seed</dt><dd>1234</dd>" in text and "<dt>user_id</dt><dd>u_42</dd>" in text
    # Full size, from the stored objects (presigned again for this page).
    assert image_keys(text) == [o["key"] for o in done["outputs"]]
    events = api.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    for event in events:
        assert f'<code class="etype">{event["type"]}</code>' in text
    assert "callback.delivered" in text or "delivered" in text
    assert f'<code class="url">{escape(hook)}</code>' in text
    assert 'class="delivery-delivered"' in text
    assert "data-live-url" not in text  # a finished job needs no polling


def test_a_running_job_is_polled_until_its_fragments_say_done(
    service: Service, web: httpx.Client, api: httpx.Client, sim_defaults: Any
) -> None:
    from tests.conftest import sim_config

    finished_before = wait_terminal(api, submit(api)["id"])
    sim_config(sim_defaults, completion_delay=1.5)
    job = submit(api)
    # The list's poll asks only for rows still running; a finished one is sent once more, then dropped.
    both = web.get("/live", params=[("id", job["id"]), ("id", finished_before["id"])]).json()
    assert set(both["sections"]) == {f"job-{job['id']}", f"job-{finished_before['id']}"}
    assert both["done"] is False and both["next_url"] == f"/live?id={job['id']}"
    page = web.get(f"/jobs/{job['id']}").text
    assert f'data-live-url="/jobs/{job["id"]}/live"' in page
    listing = web.get("/").text
    assert f'data-live-url="/live?id={job["id"]}"' in listing
    first = web.get(f"/jobs/{job['id']}/live").json()
    assert first["done"] is False
    assert set(first["sections"]) == {"status", "summary", "outputs", "events", "callbacks"}

    def finished() -> dict[str, Any] | None:
        live = web.get(f"/jobs/{job['id']}/live").json()
        return live if live["done"] else None

    last = eventually(finished, timeout=30, interval=0.3)
    assert web.get("/live", params={"id": job["id"]}).json()["next_url"] is None
    assert 'data-status="completed"' in last["sections"]["status"]
    assert "<img src=" in last["sections"]["outputs"]


def test_a_missing_job_is_an_html_404_page(web: httpx.Client) -> None:
    answer = web.get("/jobs/job_00000000000000000000000000")
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("text/html")
    assert "no job with id" in answer.text
