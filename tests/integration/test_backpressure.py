"""The submitter holds new jobs while this process's stores are past SUBMIT_DOWNSTREAM_LIMIT
(service/work/backpressure.py), on the real database and provider: with six stores held
(S3 slow) and a limit of 4, freshly queued jobs stay queued, unmarked; once the stores
end they are all sent."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import psycopg
import pytest
from PIL import Image

from devtools.serverthread import ServerThread
from service.app import open_resources
from service.db import admission
from service.domain.schemas import validate_input
from service.work import backpressure
from service.work.runner import Runner
from service.work.storer import Storer
from service.work.submitter import Submitter
from tests.conftest import make_settings

MODEL = "wavespeed-ai/flux-dev-lora"


def _jpeg_data_url() -> str:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (20, 140, 40)).save(out, format="JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


class HeldStorer(Storer):
    """Each store waits until the test lets it go (S3 slow), then stores for real."""

    def __init__(self, res: Any) -> None:
        super().__init__(res)
        self.release = asyncio.Event()
        self.holding = 0

    async def run(self, job_id: str) -> None:
        self.holding += 1
        await self.release.wait()
        await super().run(job_id)


class WatchedSubmitter(Submitter):
    """Counts its claims in flight: the runner decides a claim's room before calling it,
    so once none is in flight every later claim sees the stores that are running."""

    def __init__(self, res: Any) -> None:
        super().__init__(res)
        self.claiming = 0

    async def claim(self, limit: int) -> list[str]:
        self.claiming += 1
        try:
            return await super().claim(limit)
        finally:
            self.claiming -= 1


async def _queued_job(res: Any, prompt: str) -> str:
    job, _ = await admission.create_job(
        res.engine, owner="pressure", model=MODEL, input_=validate_input(MODEL, {"prompt": prompt}),
        metadata={}, callback_url=None, idempotency_key=None, body_hash=None,
    )
    return job.id


async def _until(check: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


async def test_new_jobs_wait_while_stores_past_the_limit_run_and_go_out_once_they_end(
    own_db: str, s3_endpoint: str, simulator: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backpressure, "STALLED_SECONDS", 60.0)  # the held stores never age out here
    settings = make_settings(own_db, s3_endpoint, simulator.url, 9, submit_downstream_limit=4,
                             store_concurrency=8, store_concurrency_max=8)
    async with open_resources(settings) as res:
        stored = [await _queued_job(res, f"stored {n}") for n in range(6)]
        with psycopg.connect(own_db, autocommit=True) as sql:
            # What a completed webhook does: outputs recorded, the job storing and due.
            sql.execute("UPDATE jobs SET status = 'storing', provider_task_id = 'task_' || id, "
                        "provider_status = 'completed', submitted_at = now(), last_news_at = now(), "
                        "run_after = now() WHERE id = ANY(%s)", (stored,))
            for job_id in stored:
                sql.execute("INSERT INTO job_outputs (job_id, index, source_url) VALUES (%s, 0, %s)",
                            (job_id, _jpeg_data_url()))
        storer = HeldStorer(res)
        submitter = WatchedSubmitter(res)
        runner = Runner(res, [submitter, storer])  # type: ignore[list-item]  # concurrency: a property
        await runner.start()
        try:
            # A claim the submitter began before the stores ran had room then, and its
            # statements, each with a fresh snapshot, would see jobs queued meanwhile.
            await _until(lambda: storer.holding == 6 and submitter.claiming == 0)
            fresh = [await _queued_job(res, f"fresh {n}") for n in range(5)]  # each wakes the submitter
            await asyncio.sleep(2 * backpressure.WINDOW_SECONDS)
            with psycopg.connect(own_db, autocommit=True) as sql:
                held = sql.execute("SELECT count(*) FROM jobs WHERE id = ANY(%s) AND status = 'queued' "
                                   "AND submit_sent_at IS NULL AND locked_by IS NULL", (fresh,)).fetchone()
                assert held == (5,), "the submitter took new jobs while its stores were past the limit"
                storer.release.set()

                def sent() -> bool:
                    row = sql.execute("SELECT count(*) FROM jobs WHERE id = ANY(%s) AND status <> 'queued'",
                                      (fresh,)).fetchone()
                    return row == (5,)

                await _until(sent)
                done = sql.execute("SELECT count(*) FROM jobs WHERE id = ANY(%s) AND status = 'completed'",
                                   (stored,)).fetchone()
            assert done == (6,)
        finally:
            storer.release.set()
            await runner.stop(grace=5.0)
