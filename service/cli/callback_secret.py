"""``wavespeed-jobs callback-secret [--owner NAME]``: the secret an owner's backend
verifies callbacks with."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from service.cli.environment import load_settings, open_engine, require_database


def cmd_callback_secret(args: argparse.Namespace) -> int:
    """Print an owner's current callback secret (``--owner``), or without it the
    service-wide one that owners from before per-owner secrets still use."""
    from service.db import callback_secrets
    from service.domain.sealing import Sealer

    settings = load_settings()
    require_database(settings)
    configured = settings.callback_signing_secret.get_secret_value() if settings.callback_signing_secret else None
    key = settings.secrets_encryption_key.get_secret_value() if settings.secrets_encryption_key else None

    async def go() -> str:
        engine = open_engine(settings)
        try:
            legacy = await callback_secrets.service_wide(engine, configured)
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


def add_parser(sub: Any) -> None:
    secret = sub.add_parser("callback-secret", help="print the secret an owner's backend verifies callbacks with")
    secret.add_argument("--owner", help="the owner (without it: the service-wide secret of pre-0005 owners)")
    secret.set_defaults(func=cmd_callback_secret)
