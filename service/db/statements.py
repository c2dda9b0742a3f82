"""Loads the named statements of a ``.sql`` file (service/db/queries.sql) and renders the
status values they name from service/domain/states.py.

A status written as a literal in SQL drifts from the enum the moment a state is added or
renamed; written as ``{status:queued}`` it is checked against ``JobStatus`` when the file
is loaded, so a typo or a removed state fails at import, not in production. Literals
(rather than bind parameters) keep the partial indexes usable: the planner proves an
index's status predicate only from values it can see in the statement.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

from sqlalchemy import TextClause, text

from service.domain.states import ACTIVE, TERMINAL, DeliveryStatus, JobStatus, WavespeedStatus

_IDENTIFIER = re.compile(r"[a-z_]+")
_NAME_LINE = re.compile(r"^-- name: ([A-Z][A-Z0-9_]*)( \(asyncpg\))?$")
_PLACEHOLDER = re.compile(r"\{(status|statuses|delivery|provider):([a-z_]+)\}")

# What each placeholder kind may name, in declaration order (a set renders the same
# text every time, so statements stay cacheable and index predicates match).
_VALUES: dict[str, dict[str, list[str]]] = {
    "status": {s.value: [s.value] for s in JobStatus},
    "statuses": {"terminal": [s.value for s in JobStatus if s in TERMINAL],
                 "active": [s.value for s in JobStatus if s in ACTIVE]},
    "delivery": {s.value: [s.value] for s in DeliveryStatus},
    "provider": {v: [v] for v in get_args(WavespeedStatus)},
}


def sql_values(values: Iterable[str]) -> str:
    """Status values as SQL literals: ``'a', 'b'``. Only plain lowercase names pass, so
    nothing can be injected through them."""
    items = [str(v) for v in values]
    if not items or not all(_IDENTIFIER.fullmatch(v) for v in items):
        raise ValueError(f"not a status set: {items!r}")
    return ", ".join(f"'{v}'" for v in items)


def render(sql: str) -> str:
    """``sql`` with every ``{kind:name}`` placeholder replaced by its literal(s)."""

    def one(match: re.Match[str]) -> str:
        kind, name = match.groups()
        if name not in _VALUES[kind]:
            raise ValueError(f"{match.group(0)}: not a {kind} in service/domain/states.py")
        return sql_values(_VALUES[kind][name])

    return _PLACEHOLDER.sub(one, sql)


@dataclass
class Statements:
    """The statements of one file, each taken by name exactly once."""

    source: str
    sql: dict[str, str] = field(default_factory=dict)
    raw: set[str] = field(default_factory=set)  # names flagged "(asyncpg)"
    taken: set[str] = field(default_factory=set)

    def _take(self, name: str, *, asyncpg: bool) -> str:
        if name not in self.sql:
            raise KeyError(f"{self.source}: no statement named {name}")
        if name in self.taken:
            raise KeyError(f"{self.source}: {name} taken twice")
        if (name in self.raw) != asyncpg:
            raise TypeError(f"{self.source}: {name} is {'' if name in self.raw else 'not '}raw asyncpg SQL")
        self.taken.add(name)
        return self.sql[name]

    def text(self, name: str) -> TextClause:
        """A statement with ``:name`` bind parameters (SQLAlchemy)."""
        return text(self._take(name, asyncpg=False))

    def asyncpg(self, name: str) -> str:
        """A statement flagged ``(asyncpg)``: ``$n`` parameters, run on the raw connection."""
        return self._take(name, asyncpg=True)

    def all_taken(self) -> None:
        if left := sorted(set(self.sql) - self.taken):
            raise KeyError(f"{self.source}: statements nobody takes: {', '.join(left)}")


def parse(source: str, content: str) -> Statements:
    """Each ``-- name: NAME`` line starts a statement: the ``--`` lines right after it
    say why (left out of the SQL), then the SQL runs to the first line ending in ``;``.
    Anything between statements is a note for the reader."""
    found = Statements(source)
    name: str | None = None
    body: list[str] = []
    for number, line in enumerate(content.splitlines(), 1):
        if match := _NAME_LINE.match(line):
            if name is not None:
                raise ValueError(f"{source}:{number}: {name} has no line ending in ';'")
            name, body = match.group(1), []
            if name in found.sql:
                raise ValueError(f"{source}:{number}: {name} defined twice")
            if match.group(2):
                found.raw.add(name)
        elif name is not None and (body or not line.startswith("--")):
            body.append(line)
            if line.rstrip().endswith(";") and not line.lstrip().startswith("--"):
                found.sql[name] = render("\n".join(body).rstrip().removesuffix(";"))
                name = None
    if name is not None:
        raise ValueError(f"{source}: {name} has no line ending in ';'")
    return found


def load(path: Path) -> Statements:
    return parse(path.name, path.read_text(encoding="utf-8"))
