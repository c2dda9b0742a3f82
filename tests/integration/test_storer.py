"""The storer records every output but the last on its own (a retry does not copy it
again) and the last in the completing transaction: a job is completed exactly when every
output is recorded, and a failure part-way keeps what was already stored."""

from __future__ import annotations

import psycopg

from devtools.serverthread import ServerThread
from service.app import open_resources
from service.db import admission
from service.domain.schemas import validate_input
from service.work.storer import Storer
from tests.conftest import make_settings
from tests.integration.test_claim_fencing import MODEL, _jpeg_data_url


async def test_a_failure_on_the_second_output_keeps_the_first_and_the_retry_completes(
    own_db: str, s3_endpoint: str, simulator: ServerThread
) -> None:
    settings = make_settings(own_db, s3_endpoint, simulator.url, 9)
    async with open_resources(settings) as res:
        storer = Storer(res)
        job, _ = await admission.create_job(
            res.engine, owner="storer", model=MODEL,
            input_=validate_input(MODEL, {"prompt": "two", "num_images": 2}),
            metadata={}, callback_url=None, idempotency_key=None, body_hash=None,
        )
        with psycopg.connect(own_db, autocommit=True) as sql:
            sql.execute("UPDATE jobs SET status = 'storing', provider_task_id = 'task_two', run_after = now() "
                        "WHERE id = %s", (job.id,))
            missing = simulator.url + "/outputs/no_such_task/1.jpeg"  # answers 404
            sql.execute("INSERT INTO job_outputs (job_id, index, source_url) VALUES (%s, 0, %s), (%s, 1, %s)",
                        (job.id, _jpeg_data_url(), job.id, missing))

            assert await storer.claim(5) == [job.id]
            await storer.run(job.id)
            rows = sql.execute("SELECT index, stored_at FROM job_outputs WHERE job_id = %s ORDER BY index",
                               (job.id,)).fetchall()
            status = sql.execute("SELECT status FROM jobs WHERE id = %s", (job.id,)).fetchone()
            assert status == ("storing",)
            assert rows[0][1] is not None and rows[1][1] is None
            first_stored_at = rows[0][1]

            sql.execute("UPDATE job_outputs SET source_url = %s WHERE job_id = %s AND index = 1",
                        (_jpeg_data_url(), job.id))
            sql.execute("UPDATE jobs SET run_after = now() WHERE id = %s", (job.id,))
            assert await storer.claim(5) == [job.id]
            await storer.run(job.id)
            rows = sql.execute("SELECT index, stored_at, sha256 FROM job_outputs WHERE job_id = %s ORDER BY index",
                               (job.id,)).fetchall()
            status = sql.execute("SELECT status, cost_usd FROM jobs WHERE id = %s", (job.id,)).fetchone()
            events = [r[0] for r in sql.execute(
                "SELECT type FROM job_events WHERE job_id = %s ORDER BY id", (job.id,)).fetchall()]
    assert status is not None and status[0] == "completed"
    assert rows[0][1] == first_stored_at  # not copied again
    assert all(r[2] for r in rows)
    assert events.count("output.stored") == 2
    assert events[-2:] == ["output.stored", "status.changed"]  # recorded with the completion


async def test_a_job_deleted_while_its_output_was_copied_records_nothing_and_keeps_no_object(
    own_db: str, s3_endpoint: str, simulator: ServerThread
) -> None:
    """The completing statement looks at the job under its row lock: once a deletion has
    committed, no object is recorded (the eraser relies on it), the job is not completed,
    and what was uploaded is deleted again."""
    settings = make_settings(own_db, s3_endpoint, simulator.url, 9)
    async with open_resources(settings) as res:
        storer = Storer(res)
        job, _ = await admission.create_job(
            res.engine, owner="storer", model=MODEL, input_=validate_input(MODEL, {"prompt": "gone"}),
            metadata={}, callback_url="https://backend.example/hook", idempotency_key=None, body_hash=None,
        )
        with psycopg.connect(own_db, autocommit=True) as sql:
            sql.execute("UPDATE jobs SET status = 'storing', provider_task_id = 'task_gone', run_after = now() "
                        "WHERE id = %s", (job.id,))
            sql.execute("INSERT INTO job_outputs (job_id, index, source_url) VALUES (%s, 0, %s)",
                        (job.id, _jpeg_data_url()))
            assert await storer.claim(5) == [job.id]
            sql.execute("UPDATE jobs SET deleted_at = now() WHERE id = %s", (job.id,))  # while it is ours
            await storer.run(job.id)
            status = sql.execute("SELECT status FROM jobs WHERE id = %s", (job.id,)).fetchone()
            stored = sql.execute("SELECT stored_at, key FROM job_outputs WHERE job_id = %s", (job.id,)).fetchone()
            events = [r[0] for r in sql.execute("SELECT type FROM job_events WHERE job_id = %s", (job.id,))]
            deliveries = sql.execute("SELECT count(*) FROM deliveries WHERE job_id = %s", (job.id,)).fetchone()
        keys = await res.storage.list_keys(f"{settings.s3_prefix}{job.id}/")
    assert status == ("storing",)
    assert stored == (None, None)
    assert "output.stored" not in events and "status.changed" not in events
    assert deliveries == (0,)
    assert keys == []


async def test_the_last_output_and_the_completion_are_one_step_with_its_callback_queued(
    own_db: str, s3_endpoint: str, simulator: ServerThread
) -> None:
    """One output, a callback URL: the job ends completed with its cost, the output
    recorded, the events in order and one pending delivery of job.completed."""
    settings = make_settings(own_db, s3_endpoint, simulator.url, 9)
    async with open_resources(settings) as res:
        storer = Storer(res)
        job, _ = await admission.create_job(
            res.engine, owner="storer", model=MODEL, input_=validate_input(MODEL, {"prompt": "one"}),
            metadata={}, callback_url="https://backend.example/hook", idempotency_key=None, body_hash=None,
        )
        with psycopg.connect(own_db, autocommit=True) as sql:
            sql.execute("UPDATE jobs SET status = 'storing', provider_task_id = 'task_one', run_after = now() "
                        "WHERE id = %s", (job.id,))
            sql.execute("INSERT INTO job_outputs (job_id, index, source_url) VALUES (%s, 0, %s)",
                        (job.id, _jpeg_data_url()))
            assert await storer.claim(5) == [job.id]
            await storer.run(job.id)
            row = sql.execute("SELECT status, cost_usd IS NOT NULL, locked_by, completed_at IS NOT NULL, "
                              "callback_status FROM jobs WHERE id = %s", (job.id,)).fetchone()
            output = sql.execute("SELECT stored_at IS NOT NULL, sha256 IS NOT NULL, thumbnail_key IS NOT NULL "
                                 "FROM job_outputs WHERE job_id = %s", (job.id,)).fetchone()
            events = [r[0] for r in sql.execute("SELECT type FROM job_events WHERE job_id = %s ORDER BY id",
                                                (job.id,))]
            deliveries = sql.execute("SELECT event_type, status, url FROM deliveries WHERE job_id = %s",
                                     (job.id,)).fetchall()
            spent = sql.execute("SELECT count(*) FROM ledger WHERE job_id = %s AND kind = 'spend'",
                                (job.id,)).fetchone()
    assert row == ("completed", True, None, True, "pending")
    assert output == (True, True, True)
    assert events[-2:] == ["output.stored", "status.changed"]
    assert deliveries == [("job.completed", "pending", "https://backend.example/hook")]
    assert spent == (1,)
