"""The product runs from the plain install, as the image installs it: a fresh virtual
environment gets requirements.lock with --require-hashes (pip refuses any package the lock
leaves out), then the project from the image's own sources with --no-deps, no extras. From
that install, in an empty directory outside the checkout (as the image's /app: the Alembic
revisions come inside the package), `migrate` builds a new database, `keys create` makes a
key, `serve --no-workers` and `worker` run as processes, and a job goes to `completed`
against the simulator and the S3 server over HTTP.

Nothing of the dev extra is in that environment (it would have hidden the missing
`cryptography` and `certifi` before); pip's cache makes the install take seconds."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from devtools.devstack import free_port
from devtools.serverthread import ServerThread
from tests.conftest import BUCKET, _database_url, make_settings
from tests.integration.helpers import eventually, s3_object
from tests.integration.test_image_contents import copied_sources
from tests.processes import settings_env

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
DEV_EXTRA_ONLY = ("pgserver", "moto", "pytest", "psycopg", "ruff", "mypy", "flask")


def run(args: list[str], timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the venv's bin directory, an empty working directory outside the checkout),
    installed the way the Dockerfile installs, once per test run: the pytest-xdist workers
    of one run share it (the first builds it under a lock)."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "plain-install"
    shared.mkdir(exist_ok=True)
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "installed").exists():
            install_like_the_image(shared)
            (shared / "installed").touch()
    return shared / "venv" / "bin", shared / "app"


def install_like_the_image(base: Path) -> None:
    src = base / "src"
    (base / "app").mkdir()
    for source in copied_sources():
        target = src / source
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / source, target)
    venv = base / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "install", "--require-hashes", "--no-deps", "-r", str(src / "requirements.lock")], timeout=900)
    build = base / "build"
    run([sys.executable, "-m", "venv", str(build)])
    build_pip = [str(build / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*build_pip, "install", "--require-hashes", "--no-deps", "-r", str(src / "build-requirements.lock")],
        timeout=600)
    run([*build_pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(base / "dist"), str(src)],
        timeout=600)
    [wheel] = (base / "dist").glob("*.whl")
    run([*pip, "install", "--no-deps", str(wheel)], timeout=600)
    run([*pip, "check"])


def plain_env(settings_values: dict[str, str]) -> dict[str, str]:
    """The process environment of the installed commands: the service's settings, and
    nothing that would let the checkout or this venv leak in."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR", "AWS_ACCESS_KEY_ID",
                                                         "AWS_SECRET_ACCESS_KEY")}
    return {**keep, **settings_values, "LOG_FORMAT": "json", "LOG_LEVEL": "info"}


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def empty_database(postgres_server: str) -> Iterator[str]:
    """A database no migration has touched: `migrate` from the plain install builds it."""
    name = f"wsj_plain_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _database_url(postgres_server, name)
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_installed_product_is_the_venvs_and_holds_nothing_of_the_dev_extra(image: tuple[Path, Path]) -> None:
    bin_dir, app = image
    code = ("import importlib.util, service, sys\n"
            f"print(service.__file__)\nprint([m for m in {DEV_EXTRA_ONLY!r} if importlib.util.find_spec(m)])\n")
    where, dev = run([str(bin_dir / "python"), "-c", code], cwd=app).stdout.splitlines()
    assert where.startswith(str(bin_dir.parent)), where
    assert dev == "[]"


def test_migrate_keys_serve_and_worker_take_a_job_to_completed_from_the_plain_install(
    image: tuple[Path, Path], empty_database: str, s3_endpoint: str, simulator: ServerThread, s3: Any,
    tmp_path: Path,
) -> None:
    bin_dir, app = image
    assert not app.is_relative_to(ROOT) and not (app / "alembic.ini").exists() and not (app / "migrations").exists()
    cli = str(bin_dir / "wavespeed-jobs")
    port = free_port()
    env = plain_env(settings_env(make_settings(empty_database, s3_endpoint, simulator.url, port)))

    run([cli, "migrate"], env=env, cwd=app)
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT to_regclass('jobs') IS NOT NULL").fetchone() == (True,)
    key = run([cli, "keys", "create", "--owner", "plain-install"], env=env, cwd=app).stdout.strip()
    assert key and " " not in key

    serve = [cli, "serve", "--no-workers", "--host", "127.0.0.1", "--port", str(port)]
    with (process(serve, env, app, tmp_path / "serve.log") as server,
          process([cli, "worker"], env, app, tmp_path / "worker.log") as worker):
        base = f"http://127.0.0.1:{port}"
        eventually(lambda: _answers(base + "/readyz", server, tmp_path / "serve.log"), timeout=90, interval=0.2)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            answer = client.post("/v1/jobs", json={"model": "wavespeed-ai/flux-dev-lora",
                                                   "input": {"prompt": "a plain install", "size": "256*256"}})
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["id"]

            def completed() -> dict[str, Any] | None:
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
                assert job["status"] not in ("failed", "canceled", "timed_out"), job
                return job if job["status"] == "completed" else None

            job = eventually(completed, timeout=90, interval=0.3)
            stored = s3_object(s3, BUCKET, job["outputs"][0]["key"])
            assert hashlib.sha256(stored).hexdigest() == job["outputs"][0]["sha256"]
            assert httpx.get(base + "/metrics", timeout=10).status_code == 200
            # The history page's templates and static files are in the installed package.
            login = httpx.get(base + "/login", timeout=10)
            assert login.status_code == 200 and "<form" in login.text, login.text[:500]
            assert httpx.get(base + "/static/history_page.css", timeout=10).status_code == 200
        # SIGTERM: both stop cleanly within their grace.
        for proc in (server, worker):
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0


def _answers(url: str, proc: subprocess.Popen[bytes], log: Path) -> bool:
    assert proc.poll() is None, log.read_text()[-3000:]
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_dev_without_the_dev_extra_says_what_to_install(image: tuple[Path, Path], tmp_path: Path) -> None:
    """The wheel carries devtools (the simulator runs from the plain install); `dev` also
    needs the embedded Postgres and S3 of the dev extra, and says so."""
    bin_dir, _ = image
    tools = tmp_path / "with-devtools"
    shutil.copytree(ROOT / "devtools", tools / "devtools", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**plain_env({}), "PYTHONPATH": str(tools)}
    done = subprocess.run([str(bin_dir / "wavespeed-jobs"), "dev", "--data-dir", str(tmp_path / "data")], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "needs the dev extra" in done.stderr and "pgserver" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
