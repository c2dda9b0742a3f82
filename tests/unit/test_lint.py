"""ruff (the rule set in pyproject.toml) and `mypy --strict` run with the tests, so the
README's test line (and .ci/run, which runs exactly it) fails on any finding. Both are
pinned exactly in the dev extra: their verdicts change with their versions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing() -> None:
    done = _run("ruff", "check", "--no-cache", "service", "devtools", "tests", "migrations")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


def test_mypy_strict_finds_nothing_in_the_product_and_devtools() -> None:
    done = _run("mypy", "--strict", "service", "devtools")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
