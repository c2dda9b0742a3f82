"""The development tools' commands: ``dev`` (the whole stack on this machine, no setup)
and ``simulator`` (the WaveSpeed simulator alone). They run devtools/, which the Docker
image leaves out; there ``main`` says so instead of a traceback."""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from service.cli.environment import load_settings

DEV_COMMANDS = ("dev", "simulator")
NO_DEVTOOLS = ("error: `wavespeed-jobs {command}` needs the development tools (the devtools package), which this "
               "install leaves out: the Docker image ships the product only. Run it from a source checkout "
               "(pip install -e '.[dev]').")


def has_devtools() -> bool:
    try:
        return importlib.util.find_spec("devtools.simulator") is not None
    except ModuleNotFoundError:  # devtools itself is missing
        return False


def cmd_simulator(args: argparse.Namespace) -> int:
    from devtools.simulator.app import run
    from devtools.simulator.config import SimulatorConfig

    config = SimulatorConfig.from_args(args, base=SimulatorConfig.from_env(os.environ))
    run(config, host=args.host, port=args.port)
    return 0


def run_demo(base_url: str, api_key: str) -> None:
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
            # A presigned URL carries its own signature: fetched without the API's header.
            print("  " + _credentials(httpx.get(output["url"], timeout=30).content, output["content_type"]))
        events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
        print("  events: " + ", ".join(e["type"] for e in events))
        receipt = client.get(f"/v1/jobs/{job['id']}/receipt")
        print(f"  receipt: {len(receipt.text)} characters of {receipt.headers.get('content-type')} "
              f"(GET /v1/jobs/{job['id']}/receipt; verify: wavespeed-jobs receipts verify FILE "
              f"--jwks {base_url}/.well-known/jwks.json)")


def _credentials(data: bytes, content_type: str) -> str:
    """What c2pa-python's Reader makes of a stored image's Content Credentials."""
    import io

    import c2pa

    settings = {"verify": {"ocsp_fetch": False, "remote_manifest_fetch": False}}
    try:
        with c2pa.Context.from_dict(settings) as context, \
                c2pa.Reader(content_type, io.BytesIO(data), context=context) as reader:
            manifest = reader.get_active_manifest() or {}
            state = reader.get_validation_state()
    except c2pa.C2paError as exc:
        return f"Content Credentials: none ({exc})"
    actions = [a["action"] + " (" + a.get("digitalSourceType", "").rsplit("/", 1)[-1] + ")"
               for assertion in manifest.get("assertions", []) if assertion["label"].startswith("c2pa.actions")
               for a in assertion["data"]["actions"]]
    signer = manifest.get("signature_info", {}).get("common_name")
    return (f"Content Credentials: {', '.join(actions)}, signed by {signer!r}; c2pa validation: {state} "
            "(the dev test root is trusted by no reader)")


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
        settings = load_settings()
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
                run_demo(base, api_key)
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


def add_dev_parser(sub: Any) -> None:
    dev = sub.add_parser("dev", help="the whole stack on this machine, no setup")
    dev.add_argument("--demo", action="store_true", help="also submit a job and show it finish")
    dev.add_argument("--exit-after-demo", action="store_true", help="stop once the demo job is shown")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--data-dir", default=".wavespeed-jobs")
    dev.add_argument("--completion-delay", type=float, default=2.0, help="simulated generation time (s)")
    dev.set_defaults(func=cmd_dev)


def add_simulator_parser(sub: Any) -> None:
    simulator = sub.add_parser("simulator", help="the WaveSpeed simulator alone (development tools)")
    if has_devtools():
        from devtools.simulator.config import SimulatorConfig

        SimulatorConfig.add_arguments(simulator, listen=True)
    simulator.set_defaults(func=cmd_simulator)
