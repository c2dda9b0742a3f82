"""docs/operations.md's table of spans ("What each span means") names exactly the spans
service/ makes: a span added, renamed or dropped in the code without the table would
leave an operator reading a trace with names nobody explains, or looking for one that
no longer exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"
# The calls that make a span and the position of its name among their arguments:
# tracing.span(name, …), job_span(tracing, name, …), tracing.started(name, …), and the
# SDK's tracer.start_span(name, …) and tracer.start_as_current_span(name, …).
SPAN_CALLS = {"span": 0, "job_span": 1, "started": 0, "start_span": 0, "start_as_current_span": 0}


def span_names_in_code() -> set[str]:
    names: set[str] = set()
    for path in sorted((ROOT / "service").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            position = SPAN_CALLS.get(called)
            if position is None or len(node.args) <= position:
                continue
            name = node.args[position]
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                names.add(name.value)
    return names


def span_names_documented() -> set[str]:
    text = OPERATIONS.read_text()
    table = text.split("**What each span means.**", 1)[1].split("\n\n", 2)[1]
    return set(re.findall(r"^\| `([a-z_.]+)` \|", table, re.MULTILINE))


def test_the_code_makes_spans_at_all() -> None:
    # The scan above must see the spans it is meant to see (a rename of the helpers
    # would otherwise leave the comparison below trivially equal).
    assert {"job.admit", "webhook.receive", "callback.attempt"} <= span_names_in_code()


def test_the_operations_table_names_every_span_the_code_makes_and_no_other() -> None:
    code, documented = span_names_in_code(), span_names_documented()
    assert code - documented == set(), "spans made in service/ but not in docs/operations.md's table"
    assert documented - code == set(), "spans in docs/operations.md's table that service/ no longer makes"
