"""GET /v1/jobs over real HTTP and Postgres: each filter, limit bounds, errors that name the
parameter, a keyset walk that sees every job exactly once while new jobs keep arriving,
and owners that never see each other's jobs.

Jobs are inserted straight into Postgres (with ``run_after`` NULL, so no worker touches
them): hundreds of jobs in milliseconds, with created_at spread out on purpose.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from service.db.history import encode_cursor
from service.db.jobs import new_job_id
from tests.conftest import Service

DEV, KREA = "wavespeed-ai/flux-dev-lora", "wavespeed-ai/flux-krea-dev-lora"
UTC = dt.UTC
# A fixed past moment, so inserted history never collides with jobs made "now".
BASE = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@dataclass
class Row:
    id: str
    owner: str
    created_at: dt.datetime
    status: str = "completed"
    model: str = DEV
    metadata: dict[str, str] = field(default_factory=dict)


def insert(sql: psycopg.Connection[Any], rows: list[Row]) -> None:
    with sql.cursor() as cur:
        cur.executemany(
            "INSERT INTO jobs (id, owner, model, status, input, metadata, created_at, updated_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [(r.id, r.owner, r.model, r.status, Jsonb({"prompt": "p", "size": "256*256"}), Jsonb(r.metadata),
              r.created_at, r.created_at) for r in rows],
        )


def new_id() -> str:
    return new_job_id()


def newest_first(rows: list[Row]) -> list[str]:
    return [r.id for r in sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)]


def owner_of(service: Service, client: httpx.Client) -> str:
    return service.keys[client.headers["authorization"].split(" ", 1)[1]]


def ids(client: httpx.Client, params: Any) -> list[str]:
    response = client.get("/v1/jobs", params=params)
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["data"]]


def iso(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- filters

STATUSES = ["completed", "failed", "canceled", "queued", "timed_out", "processing"]


@pytest.fixture
def history(service: Service, client: httpx.Client, sql: psycopg.Connection[Any]) -> list[Row]:
    """24 jobs of one owner: statuses, models, metadata and times all varied."""
    owner = owner_of(service, client)
    rows = [
        Row(
            id=new_id(),
            owner=owner,
            created_at=BASE + dt.timedelta(minutes=i),
            status=STATUSES[i % len(STATUSES)],
            model=KREA if i % 4 == 0 else DEV,
            metadata={"user_id": f"u_{i % 3}", **({"plan": "pro"} if i % 2 else {})},
        )
        for i in range(24)
    ]
    insert(sql, rows)
    return rows


def test_list_is_newest_first(client: httpx.Client, history: list[Row]) -> None:
    response = client.get("/v1/jobs")
    assert response.status_code == 200
    assert response.json()["next_cursor"] is None
    assert ids(client, {}) == newest_first(history)
    created = [job["created_at"] for job in response.json()["data"]]
    assert created == sorted(created, reverse=True)


@pytest.mark.parametrize(
    ("params", "keep"),
    [
        ([("status", "completed")], lambda r: r.status == "completed"),
        ([("status", "completed"), ("status", "failed")], lambda r: r.status in ("completed", "failed")),
        ([("status", "canceled,timed_out")], lambda r: r.status in ("canceled", "timed_out")),
        ([("model", KREA)], lambda r: r.model == KREA),
        ([("model", DEV), ("status", "queued")], lambda r: r.model == DEV and r.status == "queued"),
        ([("created_after", iso(BASE + dt.timedelta(minutes=10)))],
         lambda r: r.created_at > BASE + dt.timedelta(minutes=10)),
        ([("created_before", iso(BASE + dt.timedelta(minutes=5)))],
         lambda r: r.created_at < BASE + dt.timedelta(minutes=5)),
        ([("created_after", "2026-03-01T13:05:00+01:00"), ("created_before", "2026-03-01T12:15:00")],
         lambda r: BASE + dt.timedelta(minutes=5) < r.created_at < BASE + dt.timedelta(minutes=15)),
        ([("metadata.user_id", "u_1")], lambda r: r.metadata["user_id"] == "u_1"),
        ([("metadata.user_id", "u_1"), ("metadata.plan", "pro")],
         lambda r: r.metadata["user_id"] == "u_1" and r.metadata.get("plan") == "pro"),
        ([("metadata.user_id", "u_9")], lambda r: False),
        ([("metadata.plan", "pro"), ("status", "failed"), ("model", DEV)],
         lambda r: r.metadata.get("plan") == "pro" and r.status == "failed" and r.model == DEV),
    ],
    ids=["status", "status-repeated", "status-comma", "model", "model-and-status", "created-after",
         "created-before", "time-window-with-offsets", "metadata", "two-metadata-keys", "metadata-no-match",
         "metadata-status-model"],
)
def test_filters_return_exactly_the_matching_jobs(
    client: httpx.Client, history: list[Row], params: list[tuple[str, str]], keep: Any
) -> None:
    expected = newest_first([r for r in history if keep(r)])
    assert ids(client, params) == expected
    if params[0][0] != "metadata.user_id" or params[0][1] != "u_9":
        assert expected, "the case should select something"


def test_filters_apply_on_every_page_of_a_walk(client: httpx.Client, history: list[Row]) -> None:
    params = [("status", "completed"), ("status", "failed"), ("limit", "3")]
    seen: list[str] = []
    cursor = None
    for _ in range(20):
        response = client.get("/v1/jobs", params=params + ([("cursor", cursor)] if cursor else []))
        assert response.status_code == 200, response.text
        seen += [job["id"] for job in response.json()["data"]]
        cursor = response.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == newest_first([r for r in history if r.status in ("completed", "failed")])


@pytest.mark.parametrize("limit", ["1", "200"])
def test_limit_bounds_are_accepted(client: httpx.Client, history: list[Row], limit: str) -> None:
    assert ids(client, {"limit": limit}) == newest_first(history)[: int(limit)]


def test_limit_cuts_the_page_and_gives_a_cursor(client: httpx.Client, history: list[Row]) -> None:
    response = client.get("/v1/jobs", params={"limit": 5})
    assert [job["id"] for job in response.json()["data"]] == newest_first(history)[:5]
    assert response.json()["next_cursor"]


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "²"}, "limit"),
        ({"status": "done"}, "status"),
        ({"model": "flux"}, "model"),
        ({"created_after": "last tuesday"}, "created_after"),
        ({"created_before": "2026-02-30T00:00:00Z"}, "created_before"),
        ({"cursor": "bogus"}, "cursor"),
        ({"cursor": "eyJub3QiOiAiYSBjdXJzb3IifQ"}, "cursor"),
        ({"page": "2"}, "page"),
        ({"offset": "10"}, "offset"),
        ({"metadata.": "x"}, "metadata."),
        ({"metadata.user_id": "u\u00001"}, "metadata.user_id"),
    ],
    ids=["limit-0", "limit-201", "limit-word", "limit-superscript", "status", "model", "created-after",
         "created-before", "cursor-garbage", "cursor-other-json", "unknown-page", "unknown-offset",
         "metadata-without-key", "metadata-nul"],
)
def test_bad_parameters_are_422_naming_the_parameter(client: httpx.Client, params: dict[str, str], loc: str) -> None:
    response = client.get("/v1/jobs", params=params)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert [f["loc"] for f in error["fields"]] == [loc]
    assert error["fields"][0]["msg"]


@pytest.mark.parametrize(
    "params",
    [
        {"created_before": "9999-12-31T23:59:59-05:00"},
        {"created_after": "0001-01-01T00:00:00+05:00"},
        {"created_after": "9999-12-31T23:59:59Z"},
        {"cursor": encode_cursor(dt.datetime(2026, 1, 1), "job_naive")},  # a cursor without an offset
        {"cursor": encode_cursor(dt.datetime(2026, 1, 1, tzinfo=UTC), "job_\u0000")},
    ],
    ids=["far-future-west", "far-past-east", "far-future", "naive-cursor", "nul-in-cursor-id"],
)
def test_extreme_but_well_formed_parameters_never_crash(client: httpx.Client, history: list[Row],
                                                        params: dict[str, str]) -> None:
    response = client.get("/v1/jobs", params=params)
    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        assert response.json()["error"]["fields"][0]["loc"] in params


# --------------------------------------------------------------------------- keyset walk


def test_cursor_walk_sees_every_job_exactly_once_while_new_jobs_arrive(
    service: Service, client: httpx.Client, sql: psycopg.Connection[Any]
) -> None:
    owner = owner_of(service, client)
    # 120 jobs, three to a timestamp, so page boundaries fall inside ties (the id breaks them).
    original = [Row(new_id(), owner, BASE - dt.timedelta(seconds=i // 3)) for i in range(120)]
    insert(sql, original)
    seen: list[str] = []
    arrived: list[Row] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 25}
        if cursor:
            params["cursor"] = cursor
        response = client.get("/v1/jobs", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        assert len(page["data"]) <= 25
        seen += [job["id"] for job in page["data"]]
        cursor = page["next_cursor"]
        # New jobs land between pages: some through the API (created now), some inserted
        # with times newer than anything walked so far.
        newer = [Row(new_id(), owner, BASE + dt.timedelta(minutes=pages, microseconds=k)) for k in range(3)]
        insert(sql, newer)
        arrived += newer
        created = client.post("/v1/jobs", json={"model": DEV, "input": {"prompt": "late", "size": "256*256"}})
        assert created.status_code == 202, created.text
        arrived.append(Row(created.json()["id"], owner, BASE))
        if cursor is None:
            break
        assert pages < 10, "the walk does not end"
    assert pages == 5  # 25 + 25 + 25 + 25 + 20
    assert len(seen) == len(set(seen)) == 120
    assert seen == newest_first(original)
    # A fresh walk from the top sees the newcomers too.
    everything = ids(client, {"limit": 200})
    assert set(everything) == {r.id for r in original} | {r.id for r in arrived}


# --------------------------------------------------------------------------- owners


def test_an_owner_never_sees_another_owners_jobs(
    service: Service, client: httpx.Client, sql: psycopg.Connection[Any]
) -> None:
    mine_owner = owner_of(service, client)
    with service.client() as other:
        theirs_owner = owner_of(service, other)
        # Same times, same metadata, same statuses: only the owner tells them apart.
        mine = [Row(new_id(), mine_owner, BASE + dt.timedelta(seconds=i), metadata={"user_id": "shared"})
                for i in range(10)]
        theirs = [Row(new_id(), theirs_owner, BASE + dt.timedelta(seconds=i), metadata={"user_id": "shared"})
                  for i in range(10)]
        insert(sql, mine + theirs)
        for params in ({}, {"metadata.user_id": "shared"}, {"status": "completed"}, {"limit": 3}):
            assert set(ids(client, params)) <= {r.id for r in mine}, params
            assert set(ids(other, params)) <= {r.id for r in theirs}, params
        assert ids(client, {}) == newest_first(mine)
        assert ids(other, {}) == newest_first(theirs)
        # A cursor made from the other owner's page still only walks my jobs.
        their_cursor = other.get("/v1/jobs", params={"limit": 4}).json()["next_cursor"]
        assert set(ids(client, {"cursor": their_cursor})) <= {r.id for r in mine}
        for row in theirs[:3]:
            assert client.get(f"/v1/jobs/{row.id}").status_code == 404
            assert client.get(f"/v1/jobs/{row.id}/events").status_code == 404
