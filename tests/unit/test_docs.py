"""The documents stay an entry point that holds: README short and opening with the two
command lines, every relative link of README and docs/ resolving (file and heading),
every setting documented with its default, and no file speaking of how the work was
done (work periods, people, issue numbers, times of day) instead of what the product is.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 200

# Where work-journal text must not appear, and which files there are text.
JOURNAL_SCOPE = ("README.md", "docs", "service", "devtools", "tests")
TEXT_SUFFIXES = {".py", ".md", ".sql", ".html", ".js", ".css", ".lua", ".mako", ".toml", ".ini", ".txt", ".svg"}

# Each pattern names one kind of work-journal text; precise enough that an HTTP session,
# a pytest session or an ISO timestamp in an example does not match.
JOURNAL_PATTERNS = {
    "a numbered work period": re.compile(r"\bsessions? \d+\b", re.IGNORECASE),
    "a work period by its place": re.compile(r"\b(?:last|previous|earlier) sessions?\b", re.IGNORECASE),
    "an issue number": re.compile(r"\bissues? #?\d+|\bbugs? \d+ of\b|(?<![\w&#/])#\d{1,4}\b", re.IGNORECASE),
    "a time of day": re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?\s*(?:[–-]\s*\d{1,2}:\d{2}(?::\d{2})?\s*)?UTC\b"),
    "a person": re.compile(r"\bengineers?\b|\bcoordinator\b|\bof mine\b", re.IGNORECASE),
    "who did it": re.compile(r"\bI (?:measured|ran|tried|found|kept|chose|allowed|saw|fixed)\b|\b[Ww]e measured\b"),
}

_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _prose(text: str) -> str:
    """The page without its fenced code blocks (a link in an example is not a link)."""
    return _FENCE.sub("", text)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for heading in _HEADING.findall(_prose(page.read_text())):
        base = slug(heading)
        name, n = base, 0
        while name in found:  # GitHub numbers repeated headings: x, x-1, x-2
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def dead_links(page: Path) -> list[str]:
    dead = []
    for target in _LINK.findall(_prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: …
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            dead.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            dead.append(f"{target} (no such heading)")
    return dead


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_points_at_an_existing_file_and_heading(page: Path) -> None:
    assert dead_links(page) == []


def test_a_link_to_a_missing_file_or_heading_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n[ok](other.md) [ok](other.md#a-section) [ok](#page) [web](https://example.com/x)\n"
        "[gone](missing.md) [gone](other.md#no-section)\n```\n[in code](nowhere.md)\n```\n"
    )
    assert dead_links(page) == ["missing.md (no such file)", "other.md#no-section (no such heading)"]


def test_headings_become_githubs_anchors() -> None:
    assert slug("Live updates: `GET /v1/jobs/{id}/stream`") == "live-updates-get-v1jobsidstream"
    assert slug("The claim's plan at 1,000,000 queued jobs") == "the-claims-plan-at-1000000-queued-jobs"


def test_readme_is_an_entry_point_of_at_most_200_lines() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_opens_with_the_run_line_and_the_test_line_ci_runs_verbatim() -> None:
    opening = README.read_text().splitlines()[:12]
    ci_line = (ROOT / ".ci" / "run").read_text().rstrip().splitlines()[-1]
    assert "    " + ci_line in opening, "README's test line must be exactly the line .ci/run runs"
    assert any(line.strip().endswith("wavespeed-jobs dev --demo") for line in opening)


def _documented_defaults() -> dict[str, str]:
    """Each backticked variable name of docs/configuration.md's tables → its default cell."""
    rows: dict[str, str] = {}
    for line in (DOCS / "configuration.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and line.startswith("|"):
            for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0]):
                rows[name] = cells[1]
    return rows


def _shown(default: object) -> str | None:
    if default is None:
        return None
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def test_every_setting_is_documented_with_its_default() -> None:
    documented = _documented_defaults()
    problems = []
    for name, field in Settings.model_fields.items():
        variable = name.upper()
        if variable not in documented:
            problems.append(f"{variable}: no row in docs/configuration.md")
            continue
        shown = _shown(field.default)
        cell = documented[variable]
        if not cell or (shown is not None and shown not in re.findall(r"`([^`]*)`", cell)):
            problems.append(f"{variable}: default cell {cell!r} does not show `{shown}`")
    assert problems == []


# A path from the repository's root named in any text (a comment, a docstring, a page).
_ROOTED_PATH = re.compile(
    r"(?<![\w./-])((?:service|devtools|tests|docs)/[\w./-]*\w\.(?:py|md|sql|js|css|html|png|lua))\b")
# In the pages, a backticked path (from the root, from service/ or tests/), maybe ::a_name.
_NAMED_PATH = re.compile(r"`((?:[\w-]+/)*[\w-]+\.(?:py|md|sql|js|css|html|png|lua))(?:::(\w+))?")


def _text_files() -> list[Path]:
    files: list[Path] = []
    for name in JOURNAL_SCOPE:
        top = ROOT / name
        candidates = [top] if top.is_file() else sorted(top.rglob("*"))
        files += [p for p in candidates if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts]
    return [p for p in files if p.resolve() != Path(__file__).resolve()]


def journal_text(text: str) -> list[str]:
    return [f"{kind}: {m.group(0)!r}" for kind, pattern in JOURNAL_PATTERNS.items() for m in pattern.finditer(text)]


def test_no_file_speaks_of_how_the_work_was_done() -> None:
    found = []
    for path in _text_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{number}: {hit}" for hit in journal_text(line)]
    assert found == [], "state what holds now (a figure: its command, date and commit):\n" + "\n".join(found)


@pytest.mark.parametrize(("text", "hits"), [
    ("measured in session 7, at the end", 1),
    ("Session 9 (2026-12-07): the bulk", 1),
    ("as the last session showed", 1),
    ("see issue 11 and #13", 2),
    ("bug 2 of issue 13", 2),
    ("(06:25–06:44 UTC) and 21:35 UTC", 2),
    ("one engineer ran it; I measured 3 ms; we measured it", 3),
    ("absence is proof only if we saw the whole window", 0),
    ("a history-page session ends; the session cookie; pytest session fixtures", 0),
    ('{"timestamp": "2026-11-21T05:40:00.123456Z"}, colour #fff, &#123;', 0),
    ("revision 0009, migration 0005, 2026-12-07 at ee87ced", 0),
])
def test_journal_patterns_find_work_journal_text_and_not_the_products_words(text: str, hits: int) -> None:
    assert len(journal_text(text)) == hits


_FILE_NAMES = {p.name for top in ("service", "devtools", "tests") for p in (ROOT / top).rglob("*")}
_BY_NAME: dict[str, list[Path]] = {}
for _file in (p for top in ("service", "devtools", "tests") for p in (ROOT / top).rglob("*.py")):
    _BY_NAME.setdefault(_file.name, []).append(_file)
# A backticked ``::a_name`` (maybe after "…") names something in the file named before it on the line.
_SHORT_NAME = re.compile(r"`…?::(\w+)")


def _named_file(named: str) -> Path | None:
    """The file a page means by ``named``: from the root, service/ or tests/, or a file
    name alone (``test_bulk.py``) when one file of the repository has it."""
    found = [c for c in (ROOT / named, ROOT / "service" / named, ROOT / "tests" / named) if c.is_file()]
    alone = _BY_NAME.get(named, []) if "/" not in named else []
    return found[0] if found else alone[0] if len(alone) == 1 else None


def _defines(path: Path, name: str) -> bool:
    return re.search(rf"\b(?:def|class) {name}\b|^{name} =", path.read_text(), re.M) is not None


def _dead_names(line: str) -> list[str]:
    """In one line of a page: paths that do not exist and names not in their file, a
    ``::name`` alone checked against the file named before it on the line."""
    dead: list[str] = []
    spots = [(m.start(), m.group(1), m.group(2)) for m in _NAMED_PATH.finditer(line)]
    spots += [(m.start(), None, m.group(1)) for m in _SHORT_NAME.finditer(line)]
    current: Path | None = None
    for _, named, name in sorted(spots, key=lambda spot: spot[0]):
        if named is not None:
            current = _named_file(named)
            module_unknown = named.endswith((".py", ".sql")) and named not in _FILE_NAMES
            if current is None and ("/" in named or module_unknown):
                dead.append(named)
            elif name and current is not None and not _defines(current, name):
                dead.append(f"{named}::{name}")
        elif current is not None and not _defines(current, name):
            dead.append(f"{current.relative_to(ROOT)}::{name}")
    return dead


def dead_paths(path: Path) -> list[str]:
    """Repository paths a file names that do not exist, and in the pages: backticked
    paths (from the root, service/ or tests/) that do not exist, a backticked module name
    no file of the repository has, and ``file.py::name`` (or ``::name`` after it on the
    line) whose name is not in the file."""
    text = path.read_text(errors="replace")
    dead = [p for p in _ROOTED_PATH.findall(text) if not (ROOT / p).exists()]
    if path.suffix == ".md":
        for line in _prose(text).splitlines():
            dead += _dead_names(line)
    return dead


def test_every_path_named_in_a_document_or_a_comment_exists() -> None:
    dead = [f"{path.relative_to(ROOT)}: {p}" for path in _text_files() for p in dead_paths(path)]
    assert dead == [], "\n".join(dead)


def test_a_path_that_no_longer_exists_is_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("`service/settings.py`, `db/jobs.py::transition`, service/gone.py, `db/jobs.py::gone`\n"
                    "`unit/test_docs.py::test_a_path_that_no_longer_exists_is_found`, `api/nothing.py`, `gone.py`\n"
                    "`test_docs.py::dead_paths`, `::slug`, `…::gone_too`, `test_docs.py::nothing`\n")
    assert dead_paths(page) == ["service/gone.py", "db/jobs.py::gone", "api/nothing.py", "gone.py",
                                "tests/unit/test_docs.py::gone_too", "test_docs.py::nothing"]
