"""No product module over 400 lines and no function over 60 (docs/architecture.md,
"Style"): a long module hides more than one concept, a long function more than one
decision. On failure the message lists every offender; run this file alone to see them."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Exceptions, listed by name so nothing else slips in (none left: provider news, once
# apply_prediction in jobs.py, is its own module, service/db/news.py).
KNOWN_LONG_FUNCTIONS: set[str] = set()
KNOWN_LONG_MODULES: set[str] = set()


def sources(package: Path) -> list[Path]:
    """The modules of ``package``, its Alembic revisions left out: they are history (the SQL
    a release ran, never edited after it lands), not code anyone reads to change."""
    return [p for p in sorted(package.rglob("*.py")) if "migrations" not in p.relative_to(package).parts]


def long_modules(package: Path) -> list[str]:
    return [f"{p.relative_to(ROOT)}: {n} lines" for p in sources(package)
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
            and str(p.relative_to(ROOT)) not in KNOWN_LONG_MODULES]


def long_functions(package: Path, root: Path = ROOT) -> list[str]:
    found = []
    for path in sources(package):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([d.lineno for d in node.decorator_list] + [node.lineno])
                length = (node.end_lineno or node.lineno) - start + 1
                name = f"{path.relative_to(root)}::{node.name}"
                if length > MAX_FUNCTION_LINES and name not in KNOWN_LONG_FUNCTIONS:
                    found.append(f"{name}: {length} lines")
    return found


def test_no_product_module_is_over_400_lines() -> None:
    assert long_modules(ROOT / "service") == []


def test_no_product_function_is_over_60_lines() -> None:
    assert long_functions(ROOT / "service") == []


def test_the_counter_sees_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "m.py").write_text(f"def f() -> None:\n{body}\n")
    assert long_functions(tmp_path, root=tmp_path) == ["m.py::f: 61 lines"]
