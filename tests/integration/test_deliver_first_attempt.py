"""A delivery's first attempt, before its POST, against the real Postgres: how many
statements it costs and what body it freezes.

The delivery is handed to this process's deliverer already leased (as STORE_COMPLETE
does); its first attempt reads the row, the owner's secrets and the job in one statement
and freezes the body in a second, where it used to read the job in a statement of its own.
The body must be the same bytes the old reads built (the API's JOB_WITH_OUTPUTS +
job_dict), for a live job and for a deleted one.
"""

from __future__ import annotations

import contextlib
import json
import types
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg.types.json import Jsonb

from service.db import jobs
from service.db.engine import create_engine, raw_statement
from service.domain.sealing import Sealer
from service.domain.serialize import iso, job_dict
from service.settings import Settings
from service.work import deliverer as deliverer_module
from service.work.deliverer import CALLBACK_URL_SECONDS, Deliverer
from service.work.runner import new_worker_id
from tests.conftest import fresh_database

DEV = "wavespeed-ai/flux-dev-lora"
OWNER = "first-attempt"


@pytest.fixture
def quiet_database(postgres_server: str) -> Iterator[str]:
    with fresh_database(postgres_server) as url:
        yield url


class Storage:
    def presign(self, key: str, seconds: int) -> str:
        return f"https://s3.example/{key}?expires={seconds}"


class Counting:
    """An asyncpg connection that counts the statements sent through it."""

    def __init__(self, raw: asyncpg.Connection, sent: list[str]) -> None:
        self._raw, self._sent = raw, sent

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._raw, name)
        if name not in ("fetch", "fetchrow", "fetchval", "execute"):
            return method

        async def counted(query: str, *args: Any) -> Any:
            self._sent.append(query)
            return await method(query, *args)
        return counted


def seed(url: str, holder: str, *, deleted: bool = False) -> tuple[str, str]:
    """A completed job with two stored outputs and its delivery, leased to ``holder`` with
    no body yet (a handed-over first attempt); the owner has a secret."""
    run = uuid.uuid4().hex[:8]
    job_id, delivery_id = f"job_{run}", f"msg_{run}"
    with psycopg.connect(url, autocommit=True) as sql:
        sql.execute(
            "INSERT INTO jobs (id, owner, model, status, input, callback_url, provider_task_id, metadata, "
            "submitted_at, completed_at, deleted_at, deleted_reason) VALUES "
            "(%s, %s, %s, 'completed', %s, 'https://backend.example/hook', %s, %s, now(), now(), "
            "CASE WHEN %s THEN now() END, CASE WHEN %s THEN 'request' END)",
            (job_id, OWNER, DEV, Jsonb({"prompt": "a fox"}), f"task_{run}", Jsonb({"order": 7}), deleted, deleted))
        for index in (1, 0):  # inserted out of order: the body lists them by index
            sql.execute(
                "INSERT INTO job_outputs (job_id, index, source_url, key, content_type, size_bytes, sha256, "
                "thumbnail_key, stored_at) VALUES (%s, %s, %s, %s, 'image/png', 1234, 'ab', %s, now())",
                (job_id, index, f"https://cdn.example/{index}.png", f"o/{job_id}/{index}.png",
                 f"t/{job_id}/{index}.webp"))
        sql.execute("INSERT INTO callback_secrets (owner, secret) VALUES (%s, 'whsec_own') "
                    "ON CONFLICT (owner) DO NOTHING", (OWNER,))
        sql.execute(
            "INSERT INTO deliveries (id, job_id, event_type, url, body, status, attempts, next_attempt_at, "
            "locked_by, locked_until) VALUES (%s, %s, 'job.completed', 'https://backend.example/hook', '', "
            "'pending', 0, now(), %s, now() + interval '1 minute')", (delivery_id, job_id, holder))
    return job_id, delivery_id


def frozen_body(url: str, delivery_id: str) -> str:
    with psycopg.connect(url) as sql:
        row = sql.execute("SELECT body FROM deliveries WHERE id = %s", (delivery_id,)).fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.parametrize("deleted", [False, True], ids=["live", "deleted"])
async def test_a_handed_over_first_attempt_reads_and_freezes_in_two_statements_the_body_the_old_reads_built(
        quiet_database: str, monkeypatch: pytest.MonkeyPatch, deleted: bool) -> None:
    settings = Settings(database_url=quiet_database)
    engine = create_engine(quiet_database, 2)
    res = types.SimpleNamespace(settings=settings, engine=engine, worker_id=new_worker_id(), storage=Storage(),
                                sealer=Sealer(None), callback_secret="whsec_legacy")
    duty = Deliverer(res)  # type: ignore[arg-type]
    job_id, delivery_id = seed(quiet_database, duty.holder, deleted=deleted)
    sent: list[str] = []

    @contextlib.asynccontextmanager
    async def counting(engine_: Any) -> AsyncIterator[Any]:
        async with raw_statement(engine_) as raw:
            yield Counting(raw, sent)

    monkeypatch.setattr(deliverer_module, "raw_statement", counting)
    try:
        prepared = await duty._prepare(delivery_id)
        # The body as the old path built it: the API's read of the job, then job_dict.
        async with raw_statement(engine) as raw:
            job, outputs = await jobs.get_job_with_outputs(raw, job_id, OWNER)
    finally:
        await engine.dispose()
    assert prepared is not None
    row, body, secrets = prepared
    # One read (the delivery, the secrets, the job and its outputs), one fenced freeze.
    assert len(sent) == 2, sent
    assert secrets.secret == "whsec_own"
    old = json.dumps({"type": row.event_type, "timestamp": iso(row.created_at),
                      "data": job_dict(job, outputs, lambda key: Storage().presign(key, CALLBACK_URL_SECONDS))},
                     separators=(",", ":"), ensure_ascii=False)
    assert body.encode("utf-8") == old.encode("utf-8")
    assert frozen_body(quiet_database, delivery_id) == body  # frozen before any POST
    if not deleted:
        assert [o["url"] for o in json.loads(body)["data"]["outputs"]] == [
            f"https://s3.example/o/{job_id}/0.png?expires={CALLBACK_URL_SECONDS}",
            f"https://s3.example/o/{job_id}/1.png?expires={CALLBACK_URL_SECONDS}"]
