"""The operator's commands for tenants: ``keys create|list|revoke`` and
``owners set|show|list`` (contract: "Owners"). Each opens its own short-lived engine."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from service.domain.errors import ServiceError, ValidationFailed
from service.settings import Settings

if TYPE_CHECKING:  # SQLAlchemy is imported by the commands that use it, not by `--help`
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")


def _database_url() -> str:
    try:
        settings = Settings()
    except Exception as exc:  # noqa: BLE001 - pydantic's message names the variable and the rule
        raise SystemExit(f"invalid configuration: {exc}") from None
    if not settings.database_url:
        raise SystemExit("DATABASE_URL is not set (e.g. postgresql://user:pass@host:5432/db)")
    return settings.database_url


def _run(work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    from service.db.engine import create_engine

    async def go() -> T:
        engine = create_engine(_database_url(), 1)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(go())
    except ServiceError as exc:
        if isinstance(exc, ValidationFailed):
            raise SystemExit("error: " + "; ".join(f"--{f['loc'].replace('_', '-')}: {f['msg']}"
                                                   for f in exc.fields)) from None
        raise SystemExit(f"error: {exc.message}") from None


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(str(r[c] if r[c] is not None else "-")) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c] if row[c] is not None else "-").ljust(widths[c]) for c in columns))


# --------------------------------------------------------------------------- keys


def cmd_keys_create(args: argparse.Namespace) -> int:
    from service.db.keys import issue_key

    issued = _run(lambda e: issue_key(e, args.owner, label=args.label, expires_in_days=args.expires_in_days))
    print(issued.key)
    print(f"(API key {issued.public_id} for owner {args.owner!r}; the key is shown only this once)", file=sys.stderr)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from service.db.keys import list_keys

    rows = _run(lambda e: list_keys(e, args.owner))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _table(rows, ["id", "owner", "label", "created_at", "last_used_at", "expires_at", "revoked_at"])
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from service.db.keys import revoke_key

    row = _run(lambda e: revoke_key(e, args.key_id))
    print(f"revoked {row['id']} (owner {row['owner']!r}) at {row['revoked_at']}")
    return 0


# --------------------------------------------------------------------------- owners


def _changes(args: argparse.Namespace) -> Any:
    from service.db import owners

    changes = owners.OwnerChanges()
    if args.monthly_budget_usd is not None:
        changes.monthly_budget_usd = owners.parse_budget(args.monthly_budget_usd)
    if args.max_in_flight is not None:
        changes.max_in_flight = owners.parse_optional_int("max_in_flight", args.max_in_flight, 1, owners.MAX_IN_FLIGHT)
    if args.weight is not None:
        changes.weight = owners.parse_weight(args.weight)
    if args.retention_days is not None:
        changes.retention_days = owners.parse_optional_int("retention_days", args.retention_days, 1,
                                                           owners.MAX_RETENTION_DAYS)
    if args.paused:
        changes.paused = True
    if args.resumed:
        changes.paused = False
    return changes


def cmd_owners_set(args: argparse.Namespace) -> int:
    from service.db import owners

    async def go(engine: AsyncEngine) -> dict[str, Any]:
        changes = _changes(args)
        owners.check_name(args.name)
        async with engine.begin() as conn:
            await owners.set_owner(conn, args.name, changes)
        async with engine.connect() as conn:
            return await owners.view(conn, args.name)

    print(json.dumps(_run(go), indent=2))
    return 0


def cmd_owners_show(args: argparse.Namespace) -> int:
    from service.db import owners

    async def go(engine: AsyncEngine) -> dict[str, Any]:
        async with engine.connect() as conn:
            return await owners.view(conn, args.name)

    print(json.dumps(_run(go), indent=2))
    return 0


def cmd_owners_list(args: argparse.Namespace) -> int:
    from service.db import owners

    async def go(engine: AsyncEngine) -> list[dict[str, Any]]:
        async with engine.connect() as conn:
            return [await owners.view(conn, name) for name in await owners.names(conn)]

    views = _run(go)
    if args.json:
        print(json.dumps(views, indent=2))
        return 0
    _table([{"owner": v["owner"], "paused": v["paused"], "budget": v["budget"]["monthly_usd"],
             "spent": v["budget"]["spent_usd"], "reserved": v["budget"]["reserved_usd"],
             "max_in_flight": v["limits"]["max_in_flight"], "weight": v["limits"]["weight"],
             "retention_days": v["retention_days"]} for v in views],
           ["owner", "paused", "budget", "spent", "reserved", "max_in_flight", "weight", "retention_days"])
    return 0


def add_parsers(sub: Any) -> None:
    """The ``keys`` and ``owners`` command groups."""
    keys = sub.add_parser("keys", help="API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create an API key and print it once")
    create.add_argument("--owner", required=True)
    create.add_argument("--label", help="a note to tell keys apart (1-200 characters)")
    create.add_argument("--expires-in-days", type=int, help="the key stops working after N days (1-3650)")
    create.set_defaults(func=cmd_keys_create)
    listing = keys_sub.add_parser("list", help="every key (never the key itself)")
    listing.add_argument("--owner")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id (key_…); its sessions end")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=cmd_keys_revoke)

    owners = sub.add_parser("owners", help="owners (tenants): budgets and limits")
    owners_sub = owners.add_subparsers(dest="owners_command", required=True)
    set_ = owners_sub.add_parser("set", help="set an owner's budget and limits (created if new)")
    set_.add_argument("name")
    set_.add_argument("--monthly-budget-usd", metavar="X|none")
    set_.add_argument("--max-in-flight", metavar="N|none")
    set_.add_argument("--weight", metavar="N")
    set_.add_argument("--retention-days", metavar="N|none")
    pause = set_.add_mutually_exclusive_group()
    pause.add_argument("--paused", action="store_true", help="queued jobs are not sent until resumed")
    pause.add_argument("--resumed", action="store_true")
    set_.set_defaults(func=cmd_owners_set)
    show = owners_sub.add_parser("show", help="an owner, as GET /v1/owner shows it")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="(the output is always JSON)")
    show.set_defaults(func=cmd_owners_show)
    list_ = owners_sub.add_parser("list", help="every owner")
    list_.add_argument("--json", action="store_true")
    list_.set_defaults(func=cmd_owners_list)
