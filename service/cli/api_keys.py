"""``wavespeed-jobs keys create|list|revoke``: the operator's commands for API keys
(contract: "Owners"). Each opens its own short-lived engine."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from service.cli.environment import run_on_engine
from service.cli.tables import print_table


def cmd_keys_create(args: argparse.Namespace) -> int:
    from service.db.keys import issue_key

    issued = run_on_engine(lambda e: issue_key(e, args.owner, label=args.label, expires_in_days=args.expires_in_days))
    print(issued.key)
    print(f"(API key {issued.public_id} for owner {args.owner!r}; the key is shown only this once)", file=sys.stderr)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from service.db.keys import list_keys

    rows = run_on_engine(lambda e: list_keys(e, args.owner))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, ["id", "owner", "label", "created_at", "last_used_at", "expires_at", "revoked_at"])
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from service.db.keys import revoke_key

    row = run_on_engine(lambda e: revoke_key(e, args.key_id))
    print(f"revoked {row['id']} (owner {row['owner']!r}) at {row['revoked_at']}")
    return 0


def add_parser(sub: Any) -> None:
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
