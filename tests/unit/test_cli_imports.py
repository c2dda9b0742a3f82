"""The command line parses without importing the database layer or an HTTP client, so
``wavespeed-jobs --help`` and a refused argument answer at once; what it restates for
that (the bulk actions) agrees with the module that owns it."""

from __future__ import annotations

import subprocess
import sys

from service.cli import bulk_actions
from service.db import bulk


def test_the_bulk_actions_the_cli_offers_are_the_ones_the_service_knows() -> None:
    assert bulk_actions.ACTIONS == bulk.ACTIONS


def test_parsing_the_command_line_imports_neither_sqlalchemy_nor_httpx_nor_boto3() -> None:
    probe = ("import sys; from service.cli import build_parser; build_parser(); "
             "print(' '.join(m for m in ('sqlalchemy', 'httpx', 'boto3', 'service.db.bulk') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "", f"imported while parsing: {done.stdout.strip()}"
