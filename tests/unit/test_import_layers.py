"""Imports in service/ run only downwards through the layers docs/architecture.md draws,
and no module reaches itself again through the modules it imports (no cycle).

Every import counts, wherever it is written: at the top, inside a function, or under
``TYPE_CHECKING`` (a type is a dependency too). Imports are read with ``ast``, so a
module is judged by its text, not by what happens to be imported when the test runs.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service"

# The layers, lowest first. A part may import its own modules and any part of a LOWER
# layer; parts of the same layer never import each other. Every package and top-level
# module of service/ is placed here (a new one fails until it is).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("domain", "settings"),  # the rules (no I/O) and the one settings object
    ("observability",),  # logs and metrics: shows the figures it is handed, never reads the database
    ("db", "clients"),  # Postgres, and the outside world (provider, S3, callbacks, egress): side by side
    ("resources",),  # what a process holds (engine, clients, LISTEN hub, pacer), passed to all above
    ("work",),  # the duties, and the bulk's paced batches
    ("api",),  # the HTTP API: its surfaces and their plumbing (a bulk request runs work)
    ("web",),  # the history page, on the API's plumbing
    ("app",),  # wiring: the ASGI app and its lifespan
    ("cli",),  # wiring: the commands (serve runs the app)
    ("__main__", "__init__"),  # ``python -m service`` and the package's own entry
)


def rank_of(layers: Sequence[Sequence[str]]) -> dict[str, int]:
    return {part: rank for rank, parts in enumerate(layers) for part in parts}


def modules(package: Path) -> dict[str, Path]:
    """Every module of ``package`` by its dotted name (``service.db.jobs``; a package's
    ``__init__`` is the package itself: ``service.db``)."""
    base = package.parent
    return {".".join(p.relative_to(base).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(package.rglob("*.py"))}


def imports(path: Path, known: dict[str, Path]) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in ``path`` of a module in ``known``; ``from a
    import b`` names ``a.b`` when that is a module, else ``a``."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: a relative import (write it absolute)"
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                yield node.lineno, name if name in known else str(node.module)


def graph(package: Path) -> dict[str, dict[str, int]]:
    """module → {module it imports (of the package): the line of the first such import}."""
    known = modules(package)
    edges: dict[str, dict[str, int]] = {name: {} for name in known}
    for name, path in known.items():
        for line, target in imports(path, known):
            if target in known and target != name:
                edges[name].setdefault(target, line)
    return edges


def part_of(module: str) -> str:
    """The part a module belongs to: ``service.db.jobs`` → ``db``, ``service.app`` →
    ``app``, ``service`` → ``__init__``."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def unplaced(package: Path, layers: Sequence[Sequence[str]]) -> list[str]:
    ranks = rank_of(layers)
    return sorted({part_of(m) for m in modules(package)} - set(ranks))


def upward(package: Path, layers: Sequence[Sequence[str]]) -> list[str]:
    """Every import of a part of the same or a higher layer than the importer's own."""
    ranks = rank_of(layers)
    offenders = []
    for source, targets in graph(package).items():
        here = part_of(source)
        for target, line in targets.items():
            there = part_of(target)
            if there != here and ranks.get(there, len(layers)) >= ranks.get(here, -1):
                offenders.append(f"{source}:{line} imports {target} ({here} may not use {there})")
    return sorted(offenders)


def cycles(package: Path) -> list[list[str]]:
    """The groups of modules that reach each other through their imports (Tarjan)."""
    edges = graph(package)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def test_every_part_of_the_service_has_its_layer() -> None:
    assert unplaced(SERVICE, LAYERS) == []


def test_no_import_runs_up_or_across_a_layer() -> None:
    assert upward(SERVICE, LAYERS) == []


def test_no_modules_import_each_other_even_through_others() -> None:
    assert cycles(SERVICE) == []


def test_the_checks_catch_what_they_forbid(tmp_path: Path) -> None:
    # Checks that find nothing because they look at nothing would pass the three above.
    package = tmp_path / "pkg"
    for folder in ("low", "high", "side"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "low" / "a.py").write_text("def f() -> None:\n    from pkg.high import b\n")  # up, in a function
    (package / "high" / "b.py").write_text("from pkg.low import a\nimport pkg.side.c\n")  # down; across
    (package / "side" / "c.py").write_text("from pkg.side import d\n")
    (package / "side" / "d.py").write_text("from typing import TYPE_CHECKING\n"
                                           "if TYPE_CHECKING:\n    from pkg.side.c import X\n")  # a cycle
    (package / "new.py").write_text("")
    layers = (("low",), ("high", "side"), ("__init__",))
    assert unplaced(package, layers) == ["new"]
    assert upward(package, layers) == [
        "pkg.high.b:2 imports pkg.side.c (high may not use side)",
        "pkg.low.a:2 imports pkg.high.b (low may not use high)",
    ]
    assert cycles(package) == [["pkg.high.b", "pkg.low.a"], ["pkg.side.c", "pkg.side.d"]]
