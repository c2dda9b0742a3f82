"""Child processes a benchmark starts: tied to our life, bounded in time, stopped by id.

Every child gets ``PR_SET_PDEATHSIG`` so that even a benchmark killed with ``kill -9``
leaves no server behind, and runs in its own session so stopping it stops its children
(by process group id, never by name).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable

# Runs first in every child and then execs the real program: PR_SET_PDEATHSIG (1) asks the
# kernel to SIGTERM the child when we die, and it survives exec. Done in the child after
# exec rather than in a preexec_fn, which is unsafe in a process with threads (moto's S3
# server runs in one). If we died before the prctl took effect, the child exits at once.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
    "os.getppid() == int(sys.argv[1]) or sys.exit(1); os.execvp(sys.argv[2], sys.argv[2:])"
)


def spawn(argv: Sequence[str], *, env: dict[str, str] | None = None, stdout: int | IO[bytes] | None = None,
          stderr: int | IO[bytes] | None = None, stdin: int | None = subprocess.DEVNULL,
          cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    wrapped = [PYTHON, "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]
    return subprocess.Popen(wrapped, cwd=cwd, env=env, stdout=stdout, stderr=stderr, stdin=stdin,
                            start_new_session=True)


def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode


@contextlib.contextmanager
def running(argv: Sequence[str], *, env: dict[str, str] | None = None, ready_url: str | None = None,
            ready_timeout: float = 30.0, log_path: Path | None = None,
            cwd: Path = ROOT) -> Iterator[subprocess.Popen[bytes]]:
    """A child process for the duration of the block; with ``ready_url``, wait until it
    answers (any HTTP status) first. ``cwd``: where it runs (``python -m`` imports from there first)."""
    log = open(log_path, "wb") if log_path else None  # noqa: SIM115 - closed below
    proc = spawn(argv, env=env, stdout=log or subprocess.DEVNULL, stderr=log or subprocess.DEVNULL, cwd=cwd)
    try:
        if ready_url:
            wait_http(ready_url, proc, ready_timeout, log_path)
        yield proc
    finally:
        stop(proc)
        if log:
            log.close()


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path and log_path.exists() else ""
            raise RuntimeError(f"child {proc.pid} exited with {proc.returncode} before answering {url}\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=1.0)
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout} s")
        time.sleep(0.1)
