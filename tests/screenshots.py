"""``python -m tests.screenshots``: make README's screenshot of the history page.

The real stack on loopback (a throwaway database on the machine's Postgres, moto's S3
server, the WaveSpeed simulator, the service), a handful of jobs a user would recognise
(ordinary prompts and metadata, one canceled, one failed), then Debian's Chromium
driven by Playwright (``executable_path``: nothing is downloaded) signs in and shoots the
history page with the filters open, showing the bulk-action bar of the current filter,
and the page's spend overview. The owner has a monthly budget, and its earlier weeks of
use are written as the ledger would hold them (spend rows on past days: the script runs
for a minute, the chart shows 30 days). Writes docs/screenshots/history.png and
docs/screenshots/spend.png.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import sys
from pathlib import Path

from devtools.devstack import DEV_ACCESS_KEY, DEV_SECRET_KEY, embedded_s3
from devtools.serverthread import ServerThread
from devtools.simulator.app import create_simulator_app
from devtools.simulator.config import SimulatorConfig
from tests.conftest import BUCKET, SIM_SECRET, SYSTEM_POSTGRES, fresh_database, run_service, sim_config
from tests.integration.helpers import submit, wait_terminal

OUT = Path(__file__).resolve().parent.parent / "docs" / "screenshots" / "history.png"
SPEND_OUT = OUT.with_name("spend.png")
# Completed jobs on each earlier day (days ago → jobs), as a month of steady use leaves them.
EARLIER = {1: 6, 2: 9, 3: 4, 5: 12, 6: 7, 8: 3, 9: 10, 10: 8, 12: 5, 13: 11, 15: 6, 16: 9, 19: 4, 20: 8,
           22: 13, 23: 7, 26: 5, 27: 9, 29: 6}


def seed_history(database_url: str, owner: str) -> None:
    """The owner's budget, and spend rows on earlier days (the ledger is append-only)."""
    import datetime as dt

    import psycopg

    noon = dt.datetime.now(dt.UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE owners SET monthly_budget_usd = 2.50 WHERE name = %s", (owner,))
        for days_ago, jobs in EARLIER.items():
            at = noon - dt.timedelta(days=days_ago)
            for n in range(jobs):
                conn.execute(
                    "INSERT INTO ledger (owner, job_id, kind, amount_usd, images, model, reserved_at, at) "
                    "VALUES (%s, %s, 'spend', 0.015, 1, 'wavespeed-ai/flux-dev-lora', %s, %s)",
                    (owner, f"job_earlier_{days_ago}_{n}", at, at))
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
JOBS = [
    ("a red fox curled up in fresh snow, golden hour, 85mm", {"campaign": "winter-catalog", "user_id": "u_1042"},
     {"num_images": 2, "size": "384*256"}),
    ("ceramic coffee mug on a walnut desk, soft window light, product photo",
     {"campaign": "shop-listings", "user_id": "u_2210"}, {"size": "320*320"}),
    ("watercolor map of a small harbour town, pastel colours", {"campaign": "travel-blog", "user_id": "u_0087"},
     {"size": "384*256", "output_format": "png"}),
    ("portrait of an old fisherman mending nets, film grain", {"campaign": "travel-blog", "user_id": "u_0087"},
     {"size": "256*320"}),
    ("isometric illustration of a cozy reading nook with plants", {"campaign": "app-onboarding", "user_id": "u_3301"},
     {"size": "320*320", "output_format": "webp"}),
]


def main() -> int:
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("AWS_ACCESS_KEY_ID", DEV_ACCESS_KEY)
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", DEV_SECRET_KEY)
    config = SimulatorConfig(completion_delay=0.3, processing_delay=0.05, webhook_secret=SIM_SECRET, seed=11)
    with fresh_database(SYSTEM_POSTGRES) as db, embedded_s3() as s3, \
            ServerThread(create_simulator_app(config)) as sim, run_service(db, s3, sim.url) as svc:
        import boto3

        boto3.client("s3", endpoint_url=s3, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        key = svc.new_key("studio")
        seed_history(db, "studio")
        with svc.client(key) as api:
            for prompt, metadata, extra in JOBS:
                wait_terminal(api, submit(api, prompt=prompt, metadata=metadata, input=extra)["id"])
            sim_config(sim, failure_rate=1.0)
            wait_terminal(api, submit(api, prompt="a glass chess set on a marble board, macro",
                                      metadata={"campaign": "shop-listings", "user_id": "u_2210"})["id"])
            sim_config(sim, failure_rate=0.0, completion_delay=60)
            slow = submit(api, prompt="aerial view of terraced rice fields at sunrise",
                          metadata={"campaign": "travel-blog", "user_id": "u_0087"})
            api.post(f"/v1/jobs/{slow['id']}/cancel")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(svc.url + "/?meta=campaign%3Dtravel-blog")
            page.fill("#api_key", key)
            page.click("button[type=submit]")
            page.wait_for_url(svc.url + "/?meta=campaign%3Dtravel-blog")
            page.goto(svc.url + "/")
            page.wait_for_function("() => [...document.querySelectorAll('main img')].every(i => i.complete)")
            page.click(".filters summary")
            page.fill("input[name=meta]", "campaign=travel-blog")
            page.click("#filters button[type=submit]")
            page.wait_for_function("() => [...document.querySelectorAll('main img')].every(i => i.complete)")
            OUT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(OUT), full_page=True)
            page.locator("#spend").screenshot(path=str(SPEND_OUT))
            browser.close()
    print(f"wrote {OUT} and {SPEND_OUT}")
    return 0


if __name__ == "__main__":
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # Playwright's sync API wants a loop-free thread
        sys.exit(pool.submit(main).result())
