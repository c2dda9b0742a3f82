"""ruff (the rule set in pyproject.toml) and `mypy --strict` run with the tests, so the
README's test line (and .ci/run, which runs exactly it) fails on any finding. Both are
pinned exactly in the dev extra: their verdicts change with their versions.

A cold `mypy --strict` (a fresh clone has no .mypy_cache) is a minute of one core on
a quiet machine. So tests/conftest.py starts it in the background as soon as the
session knows this test is selected, and runs this module last: mypy checks while the
integration tests wait on the network, and its verdict is read at the end.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MYPY = ("mypy", "--strict", "service", "devtools")

_background: dict[str, subprocess.Popen[str]] = {}


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)


def start_mypy() -> None:
    """Start the type check now, once; its verdict is read by the test below."""
    if "mypy" not in _background:
        _background["mypy"] = subprocess.Popen([str(BIN / MYPY[0]), *MYPY[1:]], cwd=ROOT, text=True,
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def stop_mypy() -> None:
    """End a type check nobody read (the session stopped early)."""
    proc = _background.pop("mypy", None)
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.communicate()


def test_ruff_finds_nothing() -> None:
    done = _run("ruff", "check", "--no-cache", "service", "devtools", "tests", "migrations")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


def test_mypy_strict_finds_nothing_in_the_product_and_devtools() -> None:
    start_mypy()  # already running when the session started it
    proc = _background.pop("mypy")
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stdout[-6000:] + stderr[-2000:]
