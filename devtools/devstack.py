"""The embedded parts `wavespeed-jobs dev` (and the test suite) start on one machine:
Postgres from the ``pgserver`` wheel, an S3-compatible server from moto's server mode,
and the WaveSpeed simulator. All bind loopback and stop with the process."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.serverthread import ServerThread
from devtools.test_chain import TestChain, ensure_test_chain

DEV_ACCESS_KEY = "wavespeed-jobs-dev"
DEV_SECRET_KEY = "wavespeed-jobs-dev-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """A Postgres server with its data under ``data_dir`` (kept between runs); yields a
    URL. It listens on a Unix socket only, so it never clashes with a system Postgres."""
    import pgserver  # dev extra

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@contextlib.contextmanager
def embedded_s3(port: int = 0) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1; yields its endpoint URL. Objects live in memory."""
    from moto.server import ThreadedMotoServer  # dev extra

    port = port or free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@contextlib.contextmanager
def embedded_simulator(**knobs: Any) -> Iterator[str]:
    """The WaveSpeed simulator in a thread; yields its base URL."""
    from devtools.simulator.app import create_simulator_app
    from devtools.simulator.config import SimulatorConfig

    config = dataclasses.replace(SimulatorConfig.from_env(os.environ), **knobs)
    with ServerThread(create_simulator_app(config)) as server:
        yield server.url


@dataclass
class DevStack:
    database_url: str
    s3_endpoint_url: str
    simulator_url: str
    simulator_api_key: str
    chain: TestChain  # Content Credentials are signed with a test chain of the stack's own


    def environment(self, port: int) -> dict[str, str]:
        """The settings `serve` would need, pointing at the embedded parts."""
        return {
            "DATABASE_URL": self.database_url,
            "S3_BUCKET": "wavespeed-jobs-dev",
            "S3_ENDPOINT_URL": self.s3_endpoint_url,
            "AWS_ACCESS_KEY_ID": DEV_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": DEV_SECRET_KEY,
            "WAVESPEED_API_KEY": self.simulator_api_key,
            "WAVESPEED_BASE_URL": self.simulator_url,
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "S3_CREATE_BUCKET": "true",
            "ALLOW_PRIVATE_NETWORKS": "true",
            "C2PA_SIGNING_CERT": str(self.chain.chain_path),
            "C2PA_SIGNING_KEY": str(self.chain.key_path),
        }


# The embedded Postgres and S3 come from the dev extra; the plain install (the product
# alone) leaves them out, and `dev` says so instead of failing with a traceback.
DEV_EXTRA = {"pgserver": "pgserver", "moto": "moto[server]", "flask_cors": "moto[server]"}
NO_DEV_EXTRA = ("error: `wavespeed-jobs dev` needs the dev extra ({missing} missing): "
                "pip install -e '.[dev]' in a source checkout. serve, worker and migrate need only the plain install.")


def missing_dev_extra() -> list[str]:
    """The dev extra's distributions this environment lacks."""
    missing = [dist for module, dist in DEV_EXTRA.items() if importlib.util.find_spec(module) is None]
    return sorted(set(missing))


@contextlib.contextmanager
def dev_stack(data_dir: Path, completion_delay: float = 2.0) -> Iterator[DevStack]:
    from devtools.simulator.config import SimulatorConfig

    if missing := missing_dev_extra():
        raise SystemExit(NO_DEV_EXTRA.format(missing=", ".join(missing)))

    api_key = SimulatorConfig.from_env(os.environ).api_key
    with (
        embedded_postgres(data_dir / "postgres") as database_url,
        embedded_s3() as s3_url,
        embedded_simulator(completion_delay=completion_delay) as simulator_url,
    ):
        yield DevStack(database_url, s3_url, simulator_url, api_key, ensure_test_chain(data_dir / "c2pa"))
