"""devtools (the simulator, the embedded dev stack) imports nothing from the product: the
simulator is a second reading of docs/provider.md, so a misreading in service/
cannot be repeated by the simulator that tests it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEVTOOLS = ROOT / "devtools"


def imported_modules(source: str) -> list[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", sorted(DEVTOOLS.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_devtools_module_imports_the_product(path: Path) -> None:
    imported = imported_modules(path.read_text())
    offending = [name for name in imported if name == "service" or name.startswith("service.")]
    assert offending == [], f"{path.relative_to(ROOT)} imports {offending}"


def test_the_import_walk_sees_imports_inside_functions() -> None:
    source = "import os\ndef run():\n    from service.app import create_app\n    import service.cli\n"
    assert imported_modules(source) == ["os", "service.app", "service.cli"]


def test_every_devtools_module_imports_with_the_product_absent() -> None:
    # Nothing reached at import time (however indirect) pulls in service/.
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in DEVTOOLS.rglob("*.py")
        if p.name != "__main__.py"  # importing it runs the simulator
    )
    code = "import importlib, sys\nsys.modules['service'] = None\n" + "".join(
        f"importlib.import_module({name!r})\n" for name in modules
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
