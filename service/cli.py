"""``wavespeed-jobs`` (also ``python -m service``): dev, serve, worker, migrate, keys,
simulator. Settings are read here, once, and passed down."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import uvicorn

from service.domain.errors import ConfigError
from service.settings import Settings

# `dev` and `simulator` run the development tools (devtools/: the simulator, the embedded
# stack), which the Docker image leaves out; there they say so instead of a traceback.
DEV_COMMANDS = ("dev", "simulator")
NO_DEVTOOLS = ("error: `wavespeed-jobs {command}` needs the development tools (the devtools package), which this "
               "install leaves out: the Docker image ships the product only. Run it from a source checkout "
               "(pip install -e '.[dev]').")


def has_devtools() -> bool:
    try:
        return importlib.util.find_spec("devtools.simulator") is not None
    except ModuleNotFoundError:  # devtools itself is missing
        return False


def _settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # noqa: BLE001  pydantic's message names the variable and the rule
        raise SystemExit(f"invalid configuration: {exc}") from None


def _configure_logs(settings: Settings) -> None:
    from service.observability.logs import configure

    configure(settings.log_level, settings.effective_log_format)


def _require_database(settings: Settings) -> str:
    if not settings.database_url:
        raise SystemExit("DATABASE_URL is not set (e.g. postgresql://user:pass@host:5432/db)")
    return settings.database_url


def cmd_migrate(args: argparse.Namespace) -> int:
    from service.db.engine import migrate

    migrate(_require_database(_settings()))
    print("database is at the latest revision")
    return 0


def cmd_callback_secret(args: argparse.Namespace) -> int:
    """Print an owner's current callback secret (``--owner``), or without it the
    service-wide one that owners from before per-owner secrets still use."""
    from service.app import callback_secret
    from service.db import callback_secrets
    from service.db.engine import create_engine
    from service.domain.sealing import Sealer

    settings = _settings()
    url = _require_database(settings)
    configured = settings.callback_signing_secret.get_secret_value() if settings.callback_signing_secret else None
    key = settings.secrets_encryption_key.get_secret_value() if settings.secrets_encryption_key else None

    async def go() -> str:
        engine = create_engine(url, 1)
        try:
            legacy = await callback_secret(engine, configured)
            if args.owner is None:
                return legacy
            if not 1 <= len(args.owner) <= 200 or "\x00" in args.owner:
                raise SystemExit("--owner must be 1 to 200 characters")
            async with engine.begin() as conn:
                return (await callback_secrets.current(conn, args.owner, Sealer(key), legacy)).secret
        finally:
            await engine.dispose()

    print(asyncio.run(go()))
    if args.owner is None:
        print("(the service-wide secret; each owner's own: callback-secret --owner NAME)", file=sys.stderr)
    return 0


def _serve(settings: Settings, args: argparse.Namespace) -> None:
    from service.api.header_guard import capped_httptools
    from service.app import create_app

    missing = settings.missing_for_serve()
    if missing:
        raise SystemExit(f"missing required settings: {', '.join(missing)} (see README's configuration table)")
    app = create_app(settings, run_workers=not args.no_workers)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", access_log=False,
        log_config=None,  # keep service/logs.py's handler: uvicorn's lines in the same format
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
    settings = _settings()
    _configure_logs(settings)
    _serve(settings, args)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from service.app import build_duties, open_resources
    from service.work.runner import Runner

    settings = _settings()
    _configure_logs(settings)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with open_resources(settings) as res:
            runner = Runner(res, build_duties(res))
            await runner.start()
            await stop.wait()
            await runner.stop(settings.shutdown_grace_seconds)

    try:
        asyncio.run(go())
    except ConfigError as exc:
        raise SystemExit(exc.message) from None
    return 0


def cmd_simulator(args: argparse.Namespace) -> int:
    from devtools.simulator.app import run
    from devtools.simulator.config import SimulatorConfig

    config = SimulatorConfig.from_args(args, base=SimulatorConfig.from_env(os.environ))
    run(config, host=args.host, port=args.port)
    return 0


def _demo(base_url: str, api_key: str) -> None:
    """Submit one job, wait for it, and show where its image is stored."""
    import httpx  # here, not at the top: every other command would pay for it

    headers = {"Authorization": f"Bearer {api_key}"}
    body = {"model": "wavespeed-ai/flux-dev-lora",
            "input": {"prompt": "a lighthouse at dusk, film photo", "size": "512*512"},
            "metadata": {"demo": "true"}}
    with httpx.Client(base_url=base_url, headers=headers, timeout=70) as client:
        job = client.post("/v1/jobs?wait=60", json=body).json()
        print(f"\ndemo job {job['id']}: {job['status']}")
        for output in job.get("outputs", []):
            print(f"  output {output['index']}: s3 key {output['key']}, {output['size_bytes']} bytes, "
                  f"sha256 {output['sha256'][:16]}…")
            print(f"  presigned URL: {output['url']}")
        events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
        print("  events: " + ", ".join(e["type"] for e in events))


def cmd_dev(args: argparse.Namespace) -> int:
    import threading

    from devtools.devstack import dev_stack
    from devtools.serverthread import ServerThread
    from service.app import create_app
    from service.db.engine import migrate
    from service.db.keys import create_key_blocking
    from service.observability.logs import configure

    data_dir = Path(args.data_dir).resolve()
    print(f"starting the dev stack (data under {data_dir}) …", file=sys.stderr)
    with dev_stack(data_dir, completion_delay=args.completion_delay) as stack:
        os.environ.update(stack.environment(args.port))
        settings = _settings()
        configure(settings.log_level, settings.effective_log_format)
        migrate(stack.database_url)

        api_key = create_key_blocking(stack.database_url, "dev")
        with ServerThread(create_app(settings), host="127.0.0.1", port=args.port,
                          timeout_graceful_shutdown=5) as server:
            base = server.url
            print(f"""
wavespeed-jobs dev is running at {base}
  API key (owner "dev"):  {api_key}
  history page:           {base}/  (sign in with the API key)
  simulator (WaveSpeed):  {stack.simulator_url}
  S3 (moto):              {stack.s3_endpoint_url}  bucket wavespeed-jobs-dev
  Postgres:               {stack.database_url}

Try it:
  curl -s -X POST '{base}/v1/jobs?wait=30' -H 'Authorization: Bearer {api_key}' \\
       -H 'Content-Type: application/json' \\
       -d '{{"model":"wavespeed-ai/flux-dev-lora","input":{{"prompt":"a red fox in snow"}}}}'

Ctrl-C stops everything.""", flush=True)
            if args.demo:
                _demo(base, api_key)
                if args.exit_after_demo:
                    return 0
            stop = threading.Event()
            # Explicit handlers: a process started in the background may inherit an
            # ignored SIGINT, and Ctrl-C must stop everything all the same.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            while not stop.is_set():
                time.sleep(0.5)
    print("stopped", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wavespeed-jobs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="the whole stack on this machine, no setup")
    dev.add_argument("--demo", action="store_true", help="also submit a job and show it finish")
    dev.add_argument("--exit-after-demo", action="store_true", help="stop once the demo job is shown")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--data-dir", default=".wavespeed-jobs")
    dev.add_argument("--completion-delay", type=float, default=2.0, help="simulated generation time (s)")
    dev.set_defaults(func=cmd_dev)

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
    worker.set_defaults(func=cmd_worker)

    migrate = sub.add_parser("migrate", help="alembic upgrade head on DATABASE_URL")
    migrate.set_defaults(func=cmd_migrate)

    from service.tenant_cli import add_parsers as add_tenant_parsers

    add_tenant_parsers(sub)  # keys create|list|revoke, owners set|show|list

    secret = sub.add_parser("callback-secret", help="print the secret an owner's backend verifies callbacks with")
    secret.add_argument("--owner", help="the owner (without it: the service-wide secret of pre-0005 owners)")
    secret.set_defaults(func=cmd_callback_secret)

    from service import cli_bulk

    cli_bulk.add_parser(sub)

    simulator = sub.add_parser("simulator", help="the WaveSpeed simulator alone (development tools)")
    if has_devtools():
        from devtools.simulator.config import SimulatorConfig

        SimulatorConfig.add_arguments(simulator, listen=True)
    simulator.set_defaults(func=cmd_simulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] in DEV_COMMANDS and not has_devtools():
        print(NO_DEVTOOLS.format(command=words[0]), file=sys.stderr)
        return 2
    args = build_parser().parse_args(words)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
