"""The storer records every output but the last on its own (a retry does not copy it
again) and the last in the completing transaction: a job is completed exactly when every
output is recorded, and a failure part-way keeps what was already stored. An output's
thumbnail is made and uploaded while the output's own PUT is in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devtools.serverthread import ServerThread
from service.app import open_resources
from service.db import admission
from service.domain.schemas import validate_input
from service.resources import Resources
from service.work.storer import Storer
from tests.conftest import make_settings
from tests.integration.staging import image_bytes
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


@pytest.fixture(scope="module")
def image_host() -> Iterator[ServerThread]:
    """A provider's CDN: ``/good.jpeg`` a real JPEG, ``/broken.jpeg`` bytes that start
    like one and decode as nothing (both with their Content-Length, as Flux's are)."""
    images = {"good.jpeg": image_bytes("JPEG", 512), "broken.jpeg": b"\xff\xd8\xff\xe0" + b"\x00" * 4000}

    async def serve(request: Request) -> Response:
        return Response(images[request.path_params["name"]], media_type="image/jpeg")

    with ServerThread(Starlette(routes=[Route("/{name}", serve)])) as server:
        yield server


def _on_put_object(res: Resources, hook: Callable[[str], Awaitable[None]]) -> None:
    """Await ``hook(url)`` before each PutObject goes out (the object's key ends the URL);
    what it raises is what the HTTP client would have raised."""
    real = res.storage._http.put

    async def put(url: str, **kwargs: Any) -> Any:
        await hook(url)
        return await real(url, **kwargs)

    res.storage._http.put = put  # type: ignore[method-assign]


async def _store_one_output(res: Resources, own_db: str, source: str) -> tuple[str, Any, Any, list[str]]:
    """A job in ``storing`` with one output at ``source``, stored once: (id, status,
    the output's (key, thumbnail_key), its event types)."""
    storer = Storer(res)
    job, _ = await admission.create_job(
        res.engine, owner="storer", model=MODEL, input_=validate_input(MODEL, {"prompt": "thumb"}),
        metadata={}, callback_url=None, idempotency_key=None, body_hash=None,
    )
    with psycopg.connect(own_db, autocommit=True) as sql:
        sql.execute("UPDATE jobs SET status = 'storing', provider_task_id = 'task_thumb', run_after = now() "
                    "WHERE id = %s", (job.id,))
        sql.execute("INSERT INTO job_outputs (job_id, index, source_url) VALUES (%s, 0, %s)", (job.id, source))
        assert await storer.claim(5) == [job.id]
        await storer.run(job.id)
        status = sql.execute("SELECT status FROM jobs WHERE id = %s", (job.id,)).fetchone()
        keys = sql.execute("SELECT key, thumbnail_key FROM job_outputs WHERE job_id = %s", (job.id,)).fetchone()
        events = [r[0] for r in sql.execute("SELECT type FROM job_events WHERE job_id = %s ORDER BY id", (job.id,))]
    return job.id, status, keys, events


@pytest.mark.parametrize("source", ["download", "data URL"])
async def test_the_thumbnail_is_made_and_uploaded_while_the_outputs_put_is_in_flight(
    own_db: str, s3_endpoint: str, simulator: ServerThread, image_host: ServerThread, source: str
) -> None:
    """The output's PUT is held until the thumbnail's PUT has begun: one after the other,
    it would never begin (the hold gives up after 5 s and says so)."""
    settings = make_settings(own_db, s3_endpoint, simulator.url, 9)
    thumbnail_put_began = asyncio.Event()
    output_put_saw_it: list[bool] = []

    async def hold(key: str) -> None:
        if key.endswith(".thumb.webp"):
            thumbnail_put_began.set()
        else:
            try:
                await asyncio.wait_for(thumbnail_put_began.wait(), 5)
                output_put_saw_it.append(True)
            except TimeoutError:
                output_put_saw_it.append(False)

    url = image_host.url + "/good.jpeg" if source == "download" else _jpeg_data_url()
    async with open_resources(settings) as res:
        _on_put_object(res, hold)
        job_id, status, keys, events = await _store_one_output(res, own_db, url)
        stored = await res.storage.list_keys(f"{settings.s3_prefix}{job_id}/")
    assert output_put_saw_it == [True]
    assert status == ("completed",)
    assert keys == (f"{settings.s3_prefix}{job_id}/0.jpeg", f"{settings.s3_prefix}{job_id}/0.thumb.webp")
    assert sorted(stored) == sorted(keys)
    assert events[-2:] == ["output.stored", "status.changed"]


async def test_an_output_whose_thumbnail_cannot_be_made_still_completes_without_one(
    own_db: str, s3_endpoint: str, simulator: ServerThread, image_host: ServerThread
) -> None:
    settings = make_settings(own_db, s3_endpoint, simulator.url, 9)
    async with open_resources(settings) as res:
        job_id, status, keys, _ = await _store_one_output(res, own_db, image_host.url + "/broken.jpeg")
        stored = await res.storage.list_keys(f"{settings.s3_prefix}{job_id}/")
    assert status == ("completed",)
    assert keys == (f"{settings.s3_prefix}{job_id}/0.jpeg", None)
    assert stored == [f"{settings.s3_prefix}{job_id}/0.jpeg"]


async def test_a_thumbnail_whose_put_fails_is_s3s_failure_and_the_job_waits_to_try_again(
    own_db: str, s3_endpoint: str, simulator: ServerThread, image_host: ServerThread
) -> None:
    """A thumbnail that was made but could not be uploaded is not left out quietly: the
    store fails as for the output's own PUT, nothing is recorded, and the retry (same
    keys) copies both again."""
    settings = make_settings(own_db, s3_endpoint, simulator.url, 9)

    async def refuse_thumbnails(key: str) -> None:
        if key.endswith(".thumb.webp"):
            raise httpx.ConnectError("S3 went away")

    async with open_resources(settings) as res:
        _on_put_object(res, refuse_thumbnails)
        _, status, keys, events = await _store_one_output(res, own_db, image_host.url + "/good.jpeg")
    assert status == ("storing",)
    assert keys == (None, None)
    assert events[-1] == "output.store_failed"


async def test_a_failed_copy_is_handled_only_once_its_thumbnails_put_has_ended(
    own_db: str, s3_endpoint: str, simulator: ServerThread, image_host: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The output's PUT fails while its thumbnail's is still going: the failure is
    recorded (and the job rescheduled) only after that PUT ended, so nothing of the job's
    is still being uploaded when a deletion or a retry comes next."""
    settings = make_settings(own_db, s3_endpoint, simulator.url, 9)
    thumbnail_put_ended = asyncio.Event()
    ended_before_the_failure_was_handled: list[bool] = []

    async def slow_thumbnail_failing_output(key: str) -> None:
        if key.endswith(".thumb.webp"):
            await asyncio.sleep(0.5)
            thumbnail_put_ended.set()
        else:
            raise httpx.ConnectError("S3 went away")

    async with open_resources(settings) as res:
        _on_put_object(res, slow_thumbnail_failing_output)
        real_retry_later = Storer._retry_later

        async def retry_later(self: Storer, job: Any, verdict: Any) -> None:
            ended_before_the_failure_was_handled.append(thumbnail_put_ended.is_set())
            await real_retry_later(self, job, verdict)

        monkeypatch.setattr(Storer, "_retry_later", retry_later)
        _, status, _, events = await _store_one_output(res, own_db, image_host.url + "/good.jpeg")
    assert ended_before_the_failure_was_handled == [True]
    assert status == ("storing",)
    assert events[-1] == "output.store_failed"
