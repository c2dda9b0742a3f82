"""``wavespeed-jobs bulk ACTION --owner NAME [filters] [--dry-run]``: the operator's form
of ``POST /v1/jobs/bulk`` (same parser, same bounds, same batches), run against
DATABASE_URL directly. Prints the result as JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from service.cli.environment import load_settings, open_engine, require_database
from service.domain.errors import ValidationFailed

# service/db/bulk.py's ACTIONS, restated so that parsing the command line does not import
# the database layer (every `wavespeed-jobs` command paid half a second for it);
# tests/unit/test_cli_imports.py checks the two agree.
ACTIONS = ("cancel", "retry", "redeliver", "delete")


def add_parser(sub: Any) -> None:
    bulk = sub.add_parser("bulk", help="cancel, retry, redeliver or delete an owner's jobs by filter")
    bulk.add_argument("action", choices=ACTIONS)
    bulk.add_argument("--owner", required=True)
    bulk.add_argument("--status", action="append", default=[], help="repeatable, or comma-separated")
    bulk.add_argument("--model")
    bulk.add_argument("--created-after", help="ISO 8601")
    bulk.add_argument("--created-before", help="ISO 8601")
    bulk.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    bulk.add_argument("--dry-run", action="store_true", help="count the matches, change nothing")
    bulk.set_defaults(func=cmd_bulk)


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments as the body POST /v1/jobs/bulk takes."""
    flt: dict[str, Any] = {}
    statuses = [s for value in args.status for s in value.split(",") if s]
    if statuses:
        flt["status"] = statuses
    for name in ("model", "created_after", "created_before"):
        if getattr(args, name):
            flt[name] = getattr(args, name)
    if args.metadata:
        pairs = [m.partition("=") for m in args.metadata]
        bad = [m for m, (_, sep, _) in zip(args.metadata, pairs, strict=True) if not sep]
        if bad:
            raise SystemExit(f"--metadata must be KEY=VALUE, got {bad[0]!r}")
        flt["metadata"] = {k: v for k, _, v in pairs}
    return {"action": args.action, "filter": flt, "dry_run": args.dry_run}


def cmd_bulk(args: argparse.Namespace) -> int:
    from service.db.bulk import BulkResult, parse_bulk
    from service.domain.pacing import Pacer
    from service.observability.tracing import Tracing
    from service.work.bulk import run_bulk

    settings = load_settings()
    require_database(settings)
    try:
        request = parse_bulk(request_body(args))
    except ValidationFailed as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2

    async def go() -> BulkResult:
        engine = open_engine(settings, 2)
        tracing = Tracing.from_settings(settings)  # a retry's new jobs begin their traces here
        try:
            return await run_bulk(engine, args.owner, request, settings.bulk_batch_size,
                                  Pacer(settings.lifecycle_pause_factor), settings.bulk_pause_factor,
                                  settings.bulk_target_seconds, tracing=tracing)
        finally:
            await engine.dispose()
            tracing.shutdown()

    try:
        result = asyncio.run(go())
    except ValidationFailed as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0
