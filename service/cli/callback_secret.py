"""``wavespeed-jobs callback-secret [--owner NAME]``: the secret an owner's backend
verifies callbacks with; ``callback-secret rotate --all-sharing``: every owner that still
signs with the service-wide secret gets one of its own, the service-wide one signing
beside it for ``--keep-previous-seconds`` (the usual overlap), so no backend misses an
event while it fetches its new secret (``GET /v1/callback-secret``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from service.cli.environment import load_settings, open_engine, require_database


def cmd_callback_secret(args: argparse.Namespace) -> int:
    """Print an owner's current callback secret (``--owner``), or without it the
    service-wide one that owners from before per-owner secrets still use."""
    if args.action == "rotate":
        return cmd_rotate_all_sharing(args)
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


def cmd_rotate_all_sharing(args: argparse.Namespace) -> int:
    """End the sharing of the service-wide secret: each owner still signing with it gets
    a random secret of its own, one transaction each. Prints who, and until when the
    service-wide secret still signs beside the new one; never a secret."""
    from service.db import callback_secrets
    from service.domain.sealing import Sealer
    from service.domain.serialize import iso

    if not args.all_sharing:
        raise SystemExit("callback-secret rotate needs --all-sharing (an owner rotates its own secret with "
                         "POST /v1/callback-secret/rotate)")
    keep = args.keep_previous_seconds
    if not 0 <= keep <= callback_secrets.MAX_KEEP_PREVIOUS_SECONDS:
        raise SystemExit(f"--keep-previous-seconds must be 0 to {callback_secrets.MAX_KEEP_PREVIOUS_SECONDS}")
    settings = load_settings()
    require_database(settings)
    configured = settings.callback_signing_secret.get_secret_value() if settings.callback_signing_secret else None
    sealer = Sealer(settings.secrets_encryption_key.get_secret_value() if settings.secrets_encryption_key else None)

    async def go() -> list[dict[str, str | None]]:
        engine = open_engine(settings)
        try:
            legacy = await callback_secrets.service_wide(engine, configured)
            async with engine.connect() as conn:
                sharing = await callback_secrets.sharing_owners(conn)
            done = []
            for owner in sharing:
                async with engine.begin() as conn:
                    rotated = await callback_secrets.rotate(conn, owner, sealer, legacy, keep)
                done.append({"owner": owner, "previous_expires_at": iso(rotated.previous_expires_at)})
            return done
        finally:
            await engine.dispose()

    done = asyncio.run(go())
    print(json.dumps(done, indent=2))
    print(f"{len(done)} owner(s) no longer share the service-wide secret; each reads its own with "
          "GET /v1/callback-secret", file=sys.stderr)
    return 0


def add_parser(sub: Any) -> None:
    secret = sub.add_parser("callback-secret", help="print the secret an owner's backend verifies callbacks with, "
                                                    "or end the sharing of the service-wide one (rotate --all-sharing)")
    secret.add_argument("action", nargs="?", choices=["rotate"], help="rotate: give owners secrets of their own")
    secret.add_argument("--owner", help="the owner (without it: the service-wide secret of pre-0005 owners)")
    secret.add_argument("--all-sharing", action="store_true",
                        help="rotate: every owner that still signs with the service-wide secret")
    secret.add_argument("--keep-previous-seconds", type=int, default=86400,
                        help="rotate: how long the service-wide secret still signs beside the new one "
                             "(0-604800, default 86400)")
    secret.set_defaults(func=cmd_callback_secret)
