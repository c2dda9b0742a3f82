"""The plain install (`pip install .`, no extras) is everything the product imports:
deptry reads pyproject.toml's dependencies and every import of service/ (its migrations too),
and fails on an import nothing declares (or that only arrives through another package),
on a declared dependency nothing imports, and on an import of the dev extra.

The simulator (`wavespeed-jobs simulator`) runs from the plain install too; `dev` needs the
dev extra for its embedded Postgres and S3 (devtools/devstack.py says so when it is missing).
tests/integration/test_plain_install.py runs the commands from such an install."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPTRY = Path(sys.executable).parent / "deptry"


def deptry(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    if not DEPTRY.exists():
        pytest.skip(f"deptry is not installed in this environment ({DEPTRY}); the dev extra brings it")
    return subprocess.run([str(DEPTRY), "--no-ansi", *args], cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120)


def test_every_import_of_the_product_is_a_declared_runtime_dependency_and_every_one_is_used() -> None:
    done = deptry("service")
    assert done.returncode == 0, done.stdout


def test_the_simulator_needs_nothing_beyond_the_plain_install() -> None:
    # Unused runtime dependencies are the product's business, not the simulator's.
    done = deptry("devtools", "--ignore", "DEP002", "--extend-exclude", r"devtools/devstack\.py")
    assert done.returncode == 0, done.stdout


def test_only_the_dev_stack_imports_the_dev_extra() -> None:
    done = deptry("devtools", "--ignore", "DEP002")
    findings = [line for line in done.stdout.splitlines() if ": DEP" in line]
    assert findings and all(line.startswith("devtools/devstack.py:") and "DEP004" in line for line in findings), (
        done.stdout
    )


@pytest.mark.parametrize(("source", "code"), [
    # Installed here only because another package needs it: the case of cryptography and
    # certifi, which the dev extra brought in while nothing declared them.
    ("import cryptography\nimport httpx\n", "DEP003"),
    ("import not_installed_anywhere\nimport httpx\n", "DEP001"),  # declared nowhere, installed nowhere
    ("import pytest\nimport httpx\n", "DEP004"),  # the dev extra, imported by the product
], ids=["transitive", "undeclared", "dev-extra"])
def test_the_check_fails_on_an_undeclared_or_dev_import(tmp_path: Path, source: str, code: str) -> None:
    _project(tmp_path, deps=["httpx>=0.27"], dev=["pytest>=8"], source=source)
    done = deptry("app", cwd=tmp_path)
    assert done.returncode == 1 and code in done.stdout, done.stdout


def test_the_check_fails_on_a_declared_dependency_nothing_imports(tmp_path: Path) -> None:
    _project(tmp_path, deps=["httpx>=0.27", "jinja2>=3.1"], dev=[], source="import httpx\n")
    done = deptry("app", cwd=tmp_path)
    assert done.returncode == 1 and "DEP002" in done.stdout and "jinja2" in done.stdout, done.stdout


def _project(path: Path, deps: list[str], dev: list[str], source: str) -> None:
    """A minimal project beside this one, checked with the same deptry settings."""
    (path / "app").mkdir()
    (path / "app" / "__init__.py").write_text(source)
    (path / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [project]
        name = "probe"
        version = "0"
        dependencies = {deps!r}
        [project.optional-dependencies]
        dev = {dev!r}
        [tool.deptry]
        known_first_party = ["app"]
        optional_dependencies_dev_groups = ["dev"]
        """))
