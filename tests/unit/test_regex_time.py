"""Every regular expression written in service/ runs in time linear in its input: each
one is found in the source (``re.compile`` and the other ``re`` functions, and pydantic's
``pattern=``, with a literal pattern), and fed long strings built from its own pieces
(a piece repeated, after a prefix of a match, with the end a match needs left off),
each under a time budget. A pattern that backtracks (the log masking's
``[?&][a-z_-]*(?:key|…)[a-z_-]*=`` took ~1.4 s on a 24 KB ``&keykey…``) fails here
before it ships."""

from __future__ import annotations

import ast
import re
import time
from collections.abc import Iterator
from pathlib import Path
from re import _constants as sre_constants
from re import _parser as sre_parse
from typing import Any

import pytest

SERVICE = Path(__file__).resolve().parents[2] / "service"
FUNCTIONS = {"compile", "match", "search", "fullmatch", "sub", "subn", "split", "findall", "finditer"}
SIZES = (1_000, 4_000, 16_000)
# A linear pattern scans 16,000 characters in well under a millisecond; one that is
# quadratic on them takes seconds. The budget leaves room for a machine busy with
# other tests.
BUDGET_SECONDS = 0.25
# The pattern the log masking used before it was rewritten: the check must catch it.
QUADRATIC = (r"(?i)([?&](?:[a-z0-9_-]*(?:key|token|secret|signature|sig|password|credential)"
             r"[a-z0-9_-]*)=)[^&#\s\"']+")


def _flags(node: ast.expr | None) -> int:
    """``re.I | re.M``-style flags written in the call (0 when there are none)."""
    if node is None:
        return 0
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "re":
        return int(getattr(re, node.attr))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _flags(node.left) | _flags(node.right)
    raise AssertionError(f"flags written as {ast.dump(node)} are not understood by this test")


def _literal(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _literal(node.left), _literal(node.right)
        return None if left is None or right is None else left + right
    return None


def patterns_in(source: str) -> Iterator[tuple[str, int, int]]:
    """(pattern, flags, line) of every literal pattern in one module's source."""
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (isinstance(func, ast.Attribute) and func.attr in FUNCTIONS and isinstance(func.value, ast.Name)
                and func.value.id == "re" and node.args):
            pattern = _literal(node.args[0])
            flag_node = next((k.value for k in node.keywords if k.arg == "flags"), None)
            if flag_node is None and func.attr in {"compile", "match", "search", "fullmatch", "findall",
                                                   "finditer"} and len(node.args) > 2 - (func.attr == "compile"):
                flag_node = node.args[1 if func.attr == "compile" else 2]
            if pattern is not None:
                yield pattern, _flags(flag_node), node.lineno
        for keyword in node.keywords:
            if keyword.arg == "pattern" and (pattern := _literal(keyword.value)) is not None:
                yield pattern, 0, node.lineno


def service_patterns() -> list[tuple[str, int, str]]:
    found = []
    for path in sorted(SERVICE.rglob("*.py")):
        for pattern, flags, line in patterns_in(path.read_text()):
            found.append((pattern, flags, f"{path.relative_to(SERVICE.parent)}:{line}"))
    return found


def _char_in(items: list[tuple[Any, Any]]) -> str:
    """One character a character class accepts."""
    if items and items[0][0] is sre_constants.NEGATE:
        banned = re.compile("[" + "".join(re.escape(chr(c)) for c in range(32, 127)
                                          if not re.fullmatch(_class_source(items), chr(c))) + "]")
        return next(chr(c) for c in range(33, 127) if not banned.fullmatch(chr(c)))
    op, av = items[0]
    if op is sre_constants.LITERAL:
        return chr(av)
    if op is sre_constants.RANGE:
        return chr(av[0])
    return {sre_constants.CATEGORY_DIGIT: "7", sre_constants.CATEGORY_SPACE: " "}.get(av, "a")


def _class_source(items: list[tuple[Any, Any]]) -> str:
    """Rebuild a negated class as a pattern (only to ask which printable chars it takes)."""
    parts = []
    for op, av in items[1:]:
        if op is sre_constants.LITERAL:
            parts.append(re.escape(chr(av)))
        elif op is sre_constants.RANGE:
            parts.append(re.escape(chr(av[0])) + "-" + re.escape(chr(av[1])))
        elif op is sre_constants.CATEGORY:
            parts.append({sre_constants.CATEGORY_DIGIT: r"\d", sre_constants.CATEGORY_SPACE: r"\s",
                          sre_constants.CATEGORY_WORD: r"\w"}.get(av, ""))
    return "[^" + "".join(parts) + "]"


def _sample(sub: Any, pieces: list[str]) -> str:
    """A short string the (sub)pattern matches; every node's own sample goes to ``pieces``."""
    out = []
    for op, av in sub:
        if op is sre_constants.LITERAL:
            text = chr(av)
        elif op is sre_constants.NOT_LITERAL:
            text = "a" if av != ord("a") else "b"
        elif op is sre_constants.IN:
            text = _char_in(list(av))
        elif op is sre_constants.ANY:
            text = "a"
        elif op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, sre_constants.POSSESSIVE_REPEAT):
            low, _high, inner = av
            text = _sample(inner, pieces) * max(low, 1)
        elif op is sre_constants.SUBPATTERN:
            text = _sample(av[-1], pieces)
        elif op is sre_constants.BRANCH:
            every = [_sample(branch, pieces) for branch in av[1]]  # each branch's pieces count
            text = every[0]
        elif op is sre_constants.ATOMIC_GROUP:
            text = _sample(av, pieces)
        else:  # anchors, lookarounds, group references: no text of their own
            text = ""
        if text:
            pieces.append(text)
        out.append(text)
    return "".join(out)


def hostile_inputs(pattern: str, flags: int, size: int) -> Iterator[str]:
    """Strings of about ``size`` characters made of the pattern's own pieces."""
    pieces: list[str] = []
    whole = _sample(sre_parse.parse(pattern, flags), pieces)
    heads = {whole[:i] for i in range(len(whole))}
    for piece in dict.fromkeys(pieces):
        repeated = piece * (size // len(piece) + 1)
        for head in heads:
            yield head + repeated
    if len(whole) > 1:
        yield whole[:-1] * (size // (len(whole) - 1) + 1)  # near-matches with no end, over and over


def slowest(pattern: str, flags: int) -> tuple[float, str]:
    """The longest a findall or fullmatch took on the hostile inputs, and on which;
    sizes grow only while the pattern keeps within the budget (the first input over it
    ends the search, so a slow pattern fails in about the budget's time)."""
    compiled = re.compile(pattern, flags)
    worst, worst_input = 0.0, ""
    for size in SIZES:
        for text in hostile_inputs(pattern, flags, size):
            for run in (compiled.findall, compiled.fullmatch):
                started = time.perf_counter()
                run(text)
                took = time.perf_counter() - started
                if took > worst:
                    worst, worst_input = took, text
                if worst > BUDGET_SECONDS:
                    return worst, worst_input
    return worst, worst_input


PATTERNS = service_patterns()


def test_the_patterns_of_the_service_are_found() -> None:
    places = {place.split(":")[0] for _, _, place in PATTERNS}
    assert "service/observability/logs.py" in places and "service/domain/schemas.py" in places
    assert len(PATTERNS) >= 8


@pytest.mark.parametrize(("pattern", "flags", "place"), PATTERNS, ids=[p for _, _, p in PATTERNS])
def test_a_pattern_of_the_service_runs_in_linear_time(pattern: str, flags: int, place: str) -> None:
    took, text = slowest(pattern, flags)
    assert took <= BUDGET_SECONDS, (
        f"{place}: {pattern!r} took {took:.2f} s on {len(text):,} characters starting {text[:40]!r}: "
        "it backtracks; write it so it cannot (or match in Python)")


def test_the_check_catches_a_quadratic_pattern() -> None:
    took, _ = slowest(QUADRATIC, 0)
    assert took > BUDGET_SECONDS
