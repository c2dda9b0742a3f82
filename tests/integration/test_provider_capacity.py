"""The provider's slot and rate-token rows a submitter makes sure of when its process
starts (service/db/submits.py::ensure_capacity): the missing ones are added, and a start
that finds them all there neither adds nor probes any (with PROVIDER_MAX_PER_MINUTE at a
million, probing them again cost each starting process 1.8 s of a Postgres core)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
from sqlalchemy import TextClause, text

from service.db import queries, submits
from service.db.engine import create_engine


def _ensure(db: str, slots: int, per_minute: int) -> None:
    async def go() -> None:
        engine = create_engine(db, 1)
        try:
            async with engine.begin() as conn:
                await submits.ensure_capacity(conn, max_in_flight=slots, max_per_minute=per_minute)
        finally:
            await engine.dispose()

    asyncio.run(go())


def _rows(db: str) -> tuple[list[int], list[int]]:
    with psycopg.connect(db) as conn:
        slots = [r[0] for r in conn.execute("SELECT slot FROM provider_slots ORDER BY slot")]
        tokens = [r[0] for r in conn.execute("SELECT token FROM provider_rate_tokens ORDER BY token")]
    return slots, tokens


def _series_rows(db: str, statement: TextClause, n: int) -> int:
    """How many numbers ``statement`` tried to insert (its plan's set-returning node, run
    by EXPLAIN ANALYZE in a transaction rolled back)."""
    async def go() -> Any:
        engine = create_engine(db, 1)
        try:
            async with engine.connect() as conn:
                plan = (await conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + statement.text), {"n": n})).scalar()
                await conn.rollback()
                return plan
        finally:
            await engine.dispose()

    plan = asyncio.run(go())
    nodes = [json.loads(plan)[0]["Plan"] if isinstance(plan, str) else plan[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        if node["Node Type"] == "ProjectSet":
            return int(node["Actual Rows"])
        nodes.extend(node.get("Plans", []))
    raise AssertionError(f"no set-returning node in {plan}")


def test_the_first_start_makes_every_row_and_a_raised_limit_adds_the_missing_ones(own_db: str) -> None:
    _ensure(own_db, 3, 5)
    assert _rows(own_db) == ([0, 1, 2], [0, 1, 2, 3, 4])
    _ensure(own_db, 6, 5)
    assert _rows(own_db) == ([0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4])
    _ensure(own_db, 2, 2)  # a lowered limit: the rows past it stay, ignored by the claim
    assert _rows(own_db) == ([0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4])


def test_a_start_that_finds_every_row_there_tries_to_insert_none(own_db: str) -> None:
    _ensure(own_db, 1000, 2000)
    assert _series_rows(own_db, queries.ENSURE_SLOTS, 1000) == 0
    assert _series_rows(own_db, queries.ENSURE_TOKENS, 2000) == 0
    assert _series_rows(own_db, queries.ENSURE_SLOTS, 1200) == 200  # a raised limit: only the new ones
