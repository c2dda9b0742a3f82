"""``wavespeed-jobs receipts rotate-key`` (a new key signs receipts from now on; the old
public key stays published) and ``wavespeed-jobs receipts verify FILE --jwks FILE_OR_URL``
(check a receipt offline against a JWK Set: a file, or a URL fetched through the egress
layer)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.cli.environment import load_settings, run_on_engine
from service.domain.errors import ConfigError, EgressRefused, ServiceError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

MAX_JWKS_BYTES = 256 * 1024
FETCH_TIMEOUT_SECONDS = 10.0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    from service.db import receipt_keys
    from service.domain.sealing import Sealer

    settings = load_settings()
    if settings.receipt_signing_key:
        raise ConfigError("RECEIPT_SIGNING_KEY is set, so receipts are signed with that file's key: rotate by "
                          "pointing it at a new key and restarting (the old key's public part stays published)")
    sealer = Sealer(settings.secrets_encryption_key.get_secret_value() if settings.secrets_encryption_key else None)

    async def rotate(engine: AsyncEngine) -> str:
        async with engine.begin() as conn:
            return (await receipt_keys.rotate(conn, sealer)).kid

    kid = run_on_engine(rotate)
    print(kid)
    print("receipts are signed with this key from now on; the previous keys stay published at "
          "/.well-known/jwks.json", file=sys.stderr)
    return 0


async def _fetch(url: str, allow_private: bool) -> bytes:
    import httpx

    from service.clients.egress import Egress

    egress = Egress(allow_private=allow_private)
    try:
        async with egress.get_following(url, timeout=httpx.Timeout(FETCH_TIMEOUT_SECONDS)) as response:
            if response.status_code != 200:
                raise ConfigError(f"--jwks {url} answered HTTP {response.status_code}")
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ConfigError(f"--jwks {url} is larger than {MAX_JWKS_BYTES} bytes")
            return body
    except EgressRefused as exc:
        raise ConfigError(f"--jwks {url} refused: {exc.message} (a private address needs "
                          "ALLOW_PRIVATE_NETWORKS=true; or pass the JWK Set as a file)") from None
    except httpx.HTTPError as exc:
        raise ConfigError(f"--jwks {url} could not be fetched: {type(exc).__name__}") from None
    finally:
        await egress.aclose()


def _read_file(path: str, what: str, limit: int) -> bytes:
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise ConfigError(f"{what} {path} is larger than {limit} bytes")
    return data


def load_jwks(source: str, allow_private: bool) -> dict[str, Any]:
    is_url = source.startswith(("http://", "https://"))
    raw = asyncio.run(_fetch(source, allow_private)) if is_url else _read_file(source, "--jwks", MAX_JWKS_BYTES)
    try:
        found = json.loads(raw)
    except ValueError:
        raise ConfigError(f"--jwks {source} is not JSON") from None
    if not isinstance(found, dict):
        raise ConfigError(f"--jwks {source} is not a JWK Set (a JSON object with \"keys\")")
    return found


def cmd_verify(args: argparse.Namespace) -> int:
    from service.domain import receipts

    token = _read_file(args.file, "receipt", receipts.MAX_RECEIPT_BYTES).decode("ascii", errors="replace")
    jwk_set = load_jwks(args.jwks, load_settings().allow_private_networks)
    try:
        claims = receipts.verify(token, jwk_set)
    except ServiceError as exc:
        print(f"INVALID: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(claims, indent=2, sort_keys=True))
    print(f"valid: receipt of job {claims.get('job_id')} (owner {claims.get('owner')})", file=sys.stderr)
    return 0


def add_parser(sub: Any) -> None:
    receipts = sub.add_parser("receipts", help="signed receipts of completed jobs: rotate the key, verify one")
    commands = receipts.add_subparsers(dest="receipts_command", required=True)
    rotate = commands.add_parser("rotate-key", help="sign receipts with a new key; old public keys stay published")
    rotate.set_defaults(func=cmd_rotate_key)
    verify = commands.add_parser("verify", help="check a receipt offline; exit 0 and print it when it verifies")
    verify.add_argument("file", help="the receipt (the compact JWS GET /v1/jobs/{id}/receipt answered)")
    verify.add_argument("--jwks", required=True, metavar="FILE_OR_URL",
                        help="the JWK Set to check against: a file, or the service's /.well-known/jwks.json")
    verify.set_defaults(func=cmd_verify)
