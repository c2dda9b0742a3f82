"""``wavespeed-jobs`` (also ``python -m service``): dev, serve, worker, migrate, keys,
owners, callback-secret, bulk, receipts, simulator."""

# One module per command group, each adding its parsers; settings are read once per
# command (service/cli/environment.py) and passed down.

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from service.cli import api_keys, bulk_actions, callback_secret, dev, owner_limits, receipts, serve
from service.domain.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wavespeed-jobs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    # The order `--help` lists them in.
    dev.add_dev_parser(sub)
    serve.add_parsers(sub)  # serve, worker, migrate
    api_keys.add_parser(sub)  # keys create|list|revoke
    owner_limits.add_parser(sub)  # owners set|show|list
    callback_secret.add_parser(sub)
    bulk_actions.add_parser(sub)
    receipts.add_parser(sub)  # receipts rotate-key|verify
    dev.add_simulator_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] in dev.DEV_COMMANDS and not dev.has_devtools():
        print(dev.NO_DEVTOOLS.format(command=words[0]), file=sys.stderr)
        return 2
    args = build_parser().parse_args(words)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
