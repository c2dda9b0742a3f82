"""Bulk actions of different owners share a process's turns fairly: one owner's four
bulks at once (each many batches) delay another owner's bulk by about one batch per
turn, not by all of theirs. Real bulks (service/work/bulk.py) on the real database,
through one pacer as in a process; the pacer notes whose batch each turn was."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from service.db import bulk
from service.db.engine import create_engine
from service.domain.pacing import Pacer, Turn
from service.work.bulk import run_bulk
from tests.conftest import fresh_database

GROUPS, PER_GROUP, BATCH = 4, 60, 10  # owner a: four bulks of 6 batches; owner b: one


class TurnLog(Pacer):
    """The process's pacer, noting whose batch took each turn."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.turns: list[str] = []

    @contextlib.asynccontextmanager
    async def batch(self, factor: float | None = None, *, rest_after: bool = True, who: str = ""
                    ) -> AsyncIterator[Turn]:
        async with super().batch(factor, rest_after=rest_after, who=who) as turn:
            self.turns.append(who)
            yield turn


@pytest.fixture
def db(postgres_server: str) -> Iterator[str]:
    with fresh_database(postgres_server) as url:
        yield url


def queued(sql: psycopg.Connection[Any], owner: str, group: int, hours_ago: int) -> None:
    """PER_GROUP queued jobs of ``owner`` created ``hours_ago`` hours ago (a bulk's filter
    tells the groups apart by their creation times)."""
    sql.execute(
        "INSERT INTO jobs (id, owner, model, input, metadata, status, run_after, created_at)"
        " SELECT 'job_' || %s || '_' || %s || '_' || lpad(g::text, 4, '0'), %s, 'wavespeed-ai/flux-dev-lora',"
        " '{}', '{}', 'queued', NULL, now() - make_interval(hours => %s) FROM generate_series(1, %s) g",
        (owner, group, owner, hours_ago, PER_GROUP))


def cancel_hours_ago(hours_ago: int) -> bulk.BulkRequest:
    """Cancel the queued jobs created between ``hours_ago`` + 1 and ``hours_ago`` - 1 hours ago."""
    now = dt.datetime.now(dt.UTC)
    return bulk.parse_bulk({"action": "cancel", "filter": {
        "status": ["queued"], "created_after": (now - dt.timedelta(hours=hours_ago + 1)).isoformat(),
        "created_before": (now - dt.timedelta(hours=hours_ago - 1)).isoformat()}})


def test_one_owners_four_bulks_delay_another_owners_bulk_by_about_one_batch_per_turn(db: str) -> None:
    a, b = f"a_{uuid.uuid4().hex[:8]}", f"b_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db, autocommit=True) as sql:
        for group in range(GROUPS):
            queued(sql, a, group, hours_ago=10 * (group + 1))
        queued(sql, b, 0, hours_ago=5)
    pacer = TurnLog()
    b_asked: list[int] = []  # how many turns had gone when b's bulk began

    async def run() -> list[bulk.BulkResult]:
        engine = create_engine(db, pool_size=GROUPS + 1)
        try:
            async def later() -> bulk.BulkResult:
                while pacer.turns.count(a) < GROUPS + 2:  # a's four bulks under way
                    await asyncio.sleep(0.001)
                b_asked.append(len(pacer.turns))
                return await run_bulk(engine, b, cancel_hours_ago(5), BATCH, pacer, 0.0)

            return await asyncio.gather(
                *(run_bulk(engine, a, cancel_hours_ago(10 * (g + 1)), BATCH, pacer, 0.0) for g in range(GROUPS)),
                later())
        finally:
            await engine.dispose()

    results = asyncio.run(run())
    assert [r["affected"] for r in results] == [PER_GROUP] * (GROUPS + 1)
    turns = pacer.turns
    shown = "".join("a" if t == a else "b" for t in turns)
    last = len(turns) - 1 - turns[::-1].index(b)
    waited = turns[b_asked[0] : last + 1]  # from b's arrival to its last batch
    # b: its matching and 6 batches; before each, one of a's at most (a's turn is shared
    # by the batches of its four bulks, not one for each of them).
    assert waited.count(b) == PER_GROUP // BATCH + 1
    assert waited.count(a) <= waited.count(b) + 1, shown
    assert set(turns[last + 1 :]) == {a}, shown  # b done while a's bulks still had batches to go
