"""The history page in a real browser: Debian's headless Chromium driven by Playwright
(``executable_path`` points at the system browser, so nothing is downloaded).

A person signs in, filters the history, opens a job and sees its images load, watches a
running job turn completed without reloading, and signs out. Screenshots of the list and
of a job page land in test-output/. Skips, saying why, where Chromium or Playwright is
missing; .ci/run installs both.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import Service, sim_config
from tests.integration.helpers import submit, wait_terminal
from tests.integration.test_budget import set_owner

# Left out of the fast loop (pytest -m "not slow", docs/development.md):
# a headless browser.
pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set CHROMIUM_PATH)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'")

# Loopback only: no network beyond this machine, no Google services, a fresh profile.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
DESKTOP = {"viewport": {"width": 1200, "height": 820}}
WAIT_MS = 30_000

ALL_IMAGES_LOADED = """() => {
  const images = [...document.querySelectorAll('main img')];
  return images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Tab:
    """A page plus what the browser complained about (console errors, CSP refusals,
    failed requests): the pages must load cleanly."""

    def __init__(self, context: Any) -> None:
        self.page = context.new_page()
        self.problems: list[str] = []
        self.page.on("console", lambda m: self.problems.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.problems.append(str(e)))
        self.page.on("requestfailed", self._failed)

    def _failed(self, request: Any) -> None:
        # An image whose element a live update replaced mid-load is aborted on purpose.
        if request.failure != "net::ERR_ABORTED":
            self.problems.append(f"{request.url}: {request.failure}")


@pytest.fixture
def phone(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(**PHONE)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def desktop(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(**DESKTOP)
    try:
        yield context
    finally:
        context.close()


def new_key(service: Service) -> str:
    """service.new_key runs its own event loop; Playwright's sync API keeps one marked
    running on this thread, so make the key on another."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(service.new_key).result(timeout=30)


def sign_in(tab: Tab, service: Service, key: str, path: str = "/") -> None:
    tab.page.goto(service.url + path)
    assert "/login" in tab.page.url  # no session yet: sent to the sign-in form
    tab.page.fill("#api_key", key)
    tab.page.click("button[type=submit]")
    tab.page.wait_for_url(service.url + path)


def no_horizontal_scroll(tab: Tab) -> bool:
    return bool(tab.page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"))


def test_a_person_signs_in_filters_opens_a_job_and_sees_its_images(
    service: Service, desktop: Any, phone: Any, output_dir: Path, sim_defaults: Any
) -> None:
    key = new_key(service)
    with service.client(key) as api:
        fox = submit(api, prompt="a red fox in fresh snow, golden hour", metadata={"batch": "winter"},
                     input={"num_images": 2, "size": "384*256"})
        owl = submit(api, prompt="a snowy owl on a fence post", metadata={"batch": "winter"},
                     model="wavespeed-ai/flux-krea-dev-lora", input={"output_format": "png"})
        xss = submit(api, prompt='<img src=x onerror="window.__pwned = 1">neon city at night',
                     metadata={"batch": "summer"})
        done = [wait_terminal(api, job["id"]) for job in (fox, owl, xss)]
        sim_config(sim_defaults, failure_rate=1.0)
        failed = wait_terminal(api, submit(api, prompt="an impossible staircase", metadata={"batch": "summer"})["id"])
        sim_config(sim_defaults, failure_rate=0.0)
    assert [j["status"] for j in done] == ["completed"] * 3 and failed["status"] == "failed"

    tab = Tab(desktop)
    page = tab.page
    sign_in(tab, service, key)
    assert page.locator(".jobs > li").count() == 4
    page.wait_for_function(ALL_IMAGES_LOADED, timeout=WAIT_MS)  # each completed job's thumbnail
    widths = page.eval_on_selector_all(".jobs img", "images => images.map(i => i.naturalWidth)")
    assert len(widths) == 3 and all(w > 0 for w in widths)
    # User text stays text: the prompt's markup is visible as characters and never ran.
    assert page.get_by_text('<img src=x onerror="window.__pwned = 1">neon city at night').count() == 1
    assert page.evaluate("() => window.__pwned") is None
    page.click(".filters summary")  # the filters fold away until used
    page.locator("body").screenshot(path=str(output_dir / "history-page.png"))

    # Filter: completed jobs of batch "winter" only.
    page.check("input[name=status][value=completed]")
    page.fill("input[name=meta]", "batch=winter")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**/?*meta=batch*")
    rows = page.locator(".jobs > li")
    assert rows.count() == 2
    assert sorted(rows.evaluate_all("rows => rows.map(r => r.dataset.section)")) == sorted(
        [f"job-{fox['id']}", f"job-{owl['id']}"])
    page.wait_for_function(ALL_IMAGES_LOADED, timeout=WAIT_MS)
    page.screenshot(path=str(output_dir / "history-page-filtered.png"))

    # Open the fox: its full-size outputs load, its story is told.
    page.click(f"a[href='/jobs/{fox['id']}']")
    page.wait_for_url(f"**/jobs/{fox['id']}")
    page.wait_for_function(ALL_IMAGES_LOADED, timeout=WAIT_MS)
    sizes = page.eval_on_selector_all(".outputs img", "images => images.map(i => [i.naturalWidth, i.naturalHeight])")
    assert sizes == [[384, 256], [384, 256]]
    assert page.inner_text("[data-section=status]").strip() == "completed"
    events = page.locator(".timeline li").all_inner_texts()
    assert any("job.created" in e for e in events) and any("output.stored" in e for e in events)
    assert "batch" in page.inner_text("main") and "winter" in page.inner_text("main")
    page.screenshot(path=str(output_dir / "job-page.png"), full_page=True)
    assert tab.problems == []

    # The same pages on a phone: nothing wider than the screen.
    mobile = Tab(phone)
    sign_in(mobile, service, key, f"/jobs/{fox['id']}")
    mobile.page.wait_for_function(ALL_IMAGES_LOADED, timeout=WAIT_MS)
    assert no_horizontal_scroll(mobile)
    mobile.page.screenshot(path=str(output_dir / "job-page-phone.png"))
    mobile.page.goto(service.url + "/")
    mobile.page.wait_for_function(ALL_IMAGES_LOADED, timeout=WAIT_MS)
    assert no_horizontal_scroll(mobile)
    mobile.page.screenshot(path=str(output_dir / "history-page-phone.png"))
    assert mobile.problems == []

    # Sign out: the session is gone, the history is behind the form again.
    page.click(".signout button")
    page.wait_for_url("**/login")
    page.goto(service.url + "/")
    assert "/login" in page.url


def wait_for_task_id(api: httpx.Client, job_id: str) -> str:
    """The job's provider task id, once the submitter has sent it (bounded: 60 s)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        task_id = api.get(f"/v1/jobs/{job_id}").json()["provider"]["task_id"]
        if task_id:
            return str(task_id)
        time.sleep(0.1)
    raise AssertionError(f"{job_id} was not sent to the simulator within 60 s")


def test_a_running_job_turns_completed_without_a_reload(
    service: Service, desktop: Any, output_dir: Path, sim_defaults: Any
) -> None:
    key = new_key(service)
    # Held running until both pages are up (a loaded machine took > 4 s to load them, and
    # the job had ended first), then let go through the simulator's control endpoint.
    sim_config(sim_defaults, completion_delay=120.0)
    with service.client(key) as api:
        job = submit(api, prompt="a paper boat on a rain puddle")
        task_id = wait_for_task_id(api, job["id"])
    history, detail = Tab(desktop), Tab(desktop)
    sign_in(history, service, key)
    detail.page.goto(f"{service.url}/jobs/{job['id']}")
    for tab in (history, detail):
        # Still running when the page loaded; a marker proves the page is never reloaded.
        assert tab.page.locator("[data-status=completed]").count() == 0
        tab.page.evaluate("() => { window.__sameDocument = true; }")
    httpx.post(f"{sim_defaults.url}/_sim/tasks/{task_id}/finish", timeout=5).raise_for_status()

    detail.page.wait_for_selector("[data-section=status] [data-status=completed]", timeout=WAIT_MS)
    detail.page.wait_for_function(ALL_IMAGES_LOADED, timeout=WAIT_MS)
    history.page.wait_for_selector(f"[data-section='job-{job['id']}'] [data-status=completed]", timeout=WAIT_MS)
    history.page.wait_for_function(ALL_IMAGES_LOADED, timeout=WAIT_MS)
    for tab in (history, detail):
        assert tab.page.evaluate("() => window.__sameDocument") is True
        assert tab.page.evaluate("() => document.body.dataset.liveState") == "done"
        assert tab.problems == []
    assert "output.stored" in detail.page.inner_text("[data-section=events]")
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"}) as api:
        assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "completed"
    detail.page.screenshot(path=str(output_dir / "job-page-live.png"), full_page=True)


def test_a_person_previews_a_bulk_delete_and_the_confirm_button_cannot_be_pressed_twice(
    service: Service, desktop: Any
) -> None:
    """A confirmed bulk answers when its last batch is done (seconds for thousands of
    jobs, by BULK_TARGET_SECONDS): the button says it is working and is disabled the
    moment it is pressed, then the result page counts what changed."""
    key = new_key(service)
    with service.client(key) as api:
        ids = [submit(api, prompt=f"a lantern festival {i}", metadata={"album": "lanterns"})["id"] for i in range(2)]
        for job_id in ids:
            wait_terminal(api, job_id)
    tab = Tab(desktop)
    page = tab.page
    sign_in(tab, service, key, "/?meta=album%3Dlanterns")
    page.select_option(".bulk-bar select[name=action]", "delete")
    page.click(".bulk-bar button[type=submit]")
    page.wait_for_selector("form.confirm")
    assert "Delete 2 jobs?" in page.inner_text("main")
    # Pressed from inside the page so the state is read in the same task as the submit
    # event, before the navigation it starts.
    state = page.evaluate("""() => {
        const button = document.querySelector('form.confirm button[type=submit]');
        button.click();
        return [button.disabled, button.textContent];
    }""")
    assert state == [True, "Working\u2026"]
    page.wait_for_selector("text=2 of 2 matching jobs changed", timeout=WAIT_MS)
    assert tab.problems == []
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"}) as api:
        assert all(api.get(f"/v1/jobs/{i}").json()["deleted_reason"] == "request" for i in ids)


def test_the_history_page_draws_the_owners_spend_and_last_30_days_as_the_api_reports_them(
    service: Service, desktop: Any, phone: Any, output_dir: Path,
) -> None:
    owner = f"owner_{uuid.uuid4().hex[:8]}"
    key = new_key_for(service, owner)
    set_owner(service.settings.database_url or "", owner, monthly_budget_usd=Decimal("0.20"))
    # Earlier days as the ledger holds them: spend rows (it is append-only, and only
    # completed jobs leave spend), so the chart has more than today to draw.
    today = dt.datetime.now(dt.UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    with psycopg.connect(service.settings.database_url or "", autocommit=True) as conn:
        for days_ago, jobs in ((3, 2), (11, 5), (40, 4)):  # the last is outside the 30 days
            for _ in range(jobs):
                at = today - dt.timedelta(days=days_ago)
                conn.execute("INSERT INTO ledger (owner, job_id, kind, amount_usd, images, model, reserved_at, at) "
                             "VALUES (%s, %s, 'spend', 0.015, 1, 'wavespeed-ai/flux-dev-lora', %s, %s)",
                             (owner, f"job_past_{uuid.uuid4().hex}", at, at))
    with service.client(key) as api:
        made = [submit(api, prompt=f"a paper boat number {n}", input={"size": "256*256"}) for n in range(3)]
        done = [wait_terminal(api, job["id"]) for job in made]
        assert [j["status"] for j in done] == ["completed"] * 3
        budget = api.get("/v1/owner").json()["budget"]

    tab = Tab(desktop)
    sign_in(tab, service, key)
    page = tab.page
    bars = page.eval_on_selector_all("#days-chart .day", "gs => gs.map(g => ({...g.dataset}))")
    assert len(bars) == 30
    first, last = bars[0]["day"], bars[-1]["day"]
    assert last == today.strftime("%Y-%m-%d")
    end = (dt.date.fromisoformat(last) + dt.timedelta(days=1)).isoformat()
    with service.client(key) as api:
        usage = api.get("/v1/usage", params={"from": f"{first}T00:00:00Z", "to": f"{end}T00:00:00Z",
                                             "group_by": "day"}).json()
    drawn = {b["day"]: (int(b["jobs"]), b["costUsd"]) for b in bars if b["jobs"] != "0"}
    assert drawn == {row["key"]: (row["jobs"], row["cost_usd"]) for row in usage["data"]}
    assert sum(n for n, _ in drawn.values()) == usage["total"]["jobs"] == 3 + 2 + 5
    shown = page.eval_on_selector("#budget-bar", "b => ({...b.dataset})")
    assert (shown["monthlyUsd"], shown["spentUsd"], shown["reservedUsd"], shown["remainingUsd"]) == (
        budget["monthly_usd"], budget["spent_usd"], budget["reserved_usd"], budget["remaining_usd"])
    spent_width = float(page.eval_on_selector("#budget-bar .spent", "r => r.getAttribute('width')"))
    assert abs(spent_width - float(Decimal(budget["spent_usd"]) / Decimal(budget["monthly_usd"]) * 100)) < 0.01
    page.locator("#spend").screenshot(path=str(output_dir / "history-spend.png"))

    # Each job's page names its trace.
    page.goto(f"{service.url}/jobs/{done[0]['id']}")
    assert page.inner_text("#trace-id").strip() == done[0]["trace_id"]
    assert tab.problems == []

    mobile = Tab(phone)
    sign_in(mobile, service, key)
    assert no_horizontal_scroll(mobile) and mobile.page.locator("#days-chart .day").count() == 30
    assert mobile.problems == []


def new_key_for(service: Service, owner: str) -> str:
    """A key of ``owner`` (made on another thread: see new_key)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(service.new_key, owner).result(timeout=30)
