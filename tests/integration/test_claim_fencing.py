"""A duty moves only the rows claimed for it: "holds the row" means the claim this duty
made, not merely this process (otherwise a job can be stuck for 120 s).

The race, replayed step by step on the real database: the submitter has claimed a job
and is waiting for the provider's answer; the webhook arrives first and moves the job to
``storing``; the storer of the same process claims it; only then is the submit answer
recorded. Fenced on the process alone, that late answer would "hand back" the storer's
claim and push the job 120 s (RECONCILE_AFTER_SECONDS) into the future, and the storer,
fenced on a lease it no longer had, would store nothing.
"""

from __future__ import annotations

import base64
import io

import psycopg
from PIL import Image

from devtools.serverthread import ServerThread
from service.app import open_resources
from service.db import admission, jobs
from service.domain.schemas import validate_input
from service.work.runner import Runner
from service.work.storer import Storer
from service.work.submit_rules import outcome_of_answer
from service.work.submitter import Submitter
from tests.conftest import make_settings

MODEL = "wavespeed-ai/flux-dev-lora"


def _jpeg_data_url() -> str:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(out, format="JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def _webhook_moves_job_to_storing(sql: psycopg.Connection[object], job_id: str, task_id: str) -> None:
    """What a verified ``completed`` webhook does to the row (whichever receiver path):
    outputs recorded, job to ``storing``, due now, nobody's lease."""
    sql.execute(
        "UPDATE jobs SET status = 'storing', provider_task_id = %s, provider_status = 'completed', "
        "submitted_at = now(), last_news_at = now(), locked_by = NULL, locked_until = NULL, run_after = now() "
        "WHERE id = %s",
        (task_id, job_id),
    )
    sql.execute("INSERT INTO job_outputs (job_id, index, source_url) VALUES (%s, 0, %s)", (job_id, _jpeg_data_url()))


async def test_late_submit_answer_leaves_the_storers_claim_alone(
    own_db: str, s3_endpoint: str, simulator: ServerThread
) -> None:
    settings = make_settings(own_db, s3_endpoint, simulator.url, 9, reconcile_after_seconds=120.0)
    async with open_resources(settings) as res:
        submitter, storer = Submitter(res), Storer(res)
        job, _ = await admission.create_job(
            res.engine, owner="fence", model=MODEL, input_=validate_input(MODEL, {"prompt": "race"}),
            metadata={}, callback_url=None, idempotency_key=None, body_hash=None,
        )
        assert await submitter.claim(10) == [job.id]
        async with res.engine.connect() as conn:
            claimed_for_submit = await jobs.get_job(conn, job.id)

        with psycopg.connect(own_db, autocommit=True) as sql:
            _webhook_moves_job_to_storing(sql, job.id, "task_fence_1")
            assert await storer.claim(10) == [job.id]
            # The submit answer arrives now, after the storer claimed the job.
            answer = outcome_of_answer({"id": "task_fence_1", "status": "created"})
            await submitter._accepted(claimed_for_submit, answer)
            row = sql.execute(
                "SELECT status, locked_by, run_after > now() + interval '60 seconds' AS pushed "
                "FROM jobs WHERE id = %s", (job.id,),
            ).fetchone()
            assert row is not None
            assert row[0] == "storing"
            assert row[1] == storer.holder, "the submitter took over the storer's claim"
            assert not row[2], "the job was pushed RECONCILE_AFTER_SECONDS into the future"

            await storer.run(job.id)
            status, stored = sql.execute(
                "SELECT j.status, count(o.stored_at) FROM jobs j JOIN job_outputs o ON o.job_id = j.id "
                "WHERE j.id = %s GROUP BY j.status", (job.id,),
            ).fetchone() or (None, 0)
    assert (status, stored) == ("completed", 1)


async def test_each_duty_fences_on_its_own_claim(own_db: str, s3_endpoint: str, simulator: ServerThread) -> None:
    """Two duties of one process write different holders, so neither can hand back
    (or fence a write on) the other's claim; the runner's release frees only its own."""
    settings = make_settings(own_db, s3_endpoint, simulator.url, 9)
    async with open_resources(settings) as res:
        submitter, storer = Submitter(res), Storer(res)
        assert submitter.holder != storer.holder
        assert submitter.holder.startswith(res.worker_id) and storer.holder.startswith(res.worker_id)
        job, _ = await admission.create_job(
            res.engine, owner="fence", model=MODEL, input_=validate_input(MODEL, {"prompt": "fence"}),
            metadata={}, callback_url=None, idempotency_key=None, body_hash=None,
        )
        with psycopg.connect(own_db, autocommit=True) as sql:
            assert await submitter.claim(10) == [job.id]
            async with res.engine.begin() as conn:
                await jobs.reschedule(conn, job.id, storer.holder, 300)  # not the storer's claim
            assert sql.execute("SELECT locked_by FROM jobs WHERE id = %s", (job.id,)).fetchone() == (
                submitter.holder,)
            runner = Runner(res, [storer])  # a runner without the submit duty
            await runner._release_all()
            assert sql.execute("SELECT locked_by FROM jobs WHERE id = %s", (job.id,)).fetchone() == (
                submitter.holder,)
            await Runner(res, [submitter, storer])._release_all()
            assert sql.execute("SELECT locked_by FROM jobs WHERE id = %s", (job.id,)).fetchone() == (None,)
