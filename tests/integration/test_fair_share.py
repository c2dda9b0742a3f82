"""Fair share, priorities, owners' caps, pause and the provider throttle, all decided in
the one submit claim (claim_submits, service/db/submits.py), then end to end through
the running service: pause/resume and the start timeout.

The claim tests admit jobs through the API (so each job gets its turn exactly as in
production) on a service without workers, and then claim by calling the same SQL the
submitter calls, so the order is observed exactly, round by round."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from devtools.serverthread import ServerThread
from service.db import submits
from service.db.engine import create_engine
from tests.conftest import Service, fresh_database, run_service
from tests.integration.helpers import eventually, sim_tasks, submit, wait_terminal

# Left out of the fast loop (pytest -m "not slow", docs/development.md):
# turns across owners, measured over many claims.
pytestmark = pytest.mark.slow

BODY = {"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "fair", "size": "256*256"}}
WORKER = "test-claimer"


@pytest.fixture
def fair(postgres_server: str, s3_endpoint: str, simulator: ServerThread) -> Iterator[tuple[Service, str]]:
    # A database of its own: the slots and the queue are shared by everything in one.
    with fresh_database(postgres_server) as url, run_service(url, s3_endpoint, simulator.url, run_workers=False) as svc:
        yield svc, url


def owner(svc: Service, db: str, **values: Any) -> tuple[str, httpx.Client]:
    name = f"o_{uuid.uuid4().hex[:6]}"
    key = svc.new_key(name)
    if values:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("UPDATE owners SET " + ", ".join(f"{k} = %({k})s" for k in values) + " WHERE name = %(n)s",
                         {**values, "n": name})
    return name, svc.client(key)


def enqueue(client: httpx.Client, n: int, **extra: Any) -> list[str]:
    ids = []
    for _ in range(n):
        answer = client.post("/v1/jobs", json={**BODY, **extra})
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["id"])
    return ids


def claim(db: str, limit: int, *, slots: int = 1000, per_minute: int = 100000) -> list[tuple[str, str]]:
    """One claim, as the submitter makes it: (owner, job id) in the order given."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO provider_slots (slot) SELECT generate_series(0, %s - 1) ON CONFLICT DO NOTHING",
                     (slots,))
        conn.execute("INSERT INTO provider_rate_tokens (token) SELECT generate_series(0, %s - 1) "
                     "ON CONFLICT DO NOTHING", (per_minute,))
        ids = [r[0] for r in conn.execute("SELECT claim_submits(%s, 30, %s, %s, %s)",
                                          (WORKER, limit, slots, per_minute)).fetchall()]
        owners = dict(conn.execute("SELECT id, owner FROM jobs WHERE id = ANY(%s)", (ids,)).fetchall())
    return [(owners[i], i) for i in ids]


def finish(db: str, ids: list[str]) -> None:
    """The provider's news moves the jobs on, as a webhook would: their slots free up."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE jobs SET status = 'storing', locked_by = NULL, locked_until = NULL WHERE id = ANY(%s)",
                     (ids,))


def test_a_late_owner_is_interleaved_with_a_backlog_not_queued_behind_it(fair: tuple[Service, str]) -> None:
    svc, db = fair
    _, ca = owner(svc, db)
    b, cb = owner(svc, db)
    with ca, cb:
        enqueue(ca, 40)
        b_jobs = enqueue(cb, 4)
    order: list[str] = []
    for _ in range(5):  # rounds of 4 slots
        got = claim(db, 100, slots=4)
        order += [o for o, _ in got]
        finish(db, [i for _, i in got])
    positions = [i for i, o in enumerate(order) if o == b]
    assert len(positions) == len(b_jobs)
    # B's k-th job goes within the first 2k+2 claims: every other turn, not after A's 40.
    assert all(p <= 2 * k + 2 for k, p in enumerate(positions)), order


def test_weights_share_the_slots_three_to_one(fair: tuple[Service, str]) -> None:
    svc, db = fair
    a, ca = owner(svc, db, weight=3)
    b, cb = owner(svc, db, weight=1)
    with ca, cb:
        for _ in range(10):  # both backlogged from the start
            enqueue(ca, 3)
            enqueue(cb, 3)
    got = claim(db, 20)
    counts = {a: sum(o == a for o, _ in got), b: sum(o == b for o, _ in got)}
    assert 14 <= counts[a] <= 16 and 4 <= counts[b] <= 6, counts


def test_the_most_urgent_priority_goes_first_whoever_owns_it(fair: tuple[Service, str]) -> None:
    svc, db = fair
    _, ca = owner(svc, db)
    _, cb = owner(svc, db)
    with ca, cb:
        enqueue(ca, 20)
        urgent_b = enqueue(cb, 2, priority=1)
        urgent_a = enqueue(ca, 1, priority=0)
        late_b = enqueue(cb, 1, priority=9)
    got = [i for _, i in claim(db, 24)]
    assert len(got) == 24
    assert got[0] == urgent_a[0]
    assert got[1:3] == urgent_b
    assert got[-1] == late_b[0]


def test_a_paused_owner_waits_and_resumes_in_turn(fair: tuple[Service, str]) -> None:
    svc, db = fair
    a, ca = owner(svc, db, paused=True)
    b, cb = owner(svc, db)
    with ca, cb:
        enqueue(ca, 3)
        enqueue(cb, 2)
    assert {o for o, _ in claim(db, 10)} == {b}
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE owners SET paused = false WHERE name = %s", (a,))
    assert [o for o, _ in claim(db, 10)] == [a, a, a]


def test_an_owners_max_in_flight_caps_it_and_frees_with_its_tasks(fair: tuple[Service, str]) -> None:
    svc, db = fair
    a, ca = owner(svc, db, max_in_flight=2)
    b, cb = owner(svc, db)
    with ca, cb:
        enqueue(ca, 10)
        enqueue(cb, 3)
    first = claim(db, 10)
    assert sum(o == a for o, _ in first) == 2 and sum(o == b for o, _ in first) == 3
    assert claim(db, 10) == []
    finish(db, [i for o, i in first if o == a][:1])
    assert [o for o, _ in claim(db, 10)] == [a]


def test_provider_slots_and_the_per_minute_tokens_bound_every_claim(fair: tuple[Service, str]) -> None:
    svc, db = fair
    _, ca = owner(svc, db)
    with ca:
        enqueue(ca, 10)
    first = claim(db, 10, slots=3)
    assert len(first) == 3 and claim(db, 10, slots=3) == []
    finish(db, [first[0][1]])
    assert len(claim(db, 10, slots=3)) == 1
    # Four submits have used four tokens in this minute: with five per minute, one is left.
    assert len(claim(db, 10, slots=100, per_minute=5)) == 1
    assert claim(db, 10, slots=100, per_minute=5) == []


def test_concurrent_claimers_never_wait_share_a_slot_or_break_a_cap(fair: tuple[Service, str]) -> None:
    svc, db = fair
    a, ca = owner(svc, db, max_in_flight=1)
    _, cb = owner(svc, db)
    with ca, cb:
        enqueue(ca, 5)
        enqueue(cb, 5)
    claim(db, 0, slots=4)  # the rows exist
    one = psycopg.connect(db)
    two = psycopg.connect(db)
    try:
        # Both transactions claim before either commits; the second must skip, not wait.
        two.execute("SET statement_timeout = '3s'")
        got_one = [r[0] for r in one.execute("SELECT claim_submits('w1', 30, 10, 4, 1000)").fetchall()]
        got_two = [r[0] for r in two.execute("SELECT claim_submits('w2', 30, 10, 4, 1000)").fetchall()]
        one.commit()
        two.commit()
    finally:
        one.close()
        two.close()
    assert not set(got_one) & set(got_two)
    assert len(got_one) + len(got_two) == 4
    with psycopg.connect(db) as conn:
        a_sent = conn.execute("SELECT count(*) FROM jobs WHERE owner = %s AND submit_sent_at IS NOT NULL",
                              (a,)).fetchone()
    assert a_sent == (1,)


@contextlib.contextmanager
def claimer_paused_at(db: str, job_id: str) -> Iterator[tuple[psycopg.Connection[Any], psycopg.Connection[Any]]]:
    """A connection whose reads of ``job_id``'s row wait while the other connection given
    holds advisory lock 7: a claim statement on it stops in the middle, after its snapshot
    was taken. (A row-level security policy, which applies to a role without superuser
    rights, calls a function that waits on the lock.) Each object is undone as soon as it
    exists, whatever fails after it; the role is the cluster's, not the database's."""
    role = f"paused_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db, autocommit=True) as admin, contextlib.ExitStack() as undo:
        admin.execute(f"CREATE ROLE {role}")
        undo.callback(admin.execute, f"DROP ROLE IF EXISTS {role}")
        undo.callback(admin.execute, f"DROP OWNED BY {role}")
        admin.execute(f"GRANT SELECT, UPDATE ON ALL TABLES IN SCHEMA public TO {role}")
        admin.execute("""
            CREATE FUNCTION claim_pause(p_id text) RETURNS boolean LANGUAGE plpgsql AS $$
            BEGIN
                IF p_id = current_setting('test.pause_at', true) THEN
                    PERFORM pg_advisory_lock_shared(7);
                    PERFORM pg_advisory_unlock_shared(7);
                END IF;
                RETURN true;
            END $$""")
        undo.callback(admin.execute, "DROP FUNCTION IF EXISTS claim_pause(text)")
        admin.execute("ALTER TABLE jobs ENABLE ROW LEVEL SECURITY")
        undo.callback(admin.execute, "ALTER TABLE jobs DISABLE ROW LEVEL SECURITY")
        admin.execute(f"CREATE POLICY pause ON jobs TO {role} USING (claim_pause(id)) WITH CHECK (true)")
        undo.callback(admin.execute, "DROP POLICY IF EXISTS pause ON jobs")
        # A paused statement still running when the test ends is ended by the server.
        paused = undo.enter_context(psycopg.connect(db, autocommit=True))
        undo.callback(admin.execute, "SELECT pg_terminate_backend(%s)", (paused.info.backend_pid,))
        gate = undo.enter_context(psycopg.connect(db, autocommit=True))
        paused.execute(f"SET ROLE {role}")
        paused.execute("SELECT set_config('test.pause_at', %s, false)", (job_id,))
        gate.execute("SELECT pg_advisory_lock(7)")
        yield paused, gate


def test_a_slot_filled_by_another_claim_while_a_claim_walks_the_slots_is_not_taken_twice(
        fair: tuple[Service, str]) -> None:
    """The second claim's snapshot is older than the first claim's commit, and it reaches
    the slot that commit filled after it: the slot is busy, not free. (Without the second
    look at a locked slot, provider_free_slot in revision 0018, the claim took it: three
    jobs in flight on two slots.)"""
    svc, db = fair
    _, client = owner(svc, db)
    with client:
        enqueue(client, 3)
    [(_, first)] = claim(db, 1, slots=2)  # slot 0 busy; slot 1 free
    with claimer_paused_at(db, first) as (paused, gate):
        got: list[str] = []
        failed: list[BaseException] = []

        def walk() -> None:
            try:
                got.extend(r[0] for r in paused.execute("SELECT claim_submits('w2', 30, 1, 2, 1000)").fetchall())
            except BaseException as exc:  # noqa: BLE001  raised again in the test's thread
                failed.append(exc)

        walker = threading.Thread(target=walk)
        walker.start()
        try:
            # The walk has passed slot 0's probe and waits on the lock; slot 1 is still free.
            eventually(lambda: gate.execute("SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted",
                                            (paused.info.backend_pid,)).fetchone() == (1,), timeout=10)
            taken = claim(db, 1, slots=2)
            assert len(taken) == 1  # slot 1, committed
        finally:
            gate.execute("SELECT pg_advisory_unlock(7)")
            walker.join(10)
        assert not walker.is_alive(), "the paused claim never finished"
    if failed:
        raise failed[0]
    assert got == [], "the claim took a slot another claim had just filled"
    with psycopg.connect(db) as conn:
        in_flight = conn.execute("SELECT count(*) FROM jobs WHERE submit_sent_at IS NOT NULL").fetchone()
    assert in_flight == (2,)


def test_jobs_already_in_flight_without_a_slot_take_one_before_anything_is_sent(fair: tuple[Service, str]) -> None:
    """After an upgrade under a running service, tasks sent before the slots existed
    hold none; the submitter's first claim (ensure_capacity) binds each to a free slot,
    so the claim counts them against PROVIDER_MAX_IN_FLIGHT."""
    svc, db = fair
    _, client = owner(svc, db)
    ids = enqueue(client, 4)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE jobs SET status = 'submitted', submit_sent_at = now() WHERE id = ANY(%s)", (ids[:2],))

    async def first_claim() -> int:
        engine = create_engine(db, 1)
        try:
            async with engine.begin() as conn:
                return await submits.ensure_capacity(conn, max_in_flight=3, max_per_minute=100)
        finally:
            await engine.dispose()

    assert asyncio.run(first_claim()) == 2
    assert asyncio.run(first_claim()) == 0  # a second process adopts nothing again
    assert [i for _, i in claim(db, 10, slots=3, per_minute=100)] == [ids[2]]  # 3 slots, 2 already upstream


def test_pause_holds_jobs_back_end_to_end_and_resume_sends_them(
    service: Service, sim_defaults: ServerThread, sql: psycopg.Connection[Any]
) -> None:
    name = f"p_{uuid.uuid4().hex[:6]}"
    key = service.new_key(name)
    sql.execute("UPDATE owners SET paused = true WHERE name = %s", (name,))
    with service.client(key) as client:
        job = submit(client, prompt=f"paused-{name}")
        time.sleep(1.5)
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
        assert not [t for t in sim_tasks(sim_defaults.url) if (t.get("webhook_url") or "").endswith(job["id"])]
        sql.execute("UPDATE owners SET paused = false WHERE name = %s", (name,))
        assert wait_terminal(client, job["id"])["status"] == "completed"


def test_a_job_not_started_in_time_times_out_costing_nothing(service: Service, sql: psycopg.Connection[Any]) -> None:
    name = f"st_{uuid.uuid4().hex[:6]}"
    key = service.new_key(name)
    sql.execute("UPDATE owners SET paused = true, monthly_budget_usd = 1 WHERE name = %s", (name,))
    with service.client(key) as client:
        job = submit(client, start_timeout_seconds=1, priority=2)
        assert (job["start_timeout_seconds"], job["priority"]) == (1, 2)
        done = eventually(lambda: (j := client.get(f"/v1/jobs/{job['id']}").json())["status"] == "timed_out" and j,
                          timeout=15)
        owner_view = client.get("/v1/owner").json()["budget"]
        events = [e["type"] for e in client.get(f"/v1/jobs/{job['id']}/events").json()["data"]]
    assert "never started" in done["error"] and done["cost_usd"] is None
    assert owner_view["reserved_usd"] == "0.00" and owner_view["spent_usd"] == "0.00"
    assert "status.changed" in events
    kinds = sorted(r[0] for r in sql.execute("SELECT kind FROM ledger WHERE job_id = %s", (job["id"],)).fetchall())
    assert kinds == ["release", "reserve"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("priority", -1), ("priority", 10), ("priority", "5"), ("priority", 1.5), ("priority", None),
     ("start_timeout_seconds", 0), ("start_timeout_seconds", 86401), ("start_timeout_seconds", True),
     ("start_timeout_seconds", 2**63)],
)
def test_hostile_scheduling_fields_are_422_naming_the_field(client: httpx.Client, field: str, value: Any) -> None:
    answer = client.post("/v1/jobs", json={**BODY, field: value})
    assert answer.status_code == 422, answer.text
    assert [f["loc"] for f in answer.json()["error"]["fields"]] == [field]
