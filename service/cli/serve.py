"""The commands the image runs: ``serve`` (API, receiver and workers under uvicorn),
``worker`` (the workers alone) and ``migrate``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import uvicorn

from service.cli.environment import configure_logs, load_settings, require_database
from service.domain.errors import ConfigError
from service.settings import Settings

if TYPE_CHECKING:
    from service.resources import Resources


def cmd_migrate(args: argparse.Namespace) -> int:
    from service.db.engine import migrate

    settings = load_settings()
    # Alembic's DDL and version row want a session of their own: DATABASE_DIRECT_URL when
    # set (behind a transaction pooler the session would change between statements).
    migrate(settings.database_direct_url or require_database(settings))
    print("database is at the latest revision")
    return 0


def check_content_signer(settings: Settings) -> None:
    """Refuse to start with a certificate C2PA would reject (ConfigError: its reason, exit 2),
    before the port opens, rather than marking every image with a manifest that fails."""
    from service.app import content_signer

    signer = content_signer(settings)
    if signer is not None:
        signer.close()


def _serve(settings: Settings, args: argparse.Namespace) -> None:
    from service.api.plumbing.header_guard import capped_httptools
    from service.app import create_app

    missing = settings.missing_for_serve()
    if missing:
        raise SystemExit(f"missing required settings: {', '.join(missing)} (see docs/configuration.md)")
    check_content_signer(settings)
    app = create_app(settings, run_workers=not args.no_workers)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", access_log=False,
        log_config=None,  # keep service/observability/logs.py's handler: uvicorn's lines in the same format
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
        # Headers over MAX_REQUEST_HEADER_BYTES are refused as they arrive: by our capped
        # httptools protocol (the default; h11 halves throughput), or by h11's own limit.
        http=capped_httptools(settings.max_request_header_bytes) if args.http == "httptools" else "h11",
        h11_max_incomplete_event_size=settings.max_request_header_bytes,
        # Which proxies' X-Forwarded-For/-Proto are believed (uvicorn's default: 127.0.0.1).
        forwarded_allow_ips=args.forwarded_allow_ips,
    )
    GracefulServer(config).run()


class GracefulServer(uvicorn.Server):
    """uvicorn's Server, except that a SIGTERM/SIGINT that led to a clean shutdown ends
    the process with exit code 0 (uvicorn re-raises the signal afterwards, which
    orchestrators read as a crash)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Live streams never end by themselves: end them first (each sends a last comment
        # and completes its response), or the graceful wait would run to its timeout.
        streams = getattr(getattr(self.config.app, "state", None), "streams", None)
        if streams is not None:
            streams.close_all()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logs(settings)
    _serve(settings, args)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from service.app import build_duties, open_resources
    from service.work.runner import Runner

    settings = load_settings()
    configure_logs(settings)
    check_content_signer(settings)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with open_resources(settings) as res:
            runner = Runner(res, build_duties(res))
            await runner.start()
            ops = _ops_server(res, args) if args.port is not None else None
            serving = asyncio.create_task(ops.serve()) if ops else None
            await stop.wait()
            await runner.stop(settings.shutdown_grace_seconds)
            if ops and serving:
                ops.should_exit = True
                await serving

    try:
        asyncio.run(go())
    except ConfigError as exc:
        raise SystemExit(exc.message) from None
    return 0


class _OpsServer(uvicorn.Server):
    """uvicorn inside the worker's own event loop: the worker's handlers keep SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _ops_server(res: Resources, args: argparse.Namespace) -> _OpsServer:
    """The worker's own port: /healthz, /readyz and /metrics (its callbacks, provider calls
    and S3 writes are counted in this process, so Prometheus scrapes it too)."""
    from service.api.plumbing.header_guard import capped_httptools
    from service.app import create_ops_app

    # The port listens on every interface by default: the same header cap as serve's,
    # counted as the bytes arrive (a 20 MB header would otherwise be joined by httptools).
    limit = res.settings.max_request_header_bytes
    return _OpsServer(uvicorn.Config(create_ops_app(res), host=args.host, port=args.port, log_level="warning",
                                     access_log=False, log_config=None, http=capped_httptools(limit),
                                     h11_max_incomplete_event_size=limit))


def add_parsers(sub: Any) -> None:
    """``serve``, ``worker`` and ``migrate``."""
    serve = sub.add_parser("serve", help="API + receiver + workers (uvicorn)")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-workers", action="store_true", help="API and receiver only")
    serve.add_argument("--forwarded-allow-ips", default=None, metavar="IPS",
                       help="proxies trusted for X-Forwarded-Proto/-For, comma-separated or '*' "
                            "(default: $FORWARDED_ALLOW_IPS, else 127.0.0.1)")
    serve.add_argument("--http", choices=["httptools", "h11"], default="httptools",
                       help="HTTP parser (default httptools, capped at MAX_REQUEST_HEADER_BYTES; h11 caps "
                            "them too, at half the throughput)")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="background workers only")
    worker.add_argument("--port", type=int, default=None,
                        help="also serve /healthz, /readyz and /metrics on this port (default: no port)")
    worker.add_argument("--host", default="0.0.0.0", help="the address of --port")
    worker.set_defaults(func=cmd_worker)

    migrate = sub.add_parser("migrate", help="alembic upgrade head on DATABASE_URL")
    migrate.set_defaults(func=cmd_migrate)
