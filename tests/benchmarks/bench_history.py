"""History at scale: ``GET /v1/jobs`` over 1,000,000 jobs of one owner among 3,000,000.

Goal: p99 ≤ 20 ms of server time for every query shape, on the first page and
on a page 10,000 rows deep through the cursor.

1. Seed (once; the database ``wsj_bench_history`` is kept and reused while its seed
   version matches): 3,000,000 jobs straight into Postgres with one ``INSERT … SELECT
   generate_series`` — the measured owner has every third job (1,000,000), a second big
   owner another million, 5,000 small owners the rest. Realistic spreads: statuses
   mostly completed (active ones only among the newest), 70/30 between the two models,
   created_at over a year, metadata keys of varied cardinality (user_id: 20,000 values;
   env: prod 95 % / staging 5 %; tenant: 50 values; campaign: on 30 % of jobs, 200
   skewed values). Every completed job of the owner has a stored output. Then
   ``alembic upgrade head`` (so new index revisions are measured too) and ANALYZE.
2. For each shape, the exact statement ``service.db.history`` builds (the API's own query):
   the plan's index use (EXPLAIN), then ``--runs`` timings of planning + execution as
   the server reports them (EXPLAIN ANALYZE), of ``list_jobs`` from Python (the query
   with its round trip and row decoding), and of the whole ``GET /v1/jobs`` through the
   real app under uvicorn (auth, outputs, presigning, JSON).
3. Every page is checked against a plain reference query (``ORDER BY … OFFSET``), so a
   fast answer is also a right one.

The machine has 2 cores shared with other work: figures are noisy, p99 most of all.

``python -m tests.benchmarks.bench_history [--runs 100] [--reseed] [--no-api] [--shapes a,b]``
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `service` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx
import psycopg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ClauseElement, Executable

from service.db.engine import create_engine, migrate
from service.db.history import HistoryFilter, encode_cursor, list_jobs, page_query, parse_filter

POSTGRES = os.environ.get(
    "BENCH_POSTGRES_URL", os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
)
DB_NAME = "wsj_bench_history"
SEED_VERSION = 1  # bump when the seed below changes: the kept database is rebuilt
TOTAL_ROWS = 3_000_000
OWNER = "bench_owner"
DEEP_ROWS = 10_000
PAGE = 50
GOAL_P99_MS = 20.0
STATEMENT_TIMEOUT_MS = 10_000.0
FLUX = "wavespeed-ai/flux-dev-lora"
KREA = "wavespeed-ai/flux-krea-dev-lora"

# One statement, no API: ~3.5 minutes for 3,000,000 rows on this machine (every index
# maintained as it goes, as in production). Rows arrive in created_at order, as real
# jobs do, so the table's physical order follows time. random() is seeded: the same
# data every time.
SEED_JOBS = """
SELECT setseed(0.42);
INSERT INTO jobs (id, owner, model, status, input, metadata, callback_url, provider_task_id, provider_status,
                  has_nsfw_contents, inference_ms, cost_usd, run_after, attempts, submit_sent_at, deadline_at,
                  last_news_at, callback_status, callback_attempts, created_at, updated_at, submitted_at,
                  completed_at)
SELECT
  'job_' || lpad(i::text, 26, '0'),
  owner, model, status,
  jsonb_build_object('prompt', 'a watercolor of ' || md5(i::text) || ', soft light, detailed, 35mm',
                     'size', '1024*1024', 'seed', i, 'strength', 0.8, 'guidance_scale', 3.5,
                     'num_inference_steps', 28, 'num_images', 1, 'output_format', 'jpeg',
                     'enable_base64_output', false, 'enable_sync_mode', false,
                     'loras', jsonb_build_array(jsonb_build_object('path', 'https://huggingface.co/x/y',
                                                                   'scale', 1.0))),
  metadata,
  CASE WHEN r_cb < 0.5 THEN 'https://backend.example/hooks' END,
  CASE WHEN status <> 'queued' THEN 'ws_' || md5(i::text) END,
  CASE WHEN status IN ('completed', 'failed') THEN status END,
  CASE WHEN status = 'completed' THEN '[false]'::jsonb END,
  CASE WHEN status = 'completed' THEN 700 + (i % 400) END,
  CASE WHEN status = 'completed' THEN 0.015 END,
  CASE WHEN status IN ('queued', 'submitted', 'processing', 'storing') THEN created_at END,
  0,
  CASE WHEN status <> 'queued' THEN created_at + interval '50 ms' END,
  CASE WHEN status <> 'queued' THEN created_at + interval '30 min' END,
  CASE WHEN status <> 'queued' THEN created_at + interval '3 s' END,
  CASE WHEN r_cb < 0.5 AND status IN ('completed', 'failed', 'canceled', 'timed_out') THEN 'delivered' END,
  CASE WHEN r_cb < 0.5 AND status IN ('completed', 'failed', 'canceled', 'timed_out') THEN 1 ELSE 0 END,
  created_at, created_at + interval '4 s',
  CASE WHEN status <> 'queued' THEN created_at + interval '50 ms' END,
  CASE WHEN status IN ('completed', 'failed', 'canceled', 'timed_out') THEN created_at + interval '4 s' END
FROM (
  SELECT i, r_cb,
    CASE i % 3 WHEN 0 THEN 'bench_owner' WHEN 1 THEN 'big_owner'
               ELSE 'owner_' || ((i::bigint * 7919) % 5000) END AS owner,
    CASE WHEN r_model < 0.7 THEN 'wavespeed-ai/flux-dev-lora' ELSE 'wavespeed-ai/flux-krea-dev-lora' END AS model,
    CASE
      WHEN i > {n} - 3000 AND r_status < 0.4
        THEN (ARRAY['queued', 'submitted', 'processing', 'storing'])[1 + (i % 4)]
      WHEN r_status < 0.92 THEN 'completed'
      WHEN r_status < 0.97 THEN 'failed'
      WHEN r_status < 0.99 THEN 'canceled'
      ELSE 'timed_out' END AS status,
    jsonb_strip_nulls(jsonb_build_object(
      'user_id', 'u_' || floor(r_user * 20000)::int,
      'env', CASE WHEN r_env < 0.95 THEN 'prod' ELSE 'staging' END,
      'tenant', 't_' || floor(r_tenant * 50)::int,
      'campaign', CASE WHEN r_campaign < 0.3 THEN 'c_' || floor(power(r_campaign_v, 2) * 200)::int END
    )) AS metadata,
    now() - interval '365 days' + i * (interval '365 days' / {n}) AS created_at
  FROM (
    SELECT i, random() AS r_cb, random() AS r_model, random() AS r_status, random() AS r_user,
           random() AS r_env, random() AS r_tenant, random() AS r_campaign, random() AS r_campaign_v
    FROM generate_series(1, {n}) AS i
  ) r
) s;
"""

SEED_OUTPUTS = f"""
INSERT INTO job_outputs (job_id, index, source_url, key, content_type, size_bytes, sha256, thumbnail_key, stored_at)
SELECT id, 0, 'https://cdn.example/' || id || '.jpeg', 'outputs/' || id || '/0.jpeg', 'image/jpeg',
       180000 + length(id), md5(id) || md5(id), 'outputs/' || id || '/0.thumb.webp', completed_at
FROM jobs WHERE owner = '{OWNER}' AND status = 'completed'
"""


# --------------------------------------------------------------------------- seeding


def _url_for(server_url: str, name: str) -> str:
    base, _, query = server_url.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name + ("?" + query if query else "")


def _seeded(url: str) -> bool:
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute("SELECT version, total_rows FROM bench_seed").fetchone()
    except psycopg.Error:
        return False
    return row == (SEED_VERSION, TOTAL_ROWS)


def ensure_seeded(reseed: bool) -> str:
    """The benchmark database, seeded and migrated to head; seeded only when missing."""
    url = _url_for(POSTGRES, DB_NAME)
    if reseed or not _seeded(url):
        with psycopg.connect(POSTGRES, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')
        # Seeded on the first revision's schema; the later ones (and their backfills) then
        # run over the full volume, as they would on a live installation.
        migrate(url, "0001")
        started = time.monotonic()
        print(f"seeding {TOTAL_ROWS:,} jobs into {DB_NAME} (a few minutes, once)...", flush=True)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SEED_JOBS.format(n=TOTAL_ROWS))
            conn.execute(SEED_OUTPUTS)
            conn.execute("CREATE TABLE bench_seed (version integer, total_rows bigint)")
            conn.execute("INSERT INTO bench_seed VALUES (%s, %s)", (SEED_VERSION, TOTAL_ROWS))
            conn.execute("VACUUM ANALYZE")
        print(f"seeded in {time.monotonic() - started:.0f} s", flush=True)
    started = time.monotonic()
    migrate(url)  # new index revisions since the seed are measured too
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    print(f"migrated to head and analyzed in {time.monotonic() - started:.0f} s", flush=True)
    return url


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Shape:
    name: str
    params: Callable[[dt.datetime], list[tuple[str, str]]]


def _at(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


DAY = dt.timedelta(days=1)
SHAPES = [
    Shape("all", lambda end: []),
    Shape("status=completed (92%)", lambda end: [("status", "completed")]),
    Shape("status=failed (5%)", lambda end: [("status", "failed")]),
    Shape("status=processing (rare)", lambda end: [("status", "processing")]),
    Shape("status=failed,canceled,timed_out", lambda end: [("status", "failed,canceled,timed_out")]),
    Shape("status=queued,submitted,processing,storing",
          lambda end: [("status", "queued,submitted,processing,storing")]),
    Shape("model=krea (30%)", lambda end: [("model", KREA)]),
    Shape("status=failed & model=krea", lambda end: [("status", "failed"), ("model", KREA)]),
    Shape("created: 30-day window", lambda end: [("created_after", _at(end - 200 * DAY)),
                                                ("created_before", _at(end - 170 * DAY))]),
    Shape("created_before: 300 days ago", lambda end: [("created_before", _at(end - 300 * DAY))]),
    Shape("status=failed & created window", lambda end: [("status", "failed"),
                                                        ("created_after", _at(end - 200 * DAY)),
                                                        ("created_before", _at(end - 170 * DAY))]),
    Shape("metadata.user_id (50 rows)", lambda end: [("metadata.user_id", "u_123")]),
    Shape("metadata.env=prod (95%)", lambda end: [("metadata.env", "prod")]),
    Shape("metadata.tenant (2%)", lambda end: [("metadata.tenant", "t_7")]),
    Shape("metadata.campaign=c_0 (2%)", lambda end: [("metadata.campaign", "c_0")]),
    Shape("metadata.campaign=c_20 (0.2%)", lambda end: [("metadata.campaign", "c_20")]),
    Shape("metadata.campaign=c_150 (0.09%)", lambda end: [("metadata.campaign", "c_150")]),
    Shape("metadata.user_id & status=completed", lambda end: [("metadata.user_id", "u_123"),
                                                             ("status", "completed")]),
    Shape("metadata.campaign=c_0 & status=failed", lambda end: [("metadata.campaign", "c_0"),
                                                               ("status", "failed")]),
    Shape("metadata.env=staging & model=krea", lambda end: [("metadata.env", "staging"), ("model", KREA)]),
    Shape("metadata.tenant & metadata.env=prod", lambda end: [("metadata.tenant", "t_7"),
                                                             ("metadata.env", "prod")]),
    Shape("metadata.env=prod & metadata.campaign=c_150", lambda end: [("metadata.env", "prod"),
                                                                     ("metadata.campaign", "c_150")]),
    Shape("metadata.tenant & metadata.campaign=c_0", lambda end: [("metadata.tenant", "t_7"),
                                                                 ("metadata.campaign", "c_0")]),
    Shape("metadata.campaign=c_20 & created 90 days", lambda end: [("metadata.campaign", "c_20"),
                                                                  ("created_after", _at(end - 90 * DAY))]),
    Shape("metadata.env=staging & status=failed,timed_out", lambda end: [("metadata.env", "staging"),
                                                                        ("status", "failed,timed_out")]),
    Shape("all filters", lambda end: [("status", "completed,failed"), ("model", FLUX),
                                      ("created_after", _at(end - 180 * DAY)),
                                      ("created_before", _at(end - 30 * DAY)),
                                      ("metadata.campaign", "c_0"), ("metadata.env", "prod")]),
]


# --------------------------------------------------------------------------- measuring


class Explain(Executable, ClauseElement):
    """``EXPLAIN (…) <statement>``, executed like the statement itself (same binds)."""

    inherit_cache = False

    def __init__(self, statement: Any, explain_options: str) -> None:
        self.statement = statement
        self.explain_options = explain_options


@compiles(Explain)
def _compile_explain(element: Explain, compiler: Any, **kw: Any) -> str:
    return f"EXPLAIN ({element.explain_options}) " + str(compiler.process(element.statement, **kw))


def _walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = [node]
    for child in node.get("Plans", []):
        out += _walk(child)
    return out


def plan_summary(plan: dict[str, Any]) -> str:
    """The plan's access paths, e.g. ``Index Scan jobs_owner_status_created``."""
    parts: list[str] = []
    for node in _walk(plan["Plan"]):
        kind = node["Node Type"]
        if "Index Name" in node:
            parts.append(f"{kind.replace('Index Only Scan', 'IOS')} {node['Index Name']}")
        elif kind in ("Seq Scan", "Sort", "Merge Append", "Incremental Sort", "BitmapAnd", "Hash Join"):
            parts.append(kind + (f" {node['Relation Name']}" if "Relation Name" in node else ""))
    seen: list[str] = []
    for part in parts:
        if part not in seen:
            seen.append(part)
    return ", ".join(seen)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


@dataclass
class Case:
    shape: str
    page: str  # "first", or "@N": the page after the first N matches
    params: list[tuple[str, str]]
    f: HistoryFilter
    expected_ids: list[str]
    plan: str = ""
    buffers: int = 0
    server_ms: list[float] = dataclasses.field(default_factory=list)
    app_ms: list[float] = dataclasses.field(default_factory=list)
    api_ms: list[float] = dataclasses.field(default_factory=list)
    error: str = ""


def _reference_sql(params: list[tuple[str, str]]) -> tuple[str, dict[str, Any]]:
    """The obvious query (OFFSET, no cleverness), to check every measured page against."""
    f = parse_filter(params)
    where = ["owner = %(owner)s"]
    args: dict[str, Any] = {"owner": OWNER}
    if f.statuses:
        where.append("status = ANY(%(statuses)s)")
        args["statuses"] = f.statuses
    if f.model:
        where.append("model = %(model)s")
        args["model"] = f.model
    if f.created_after:
        where.append("created_at > %(after)s")
        args["after"] = f.created_after
    if f.created_before:
        where.append("created_at < %(before)s")
        args["before"] = f.created_before
    if f.metadata:
        where.append("metadata @> %(metadata)s::jsonb")
        args["metadata"] = json.dumps(f.metadata)
    sql = f"SELECT id, created_at FROM jobs WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC"
    return sql, args


def build_cases(url: str, end: dt.datetime, wanted: Sequence[str]) -> list[Case]:
    """Per shape: the first page, and the page ``DEEP_ROWS`` deep through the cursor
    (or, for a shape with fewer matches, the deepest page there is)."""
    cases: list[Case] = []
    with psycopg.connect(url, autocommit=True) as conn:
        for shape in SHAPES:
            if wanted and not any(w.lower() in shape.name.lower() for w in wanted):
                continue
            params = shape.params(end)
            sql, args = _reference_sql(params)
            first = [r[0] for r in conn.execute(sql + f" LIMIT {PAGE}", args)]
            cases.append(Case(shape.name, "first", params, parse_filter([*params, ("limit", str(PAGE))]), first))
            count_row = conn.execute(f"SELECT count(*) FROM ({sql}) s", args).fetchone()
            count = count_row[0] if count_row else 0
            if count <= PAGE:
                cases.append(Case(shape.name, "deep", params, parse_filter(params), [],
                                  error=f"n/a: {count} matches, one page"))
                continue
            depth = min(DEEP_ROWS, count - PAGE)
            anchor = conn.execute(sql + f" OFFSET {depth - 1} LIMIT 1", args).fetchone()
            assert anchor is not None
            deep = [r[0] for r in conn.execute(sql + f" OFFSET {depth} LIMIT {PAGE}", args)]
            cursor = encode_cursor(anchor[1], anchor[0])
            cases.append(Case(shape.name, f"@{depth}", params,
                              parse_filter([*params, ("limit", str(PAGE)), ("cursor", cursor)]), deep))
    return cases


async def measure_sql(engine: AsyncEngine, cases: list[Case], runs: int) -> None:
    async with engine.connect() as conn:
        for n, case in enumerate(cases, start=1):
            if case.error:
                continue
            print(f"  [{n}/{len(cases)}] {case.shape} ({case.page})", flush=True)
            try:
                await _measure_case(conn, case, runs)
            except DBAPIError as exc:
                case.error = f"FAILED: {type(exc.orig).__name__} (statement timeout {STATEMENT_TIMEOUT_MS:.0f} ms?)"
            await conn.rollback()


async def _measure_case(conn: AsyncConnection, case: Case, runs: int) -> None:
    stmt = await page_query(conn, OWNER, case.f)  # and its settings, for this transaction
    # A plan gone wrong shows up as a failed case, not as a run that never ends.
    await conn.execute(text(f"SET LOCAL statement_timeout = '{int(STATEMENT_TIMEOUT_MS)}ms'"))
    plan = (await conn.execute(Explain(stmt, "FORMAT JSON"))).scalar_one()[0]
    case.plan = plan_summary(plan)
    rows, _ = await list_jobs(conn, OWNER, case.f)
    got = [r.id for r in rows]
    if got != case.expected_ids:
        case.error = f"WRONG PAGE: {len(got)} rows, {len(set(got) ^ set(case.expected_ids))} differ"
        return
    for _ in range(runs):
        analyzed = (await conn.execute(Explain(stmt, "ANALYZE, BUFFERS, FORMAT JSON"))).scalar_one()[0]
        case.server_ms.append(analyzed["Planning Time"] + analyzed["Execution Time"])
        case.buffers = max(case.buffers, analyzed["Plan"].get("Shared Hit Blocks", 0)
                           + analyzed["Plan"].get("Shared Read Blocks", 0))
    for _ in range(runs):
        started = time.perf_counter()
        await list_jobs(conn, OWNER, case.f)
        case.app_ms.append((time.perf_counter() - started) * 1000)


def _query_string(case: Case) -> list[tuple[str, str | int | float | bool | None]]:
    out: list[tuple[str, str | int | float | bool | None]] = [*case.params, ("limit", str(PAGE))]
    if case.f.cursor:
        out.append(("cursor", encode_cursor(*case.f.cursor)))
    return out


def measure_api(url: str, cases: list[Case], runs: int) -> None:
    """The whole ``GET /v1/jobs`` through the real app (no workers) under uvicorn."""
    from devtools.serverthread import ServerThread
    from service.app import create_app
    from service.db.keys import create_key_blocking
    from service.settings import Settings

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")

    key = create_key_blocking(url, OWNER)
    settings = Settings(
        database_url=url, s3_bucket="bench", s3_endpoint_url="http://127.0.0.1:9",  # presigning is local
        wavespeed_api_key="unused", wavespeed_base_url="http://127.0.0.1:9",
        wavespeed_webhook_secret="whsec_bench_history_0123456789",
        public_base_url="http://127.0.0.1:9", log_level="warning", log_format="json",
    )
    with ServerThread(create_app(settings, run_workers=False)) as server, httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        for case in cases:
            if case.error:
                continue
            query = _query_string(case)
            answer = client.get("/v1/jobs", params=query)
            answer.raise_for_status()
            if [j["id"] for j in answer.json()["data"]] != case.expected_ids:
                case.error = "WRONG PAGE through the API"
                continue
            for _ in range(runs):
                started = time.perf_counter()
                client.get("/v1/jobs", params=query).raise_for_status()
                case.api_ms.append((time.perf_counter() - started) * 1000)


WRITE_ROWS = 20_000
WRITE_INSERT = """
INSERT INTO jobs (id, owner, model, status, input, metadata, created_at, updated_at)
SELECT 'job_w' || %(tag)s || lpad(i::text, 8, '0'), 'bench_writer', 'wavespeed-ai/flux-dev-lora', 'queued',
       '{"prompt": "p"}', %(metadata)s::jsonb, now(), now()
FROM generate_series(1, %(n)s) i
"""


def measure_writes(url: str) -> list[str]:
    """What revision 0003's triggers cost the writers: inserts and status changes of
    jobs with three metadata keys against the same without metadata (where the triggers
    never fire), on the seeded table with all its indexes. Rolled back."""
    lines = []
    with psycopg.connect(url) as conn:
        for label, metadata in (("no metadata", "{}"),
                                ("3 metadata keys", '{"user_id": "u_1", "env": "prod", "tenant": "t_1"}')):
            started = time.perf_counter()
            conn.execute(WRITE_INSERT, {"tag": label[0], "metadata": metadata, "n": WRITE_ROWS})
            inserted = time.perf_counter() - started
            started = time.perf_counter()
            for status in ("submitted", "processing", "storing", "completed"):
                conn.execute("UPDATE jobs SET status = %s WHERE owner = 'bench_writer' AND id LIKE %s",
                             (status, f"job_w{label[0]}%"))
            updated = time.perf_counter() - started
            lines.append(f"{label:<16} insert {inserted / WRITE_ROWS * 1e6:6.1f} µs/job, "
                         f"4 status changes {updated / WRITE_ROWS * 1e6:6.1f} µs/job")
        conn.rollback()
    return lines


def report(cases: list[Case], runs: int, writes: list[str]) -> bool:
    print(f"\nGET /v1/jobs, owner with 1,000,000 of 3,000,000 jobs, limit {PAGE}, {runs} runs per row; "
          "ms as p50/p99.")
    print("server = planning + execution as Postgres reports it (EXPLAIN ANALYZE); "
          "list_jobs = the query from Python; api = the whole HTTP request.")
    header = f"{'shape':<48} {'page':<6} {'server':>13} {'list_jobs':>13} {'api':>13}  {'bufs':>5}  plan"
    print(header)
    print("-" * len(header))
    ok = True
    for case in cases:
        if case.error:
            print(f"{case.shape:<48} {case.page:<6} {case.error}")
            if case.error.startswith(("WRONG", "FAILED")):
                ok = False
            continue

        def cell(values: list[float]) -> str:
            return f"{pct(values, 0.5):5.1f}/{pct(values, 0.99):5.1f}" if values else f"{'-':>11}"

        p99 = pct(case.server_ms, 0.99)
        mark = "" if p99 <= GOAL_P99_MS else "  << over goal"
        ok = ok and p99 <= GOAL_P99_MS
        print(f"{case.shape:<48} {case.page:<6} {cell(case.server_ms):>13} {cell(case.app_ms):>13} "
              f"{cell(case.api_ms):>13}  {case.buffers:>5}  {case.plan}{mark}")
    all_server = [v for c in cases for v in c.server_ms]
    if all_server:
        print(f"\nserver time over every shape: p50 {pct(all_server, 0.5):.1f} ms, "
              f"p99 {pct(all_server, 0.99):.1f} ms, max {max(all_server):.1f} ms")
    if writes:
        print(f"\nwrite cost, {WRITE_ROWS:,} jobs in one transaction (rolled back), per job:")
        for line in writes:
            print("  " + line)
    print(f"\ngoal (p99 ≤ {GOAL_P99_MS:.0f} ms server time for every shape): {'MET' if ok else 'NOT MET'}")
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_history", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="timed runs per shape and page (default 100)")
    parser.add_argument("--reseed", action="store_true", help="drop and seed the benchmark database again")
    parser.add_argument("--no-api", action="store_true", help="skip the end-to-end HTTP timings")
    parser.add_argument("--shapes", default="", help="comma-separated substrings of shape names to run")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    url = ensure_seeded(args.reseed)
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT max(created_at), count(*) FROM jobs WHERE owner = %s", (OWNER,)).fetchone()
        total = conn.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = 'jobs'").fetchone()
    assert row is not None and total is not None
    end, owned = row
    print(f"{owned:,} jobs of {OWNER} among ~{total[0]:,}")
    wanted = [w.strip() for w in args.shapes.split(",") if w.strip()]
    print("reference pages (plain ORDER BY … OFFSET queries; metadata ones scan the table)...", flush=True)
    cases = build_cases(url, end, wanted)
    print("timing each shape's query...", flush=True)

    async def sql_phase() -> None:
        engine = create_engine(url, 1)
        try:
            await measure_sql(engine, cases, args.runs)
        finally:
            await engine.dispose()

    asyncio.run(sql_phase())
    if not args.no_api:
        print("timing GET /v1/jobs through the app...", flush=True)
        measure_api(url, cases, args.runs)
    writes = measure_writes(url) if not wanted else []
    return 0 if report(cases, args.runs, writes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
