"""GET /metrics on the real service: the Prometheus text parses, the database-derived
gauges equal what SQL counts, and each process counter moves when its event happens
(a job run end to end through the simulator, a provider 429, a bad webhook signature).

Process counters are shared by every service this test process runs, so assertions
are on differences across one action, never on absolute values.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import functools
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg.types.json import Jsonb
from sqlalchemy import event

from devtools.serverthread import ServerThread
from service.db import gauges
from service.db.engine import create_engine
from service.observability import metrics
from service.observability.figures_cache import FiguresCache
from tests.conftest import Service, fresh_database, run_service, sim_config
from tests.integration.helpers import eventually, submit, wait_terminal
from tests.servers import WebhookCatcher

DEV, KREA = "wavespeed-ai/flux-dev-lora", "wavespeed-ai/flux-krea-dev-lora"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    answer = httpx.get(url + "/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def sql_counts(database_url: str) -> dict[tuple[str, str], int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT status, model, count(*) FROM jobs GROUP BY 1, 2").fetchall()
    return {(r[0], r[1]): r[2] for r in rows}


def gauge_counts(samples: Samples) -> dict[tuple[str, str], int]:
    out = {}
    for (name, labels), v in samples.items():
        if name == "wavespeed_jobs_jobs" and v:
            d = dict(labels)
            out[(d["status"], d["model"])] = int(v)
    return out


EXPECTED_FAMILIES = [
    "wavespeed_jobs_database_up", "wavespeed_jobs_jobs", "wavespeed_jobs_work_due",
    "wavespeed_jobs_work_oldest_due_seconds", "wavespeed_jobs_work_leased",
    "process_cpu_seconds_total", "python_gc_objects_collected_total",
]


def test_metrics_parse_and_carry_every_family(service: Service) -> None:
    samples = scrape(service.url)
    names = {name for name, _ in samples}
    for family in EXPECTED_FAMILIES:
        assert family in names, family
    assert value(samples, "wavespeed_jobs_database_up") == 1.0
    # Every status and model is present, zeros included, so no series ever vanishes.
    for status in ("queued", "submitted", "processing", "storing", "completed", "failed", "canceled", "timed_out"):
        for model in (DEV, KREA):
            assert ("wavespeed_jobs_jobs", frozenset({("status", status), ("model", model)})) in samples
    for duty in ("submit", "store", "reconcile", "deliver"):
        assert ("wavespeed_jobs_work_due", frozenset({("duty", duty)})) in samples


def test_a_job_run_end_to_end_moves_every_counter_on_its_way(
    service: Service, client: httpx.Client, sim_defaults: ServerThread
) -> None:
    before = scrape(service.url)
    with WebhookCatcher() as catcher:
        job = submit(client, callback_url=catcher.url(), input={"num_images": 2})
        done = wait_terminal(client, job["id"])
        assert done["status"] == "completed"
        catcher.wait_for(1, timeout=10)

        def callback_counted() -> Samples | None:
            now = scrape(service.url)
            delta = value(now, "wavespeed_jobs_callback_attempts_total", outcome="delivered") - value(
                before, "wavespeed_jobs_callback_attempts_total", outcome="delivered")
            return now if delta >= 1 else None

        after = eventually(callback_counted, timeout=10)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("wavespeed_jobs_submit_latency_seconds_count", model=DEV) >= 1
    assert grew("wavespeed_jobs_webhook_to_stored_seconds_count", model=DEV) >= 1
    assert grew("wavespeed_jobs_stored_outputs_total", model=DEV) >= 2
    stored = sum(o["size_bytes"] for o in done["outputs"])
    assert stored > 0 and grew("wavespeed_jobs_stored_bytes_total", model=DEV) >= stored
    assert grew("wavespeed_jobs_webhooks_received_total", outcome="advanced") >= 1
    assert grew("wavespeed_jobs_provider_request_seconds_count", operation="submit", code="200") >= 1
    assert grew("wavespeed_jobs_jobs", status="completed", model=DEV) >= 1


def test_provider_errors_are_counted_by_code(
    service: Service, client: httpx.Client, sim_defaults: ServerThread
) -> None:
    before = value(scrape(service.url), "wavespeed_jobs_provider_errors_total", operation="submit", code="429")
    sim_config(sim_defaults, submit_429_rate=1.0)
    job = submit(client)
    eventually(lambda: value(scrape(service.url), "wavespeed_jobs_provider_errors_total",
                             operation="submit", code="429") > before, timeout=15)
    sim_config(sim_defaults, submit_429_rate=0.0)
    assert wait_terminal(client, job["id"])["status"] == "completed"  # the 429s only delayed it


def test_a_bad_webhook_signature_is_counted(service: Service, client: httpx.Client) -> None:
    before = value(scrape(service.url), "wavespeed_jobs_webhooks_received_total", outcome="invalid_signature")
    answer = httpx.post(service.url + "/webhooks/wavespeed/job_nope", content=b"{}", headers={
        "webhook-id": "w1", "webhook-timestamp": str(int(dt.datetime.now().timestamp())),
        "webhook-signature": "v3,deadbeef"})
    assert answer.status_code == 401
    after = value(scrape(service.url), "wavespeed_jobs_webhooks_received_total", outcome="invalid_signature")
    assert after == before + 1


# --------------------------------------------------------------------------- an isolated database


@pytest.fixture
def quiet(postgres_server: str, s3_endpoint: str, simulator: ServerThread) -> Iterator[tuple[Service, str]]:
    """A service without workers on a database of its own: nothing moves unless the test
    moves it, so gauges can be compared with exact numbers."""
    with fresh_database(postgres_server) as url, run_service(url, s3_endpoint, simulator.url,
                                                             run_workers=False) as svc:
        yield svc, url


def insert_jobs(url: str, rows: list[dict[str, Any]]) -> None:
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO jobs (id, owner, model, status, input, run_after, locked_until) "
            "VALUES (%(id)s, 'o', %(model)s, %(status)s, %(input)s, %(run_after)s, %(locked_until)s)",
            [{"id": "job_m" + uuid.uuid4().hex, "model": DEV, "status": "queued", "run_after": None,
              "locked_until": None, "input": Jsonb({"prompt": "p"}), **r} for r in rows],
        )


def count_rows_written(conn: psycopg.Connection[Any]) -> int:
    """Rows this transaction wrote to the tables that keep job counts (job_counts,
    job_counts_mark, and 0004's job_count_deltas while it existed): none on the hot path."""
    row = conn.execute(
        "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_xact_user_tables "
        "WHERE relname LIKE 'job\\_count%%'").fetchone()
    return int(row[0]) if row else 0


def test_job_counts_equal_sql_through_inserts_transitions_and_deletes(quiet: tuple[Service, str]) -> None:
    svc, url = quiet
    insert_jobs(url, [{"model": DEV if n % 3 else KREA} for n in range(300)])
    with psycopg.connect(url) as conn:
        # Many transitions, as the workers make them, in one transaction here so that
        # pg_stat_xact_user_tables can say what they wrote: no count row at all.
        ids = [r[0] for r in conn.execute("SELECT id FROM jobs ORDER BY id")]
        for n, job_id in enumerate(ids):
            path = ("submitted", "processing", "storing", ("completed", "failed", "canceled")[n % 3])
            for status in path[: 1 + n % 4]:
                conn.execute("UPDATE jobs SET status = %s WHERE id = %s", (status, job_id))
        assert count_rows_written(conn) == 0
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE jobs SET model = %s WHERE id = ANY(%s)", (KREA, ids[:10]))
        conn.execute("DELETE FROM jobs WHERE id = ANY(%s)", (ids[-7:],))
    assert gauge_counts(scrape(svc.url)) == sql_counts(url)
    # Folded counts plus new jobs still add up.
    insert_jobs(url, [{"status": "failed"}] * 5)
    assert gauge_counts(scrape(svc.url)) == sql_counts(url)


def test_jobs_folded_into_the_counts_then_changed_or_deleted_still_add_up(quiet: tuple[Service, str]) -> None:
    svc, url = quiet
    insert_jobs(url, [{"status": ("completed", "failed", "canceled", "timed_out")[n % 4],
                       "model": DEV if n % 2 else KREA} for n in range(40)])
    with psycopg.connect(url, autocommit=True) as conn:
        # Fold with no margin, so these jobs are in job_counts now, not counted live.
        assert conn.execute("SELECT fold_job_counts('0 seconds')").fetchone() == (True,)
        ids = [r[0] for r in conn.execute("SELECT id FROM jobs WHERE status <> 'queued' ORDER BY id")]
        folded = conn.execute("SELECT count(*) FROM jobs, job_counts_mark m "
                              "WHERE id = ANY(%s) AND terminal_at < m.counted_until", (ids,)).fetchone()
        assert folded == (len(ids),)
        conn.execute("UPDATE jobs SET model = %s WHERE id = ANY(%s)", (KREA, ids[:6]))
        conn.execute("UPDATE jobs SET status = 'failed' WHERE id = ANY(%s)", (ids[6:9],))
        conn.execute("UPDATE jobs SET status = 'queued' WHERE id = ANY(%s)", (ids[9:12],))
        conn.execute("DELETE FROM jobs WHERE id = ANY(%s)", (ids[-5:],))
        # Back to terminal after the fold: counted live again, not twice.
        conn.execute("UPDATE jobs SET status = 'completed' WHERE id = ANY(%s)", (ids[9:10],))
    assert gauge_counts(scrape(svc.url)) == sql_counts(url)


def test_a_fold_running_elsewhere_is_not_waited_for_and_nothing_is_missed(quiet: tuple[Service, str]) -> None:
    svc, url = quiet
    insert_jobs(url, [{}] * 4)
    with psycopg.connect(url) as holder:
        # Another transaction holds the fold lock (mid-fold): the scrape must neither
        # block nor miss jobs it could not fold.
        assert holder.execute("SELECT fold_job_counts()").fetchone() == (True,)
        insert_jobs(url, [{}] * 3 + [{"status": "completed"}] * 2)
        assert gauge_counts(scrape(svc.url)) == {("queued", DEV): 7, ("completed", DEV): 2}
        holder.rollback()
    assert gauge_counts(scrape(svc.url)) == {("queued", DEV): 7, ("completed", DEV): 2}


def test_work_due_counts_what_a_claim_would_take(quiet: tuple[Service, str]) -> None:
    svc, url = quiet
    now = dt.datetime.now(dt.UTC)
    minute, hour = dt.timedelta(minutes=1), dt.timedelta(hours=1)
    insert_jobs(url, [
        {"status": "queued", "run_after": now - 10 * minute},  # due 10 min
        {"status": "queued", "run_after": now - minute},
        {"status": "queued", "run_after": now + hour},  # not yet due
        {"status": "queued", "run_after": now - hour, "locked_until": now + minute},  # leased
        {"status": "storing", "run_after": now - 2 * minute},
        {"status": "submitted", "run_after": now - 3 * minute},
        {"status": "processing", "run_after": now + minute},
        {"status": "completed", "run_after": None},
    ])
    with psycopg.connect(url, autocommit=True) as conn:
        job_id = conn.execute("SELECT id FROM jobs WHERE status = 'completed'").fetchone()
        assert job_id is not None
        conn.execute(
            "INSERT INTO deliveries (id, job_id, event_type, url, body, next_attempt_at) VALUES "
            "('msg_a', %(j)s, 'job.completed', 'http://x', '', %(t)s), "
            "('msg_b', %(j)s, 'job.completed', 'http://x', '', %(later)s)",
            {"j": job_id[0], "t": now - 5 * minute, "later": now + hour},
        )
    samples = scrape(svc.url)
    due = {d: value(samples, "wavespeed_jobs_work_due", duty=d) for d in ("submit", "store", "reconcile", "deliver")}
    assert due == {"submit": 2, "store": 1, "reconcile": 1, "deliver": 1}
    assert value(samples, "wavespeed_jobs_work_leased", duty="submit") == 1
    oldest = {d: value(samples, "wavespeed_jobs_work_oldest_due_seconds", duty=d) for d in due}
    # Lower bounds only (the scrape happens a little after `now`), and well under the next step.
    assert 600 <= oldest["submit"] < 3600  # the leased one, due for an hour, is not "waiting"
    assert 120 <= oldest["store"] < 600
    assert 180 <= oldest["reconcile"] < 600
    assert 300 <= oldest["deliver"] < 3600


def test_an_unreachable_database_is_a_zero_not_a_failed_scrape() -> None:
    # Nothing listens on port 1 of loopback: the connection is refused at once.
    engine = create_engine("postgresql://postgres@127.0.0.1:1/none", 1)

    async def go() -> bytes:
        try:
            snap = await FiguresCache(0).get(functools.partial(gauges.snapshot, engine))
            return metrics.exposition(snap)[0]
        finally:
            await engine.dispose()

    body = asyncio.run(go()).decode()
    assert "wavespeed_jobs_database_up 0.0" in body
    assert "process_cpu_seconds_total" in body  # the process's own metrics still arrive
    assert "wavespeed_jobs_jobs{" not in body  # and no made-up database numbers


def test_openmetrics_is_served_when_asked_for(service: Service) -> None:
    answer = httpx.get(service.url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert answer.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert answer.text.endswith("# EOF\n")
    assert answer.text.count("# EOF") == 1  # one document, not one per part


# --------------------------------------------------------------------------- for the operator


def test_no_series_is_labelled_by_owner_by_default(service: Service, client: httpx.Client) -> None:
    owner = service.keys[client.headers["Authorization"].removeprefix("Bearer ")]
    submit(client)
    text = httpx.get(service.url + "/metrics", timeout=10).text
    assert not service.settings.metrics_per_owner
    labelled = [s for f in text_string_to_metric_families(text) for s in f.samples if "owner" in s.labels]
    assert labelled == []
    assert owner not in text


TOKEN = "metrics-token-0123456789abcdef"


def test_metrics_token_opens_metrics_and_nothing_else_does(
    database_url: str, s3_endpoint: str, simulator: ServerThread
) -> None:
    with run_service(database_url, s3_endpoint, simulator.url, run_workers=False, metrics_token=TOKEN) as svc:
        api_key = svc.new_key()
        for headers in ({}, {"Authorization": f"Bearer {TOKEN[:-1]}x"}, {"Authorization": f"Bearer {api_key}"},
                        {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": "Bearer " + "x" * 5000}):
            refused = httpx.get(svc.url + "/metrics", headers=headers, timeout=10)
            assert refused.status_code == 401, headers
            assert refused.headers["www-authenticate"] == "Bearer"
            assert "METRICS_TOKEN" in refused.json()["error"]["message"]
            assert "wavespeed_jobs" not in refused.text and TOKEN not in refused.text
        for scheme in ("Bearer", "bearer"):
            opened = httpx.get(svc.url + "/metrics", headers={"Authorization": f"{scheme} {TOKEN}"}, timeout=10)
            assert opened.status_code == 200 and "wavespeed_jobs_database_up 1.0" in opened.text
        assert httpx.get(svc.url + "/healthz", timeout=10).status_code == 200  # probes stay open
        with svc.client(api_key) as client:
            assert client.get("/v1/jobs").status_code == 200  # and the token is no API key either
            assert httpx.get(svc.url + "/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401


def test_a_flood_of_scrapes_reads_the_database_once_per_interval(
    postgres_server: str, s3_endpoint: str, simulator: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a database of its own with no workers, so the only statements are the scrapes'
    (counted on the service's engine as SQLAlchemy sends them, beside the reads)."""
    reads = 0
    real = gauges.snapshot

    async def counted(*args: Any, **kwargs: Any) -> metrics.DatabaseSnapshot:
        nonlocal reads
        reads += 1
        return await real(*args, **kwargs)

    monkeypatch.setattr(gauges, "snapshot", counted)
    interval = 60.0
    with fresh_database(postgres_server) as url, run_service(
            url, s3_endpoint, simulator.url, run_workers=False, metrics_cache_seconds=interval,
            metrics_per_owner=True) as svc:
        for n in range(3):
            svc.new_key(f"owner_{n}")  # three owners: a per-owner read costs statements per owner
        statements = 0

        def count(*_: Any) -> None:
            nonlocal statements
            statements += 1

        assert svc.server is not None
        engine = svc.server.server.config.app.state.resources.engine
        event.listen(engine.sync_engine, "before_cursor_execute", count)
        started = time.monotonic()
        assert httpx.get(svc.url + "/metrics", timeout=30).status_code == 200
        one_read = statements
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(lambda _: httpx.get(svc.url + "/metrics", timeout=30), range(100)))
        elapsed = time.monotonic() - started
        event.remove(engine.sync_engine, "before_cursor_execute", count)
    assert all(a.status_code == 200 and "wavespeed_jobs_database_up 1.0" in a.text for a in answers)
    assert one_read > 0, "the first scrape read nothing: the count proves nothing"
    # At most once per interval: 101 scrapes, one read (two if they outlasted the interval).
    assert reads == 1 + int(elapsed // interval), (reads, elapsed)
    assert statements == one_read * reads
