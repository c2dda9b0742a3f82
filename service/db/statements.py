"""Loads the named statements of a ``.sql`` file (service/db/queries.sql) and renders the
status values they name from service/domain/states.py.

A status written as a literal in SQL drifts from the enum the moment a state is added or
renamed; written as ``{status:queued}`` it is checked against ``JobStatus`` when the file
is loaded, so a typo or a removed state fails at import, not in production. Literals
(rather than bind parameters) keep the partial indexes usable: the planner proves an
index's status predicate only from values it can see in the statement.

A rule that several statements share is written once as a fragment (``-- fragment:
NAME``, its SQL running to the next blank line) and composed into each as
``{fragment:NAME}`` when the file is loaded.
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
_FRAGMENT_LINE = re.compile(r"^-- fragment: ([A-Z][A-Z0-9_]*)$")
_FRAGMENT = re.compile(r"\{fragment:([A-Z][A-Z0-9_]*)\}")
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


def render(sql: str, fragments: dict[str, str] | None = None) -> str:
    """``sql`` with every ``{fragment:NAME}`` replaced by that fragment of ``fragments``,
    then every ``{kind:name}`` placeholder by its literal(s)."""

    def fragment(match: re.Match[str]) -> str:
        if match.group(1) not in (fragments or {}):
            raise ValueError(f"{match.group(0)}: no such fragment")
        return (fragments or {})[match.group(1)]

    def one(match: re.Match[str]) -> str:
        kind, name = match.groups()
        if name not in _VALUES[kind]:
            raise ValueError(f"{match.group(0)}: not a {kind} in service/domain/states.py")
        return sql_values(_VALUES[kind][name])

    return _PLACEHOLDER.sub(one, _FRAGMENT.sub(fragment, sql))


@dataclass
class Statements:
    """The statements of one file, each taken by name exactly once."""

    source: str
    sql: dict[str, str] = field(default_factory=dict)
    raw: set[str] = field(default_factory=set)  # names flagged "(asyncpg)"
    taken: set[str] = field(default_factory=set)
    fragments: dict[str, str] = field(default_factory=dict)  # rendered
    composed: set[str] = field(default_factory=set)  # fragments a statement uses or code takes

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

    def fragment(self, name: str) -> str:
        """A fragment's SQL, for a statement built with SQLAlchemy Core."""
        if name not in self.fragments:
            raise KeyError(f"{self.source}: no fragment named {name}")
        self.composed.add(name)
        return self.fragments[name]

    def all_taken(self) -> None:
        if left := sorted(set(self.sql) - self.taken):
            raise KeyError(f"{self.source}: statements nobody takes: {', '.join(left)}")
        if left := sorted(set(self.fragments) - self.composed):
            raise KeyError(f"{self.source}: fragments nobody uses: {', '.join(left)}")


def _blocks(source: str, content: str) -> tuple[dict[str, str], set[str], dict[str, str]]:
    """The raw statements, the names flagged "(asyncpg)", and the raw fragments."""
    sql: dict[str, str] = {}
    raw: set[str] = set()
    fragments: dict[str, str] = {}
    name: str | None = None  # the statement being read
    fragment: str | None = None  # or the fragment
    body: list[str] = []
    for number, line in enumerate(content.splitlines(), 1):
        match = _NAME_LINE.match(line)
        starts = None if match else _FRAGMENT_LINE.match(line)
        if fragment is not None and (body or not line.startswith("--")):
            if line.strip() and not (match or starts):
                body.append(line)
                continue
            fragments[fragment], fragment = "\n".join(body), None
        if match or starts:
            if name is not None:
                raise ValueError(f"{source}:{number}: {name} has no line ending in ';'")
            if match:
                name, body = match.group(1), []
                if name in sql:
                    raise ValueError(f"{source}:{number}: {name} defined twice")
                if match.group(2):
                    raw.add(name)
            elif starts:
                fragment, body = starts.group(1), []
                if fragment in fragments:
                    raise ValueError(f"{source}:{number}: fragment {fragment} defined twice")
        elif name is not None and (body or not line.startswith("--")):
            body.append(line)
            if line.rstrip().endswith(";") and not line.lstrip().startswith("--"):
                sql[name], name = "\n".join(body).rstrip().removesuffix(";"), None
    if name is not None:
        raise ValueError(f"{source}: {name} has no line ending in ';'")
    if fragment is not None:
        fragments[fragment] = "\n".join(body)
    return sql, raw, fragments


def parse(source: str, content: str) -> Statements:
    """Each ``-- name: NAME`` line starts a statement: the ``--`` lines right after it
    say why (left out of the SQL), then the SQL runs to the first line ending in ``;``.
    Each ``-- fragment: NAME`` line starts a fragment the same way, whose SQL runs to the
    next blank line. Anything between them is a note for the reader."""
    sql, raw, fragments = _blocks(source, content)
    found = Statements(source, raw=raw, fragments={k: render(v) for k, v in fragments.items()})
    for name, statement in sql.items():
        found.composed.update(_FRAGMENT.findall(statement))
        found.sql[name] = render(statement, found.fragments)
    return found


def load(path: Path) -> Statements:
    return parse(path.name, path.read_text(encoding="utf-8"))
