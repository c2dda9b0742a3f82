"""ruff (the rule set in pyproject.toml) and `mypy --strict` run with the tests, so the
README's test line (and .ci/run, which runs exactly it) fails on any finding. Both are
pinned exactly in the dev extra: their verdicts change with their versions.

A cold `mypy --strict` (a fresh clone has no .mypy_cache) is a minute of one core on
a quiet machine. So tests/conftest.py starts it once, in the background, as soon as the
session knows this test may run: in the one process of a plain run, or in the
controller of a parallel (pytest-xdist) run, never in each worker, which would pay that
minute once per worker. It checks while the integration tests wait on the network; its
verdict lands in a file (named by WSJ_MYPY_RESULT, which the workers inherit) and the
test below reads it at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MYPY = ("mypy", "--strict", "service", "devtools")
RESULT_ENV = "WSJ_MYPY_RESULT"
# Runs mypy and writes {"rc", "out"} to argv[1] when it is done: the verdict outlives the
# process that started it, so a worker can read what the controller started.
_WRAPPER = (
    "import json, subprocess, sys\n"
    "done = subprocess.run(sys.argv[2:], capture_output=True, text=True)\n"
    "tmp = sys.argv[1] + '.tmp'\n"
    "open(tmp, 'w').write(json.dumps({'rc': done.returncode, 'out': done.stdout[-6000:] + done.stderr[-2000:]}))\n"
    "import os; os.replace(tmp, sys.argv[1])\n"
)

_background: dict[str, subprocess.Popen[bytes]] = {}


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)


def start_mypy() -> None:
    """Start the type check now, once per run (a second call, or a call in a worker
    whose controller started it, does nothing)."""
    if os.environ.get(RESULT_ENV):
        return
    result = Path(tempfile.mkdtemp(prefix="wsj-mypy-")) / "verdict.json"
    os.environ[RESULT_ENV] = str(result)  # inherited by xdist workers started after this
    _background["mypy"] = subprocess.Popen(
        [sys.executable, "-c", _WRAPPER, str(result), str(BIN / MYPY[0]), *MYPY[1:]], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop_mypy() -> None:
    """End a type check still running when the session stops (nobody will read it),
    and remove its verdict: only the process that started it does either."""
    proc = _background.pop("mypy", None)
    if proc is None:
        return
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # the wrapper and mypy under it
        proc.wait()
    shutil.rmtree(Path(os.environ.pop(RESULT_ENV)).parent, ignore_errors=True)


def mypy_verdict(timeout: float = 900) -> tuple[int, str]:
    start_mypy()  # already running when the session started it
    result = Path(os.environ[RESULT_ENV])
    deadline = time.monotonic() + timeout
    while not result.exists():
        proc = _background.get("mypy")
        if proc is not None and proc.poll() is not None and not result.exists():
            return proc.returncode or 1, "the mypy wrapper ended without a verdict"
        if time.monotonic() > deadline:
            raise AssertionError(f"mypy gave no verdict within {timeout:.0f} s")
        time.sleep(0.2)
    verdict = json.loads(result.read_text())
    return int(verdict["rc"]), str(verdict["out"])


def test_ruff_finds_nothing() -> None:
    done = _run("ruff", "check", "--no-cache", "service", "devtools", "tests")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


def test_mypy_strict_finds_nothing_in_the_product_and_devtools() -> None:
    rc, out = mypy_verdict()
    assert rc == 0, out
