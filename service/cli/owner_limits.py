"""``wavespeed-jobs owners set|show|list``: an owner's budget and limits, as
``GET /v1/owner`` shows them (contract: "Owners"). Each opens its own short-lived engine."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from service.cli.environment import run_on_engine
from service.cli.tables import print_table

if TYPE_CHECKING:  # SQLAlchemy is imported by the commands that use it, not by `--help`
    from sqlalchemy.ext.asyncio import AsyncEngine


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

    print(json.dumps(run_on_engine(go), indent=2))
    return 0


def cmd_owners_show(args: argparse.Namespace) -> int:
    from service.db import owners

    async def go(engine: AsyncEngine) -> dict[str, Any]:
        async with engine.connect() as conn:
            return await owners.view(conn, args.name)

    print(json.dumps(run_on_engine(go), indent=2))
    return 0


def cmd_owners_list(args: argparse.Namespace) -> int:
    from service.db import owners

    async def go(engine: AsyncEngine) -> list[dict[str, Any]]:
        async with engine.connect() as conn:
            return [await owners.view(conn, name) for name in await owners.names(conn)]

    views = run_on_engine(go)
    if args.json:
        print(json.dumps(views, indent=2))
        return 0
    print_table([{"owner": v["owner"], "paused": v["paused"], "budget": v["budget"]["monthly_usd"],
             "spent": v["budget"]["spent_usd"], "reserved": v["budget"]["reserved_usd"],
             "max_in_flight": v["limits"]["max_in_flight"], "weight": v["limits"]["weight"],
             "retention_days": v["retention_days"]} for v in views],
           ["owner", "paused", "budget", "spent", "reserved", "max_in_flight", "weight", "retention_days"])
    return 0


def add_parser(sub: Any) -> None:
    owners = sub.add_parser("owners", help="owners: budgets and limits")
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
