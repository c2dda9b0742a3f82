"""Where the deploy kit's checkers are: each ecosystem's own tool. The Python ones come
with the dev extra (this venv's bin/); promtool is Debian's, unpacked by .ci/run into
.tools/bin without its server; kubectl is the machine's. A test skips, naming what is
missing and how to get it, only when a tool cannot be found at all."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools" / "bin"


def promtool() -> Path:
    found = TOOLS / "promtool" if (TOOLS / "promtool").exists() else shutil.which("promtool")
    if not found:
        pytest.skip("promtool not found: .ci/run unpacks Debian's prometheus package into .tools/bin "
                    "(apt-get download prometheus && dpkg -x)")
    return Path(found)


def kubectl() -> Path:
    found = shutil.which("kubectl")
    if not found:
        pytest.skip("kubectl not found on PATH: `kubectl kustomize` renders deploy/kubernetes")
    return Path(found)


def venv_tool(name: str, distribution: str) -> Path:
    """A console script of the dev extra, beside this interpreter."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in this environment: the dev extra brings {distribution}")
    return path
