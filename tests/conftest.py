"""Real parts for every integration test: a Postgres database (the machine's server, or
the embedded one when none answers), moto's S3 server over HTTP, the WaveSpeed
simulator over HTTP, and the service itself under uvicorn — all on 127.0.0.1, all
stopped at the end of the session.

Tests isolate themselves by owner: each gets fresh API keys, so jobs of one test are
invisible to the others even though they share one database and one service.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import psycopg
import pytest

from devtools.devstack import DEV_ACCESS_KEY, DEV_SECRET_KEY, embedded_postgres, embedded_s3, free_port
from devtools.serverthread import ServerThread
from devtools.simulator.app import create_simulator_app
from devtools.simulator.config import SimulatorConfig
from service.app import create_app
from service.db.engine import migrate
from service.db.keys import create_key_blocking
from service.settings import Settings
from tests.pgbouncer import PgBouncer

SYSTEM_POSTGRES = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SIM_SECRET = "whsec_simulator_0123456789abcdef"
BUCKET = "wavespeed-jobs-test"

# Fast clocks for tests; production defaults are in service/settings.py.
FAST_SETTINGS: dict[str, Any] = {
    "reconcile_after_seconds": 2.0,
    "poll_interval_seconds": 0.2,
    "lease_seconds": 5.0,
    "callback_retry_schedule": "0,0.3,0.6",
    "callback_timeout_seconds": 2.0,
    "wavespeed_timeout_seconds": 3.0,
    "download_timeout_seconds": 10.0,
    "submit_lost_deadline_seconds": 20.0,
    "shutdown_grace_seconds": 2.0,
    # The pytest workers, each with its services (and the fault scenarios' processes), share
    # one Postgres of 100 connection slots: each pool holds at most 2 x 4.
    "db_pool_size": 4,
    # /metrics reads the database at every scrape, so a test sees the figures of what it
    # just did (test_metrics.py tests the cache of the production default itself).
    "metrics_cache_seconds": 0.0,
}


# The longest tests (each a minute or more of two cores' time on its own), spread evenly
# over the first two thirds of the run: with one test sent to a pytest-xdist worker at a
# time (``--maxschedchunk 1`` in pyproject.toml) about one of them runs at any moment,
# beside short tests, instead of all of them at once (four fault scenarios together
# starved each other past their timeouts) or last, on one worker, while the others idle.
SLOW = ("test_faults.py", "test_openapi.py::test_schemathesis", "test_plain_install.py",
        "test_pgbouncer.py::test_kill_9")


def pytest_configure(config: pytest.Config) -> None:
    """The type check starts at once in the controller of a parallel run when the lint
    tests may be selected (tests/unit/test_lint.py says why); workers never start it."""
    parallel = config.getoption("dist", default="no") != "no"
    if parallel and not hasattr(config, "workerinput") and _may_select_lint(config):
        from tests.unit import test_lint

        test_lint.start_mypy()


def _may_select_lint(config: pytest.Config) -> bool:
    lint = (Path(__file__).parent / "unit" / "test_lint.py").resolve()
    paths = [Path(arg.split("::")[0]).resolve() for arg in config.args]
    return any(path == lint or path in lint.parents for path in paths)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slowest tests spread out, the lint tests last; in a plain (one-process) run
    the type check starts now, in the background."""
    slow = [item for item in items if any(mark in item.nodeid for mark in SLOW)]
    lint = [item for item in items if item.path.name == "test_lint.py"]
    rest = [item for item in items if item not in slow and item not in lint]
    step = (len(rest) * 2 // 3) // max(len(slow), 1)
    for n, item in enumerate(slow):
        rest.insert(n * (step + 1), item)
    items[:] = rest + lint
    if lint and not hasattr(config, "workerinput"):
        from tests.unit import test_lint

        test_lint.start_mypy()


def pytest_unconfigure() -> None:
    from tests.unit import test_lint

    test_lint.stop_mypy()


def _system_postgres_up() -> bool:
    try:
        with psycopg.connect(SYSTEM_POSTGRES, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL to a Postgres server's maintenance database."""
    if _system_postgres_up():
        yield SYSTEM_POSTGRES
        return
    with embedded_postgres(tmp_path_factory.mktemp("pg")) as url:
        yield url


def _database_url(server_url: str, name: str) -> str:
    base, _, query = server_url.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + name
    return base + ("?" + query if query else "")


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    name = f"wsj_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _database_url(server_url, name)
    migrate(url)
    try:
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url(postgres_server: str) -> Iterator[str]:
    with fresh_database(postgres_server) as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", DEV_ACCESS_KEY)
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", DEV_SECRET_KEY)
    with embedded_s3() as endpoint:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield endpoint


@pytest.fixture(scope="session")
def s3(s3_endpoint: str) -> Any:
    """A plain boto3 client on the emulator, for assertions on what landed in S3."""
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture(scope="session")
def simulator() -> Iterator[ServerThread]:
    config = SimulatorConfig(completion_delay=0.3, processing_delay=0.05, webhook_secret=SIM_SECRET, seed=7)
    with ServerThread(create_simulator_app(config)) as server:
        yield server


def sim_config(simulator: ServerThread, **knobs: Any) -> None:
    """Change the live simulator's fault knobs."""
    httpx.post(simulator.url + "/_sim/config", json=knobs, timeout=5).raise_for_status()


@pytest.fixture
def sim_defaults(simulator: ServerThread) -> Iterator[ServerThread]:
    """The simulator with its knobs restored to the session defaults after the test."""
    yield simulator
    sim_config(
        simulator, completion_delay=0.3, processing_delay=0.05, failure_rate=0.0, submit_429_rate=0.0,
        submit_500_rate=0.0, submit_hang_rate=0.0, webhook_drop_rate=0.0, webhook_duplicate_count=0,
        webhook_delay=0.0, webhook_out_of_order=False, webhook_bad_signature_rate=0.0, download_fail_rate=0.0,
        download_delay=0.0, download_bytes_per_second=0,
    )


# Where the services tests start reach Postgres: directly, unless a test module routes
# them through PgBouncer (tests/integration/test_pgbouncer.py re-runs scenarios that way):
# then make_settings points DATABASE_URL at the pooler in transaction mode and
# DATABASE_DIRECT_URL at the server itself, as an operator does.
_POOLERS: list[PgBouncer] = []


@contextlib.contextmanager
def services_through(bouncer: PgBouncer) -> Iterator[None]:
    _POOLERS.append(bouncer)
    try:
        yield
    finally:
        _POOLERS.remove(bouncer)


def _route(database_url: str) -> dict[str, Any]:
    if not _POOLERS:
        return {"database_url": database_url}
    return {"database_url": _POOLERS[-1].url(database_url), "database_direct_url": database_url,
            "database_pool_mode": "transaction"}


def make_settings(database_url: str, s3_endpoint: str, simulator_url: str, port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        **_route(database_url),
        "s3_bucket": BUCKET,
        "s3_endpoint_url": s3_endpoint,
        "wavespeed_api_key": "sim-key",
        "wavespeed_base_url": simulator_url,
        "wavespeed_webhook_secret": SIM_SECRET,
        "public_base_url": f"http://127.0.0.1:{port}",
        "allow_private_networks": True,
        "log_format": "json",
        "log_level": "warning",
        **FAST_SETTINGS,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Service:
    """A running service and what tests need to talk to it."""

    url: str
    settings: Settings
    server: ServerThread | None = None
    keys: dict[str, str] = field(default_factory=dict)

    def new_key(self, owner: str | None = None) -> str:
        owner = owner or f"owner_{uuid.uuid4().hex[:8]}"

        key = create_key_blocking(self.settings.database_url or "", owner,
                                  transaction_pooling=self.settings.transaction_pooling)
        self.keys[key] = owner
        return key

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        key = key or self.new_key()
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=70, **kwargs)


@contextlib.contextmanager
def run_service(
    database_url: str, s3_endpoint: str, simulator_url: str, *, run_workers: bool = True, **overrides: Any
) -> Iterator[Service]:
    port = free_port()
    settings = make_settings(database_url, s3_endpoint, simulator_url, port, **overrides)
    # A start-up of 60 s at most, as for ServiceProcess: under other suites' load the
    # lifespan has taken more than uvicorn's 10 s, and a module's shared service then
    # failed every test that uses it.
    with ServerThread(create_app(settings, run_workers=run_workers), port=port, timeout_graceful_shutdown=3,
                      startup_timeout=60) as server:
        yield Service(url=server.url, settings=settings, server=server)


@pytest.fixture(scope="session")
def service(database_url: str, s3_endpoint: str, simulator: ServerThread) -> Iterator[Service]:
    with run_service(database_url, s3_endpoint, simulator.url) as svc:
        yield svc


@pytest.fixture
def client(service: Service) -> Iterator[httpx.Client]:
    """An API client with a fresh owner."""
    with service.client() as c:
        yield c


@pytest.fixture
def sql(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A direct connection for assertions on the rows themselves."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def output_dir() -> Path:
    path = Path(__file__).resolve().parent.parent / "test-output"
    path.mkdir(exist_ok=True)
    return path
