"""The service as real OS processes (`wavespeed-jobs serve` / `worker`), for the tests
that kill, restart or SIGTERM them. Every process started here is stopped at exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that reproduce ``settings`` in a child process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


class ServiceProcess:
    """One `wavespeed-jobs` child process with its output in a log file."""

    def __init__(self, args: list[str], settings: Settings, log_path: Path, port: int | None = None) -> None:
        self.args = args
        self.port = port
        self.log_path = log_path
        self.env = {**os.environ, **settings_env(settings), "LOG_FORMAT": "json", "LOG_LEVEL": "info"}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # Generous: on a 2-core machine under other suites' load, importing and starting the
    # service has taken 19 s (seen in a kill -9 scenario whose restart then timed out).
    def start(self, ready_timeout: float = 60.0) -> ServiceProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", *self.args], env=self.env, cwd=ROOT, stdout=log, stderr=log
        )
        if self.port is not None:
            deadline = time.monotonic() + ready_timeout
            while True:
                try:
                    if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.args} exited with {self.proc.returncode}; see {self.log_path}")
                if time.monotonic() > deadline:
                    # The caller's `with` never got this process to stop: stop it here, or it
                    # outlives the test (seen: a serve still claiming after its database was dropped).
                    self.proc.kill()
                    self.proc.wait(10)
                    raise TimeoutError(f"{self.args} not ready in {ready_timeout} s; see {self.log_path}")
                time.sleep(0.1)
        else:
            time.sleep(1.0)  # a worker has no port: give it a moment to connect
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float) -> int:
        """SIGTERM; the exit code (raises if it does not exit within ``timeout``)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
