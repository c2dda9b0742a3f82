"""The Docker image holds the product only: no simulator, no dev stack, no tests. There is
no Docker daemon here, so this builds what the image's build stage installs from (the
Dockerfile's own COPY lines, read from the file) and runs the CLI in it: `dev` and
`simulator` there print a clear error, not a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from setuptools import find_packages

# Left out of the fast loop (pytest -m "not slow", docs/development.md):
# imports the product in a copy of the image's tree, as processes.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PRODUCT_SOURCES = {"requirements.lock", "build-requirements.lock", "pyproject.toml", "README.md", "service",
                   "migrations", "setup.py"}


def copied_sources() -> set[str]:
    """Every local path the Dockerfile copies into an image (``COPY --from`` excluded)."""
    sources: set[str] = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words and words[0].upper() == "COPY" and not any(w.startswith("--from") for w in words):
            sources |= {w.rstrip("/") for w in words[1:-1] if not w.startswith("--")}
    return sources


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("image")
    for source in copied_sources():
        path = ROOT / source
        if path.is_dir():
            shutil.copytree(path, tree / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, tree / source)
    return tree


def test_the_dockerfile_copies_the_product_only() -> None:
    assert copied_sources() == PRODUCT_SOURCES
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {"devtools", "tests"} <= ignored


def test_the_installed_packages_are_the_service_alone(image_tree: Path) -> None:
    packages = find_packages(str(image_tree), include=["service*"])
    assert {"service", "service.api", "service.api.plumbing", "service.web", "service.cli"} <= set(packages)
    assert set(find_packages(str(image_tree))) - set(packages) == {"migrations", "migrations.versions"}
    assert not list(image_tree.rglob("simulator*"))


def test_the_history_pages_templates_and_static_files_are_installed_with_it() -> None:
    # Package data is matched by glob: a file the globs miss is absent from the image,
    # and the page fails there only (a checkout's editable install serves every file).
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["service"]
    installed = {p for g in globs for p in (ROOT / "service").glob(g)}
    files = [p for folder in ("templates", "static") for p in (ROOT / "service" / "web" / folder).iterdir()]
    assert files, "service/web/ has no templates or static files"
    assert [str(f.relative_to(ROOT)) for f in files if f not in installed] == []


def test_every_file_of_the_package_is_installed_with_it() -> None:
    # A regular install takes packages (directories with an __init__.py) and the package
    # data its globs match, nothing else: the Alembic revisions (migrations/,
    # what `migrate` runs in the image) and the SQL the service loads must be one or the other.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    # The installed packages: found under service/ (setup.py's find), and migrations/ as
    # service.db.migrations (setup.py's package_dir).
    packages = set(find_packages(str(ROOT), include=["service*"]))
    packages |= {"service.db." + name for name in find_packages(str(ROOT), include=["migrations*"])}
    folder = {"service": "service", "service.db.migrations": "migrations"}
    data = {p for package, globs in config["package-data"].items() for g in globs
            for p in (ROOT / folder[package]).glob(g)}
    tracked = subprocess.run(["git", "ls-files", "service", "migrations"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()

    def package_of(path: Path) -> str:
        parts = path.parent.parts
        return ".".join(("service", "db", *parts) if parts[0] == "migrations" else parts)

    missed = [name for name in tracked if not (
        package_of(Path(name)) in packages if name.endswith(".py") else ROOT / name in data)]
    assert missed == []
    assert {"service.db.migrations", "service.db.migrations.versions"} <= packages


def _run_in_image(image_tree: Path, code: str) -> subprocess.CompletedProcess[str]:
    # This venv's editable install maps `service` and `devtools` to the checkout: drop
    # that finder so only the image's tree is importable, as in the image.
    prelude = (
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')]\n"
        f"sys.path.insert(0, {str(image_tree)!r})\n"
    )
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=image_tree, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("argv", [["simulator", "--port", "9000", "--failure-rate", "0.5"], ["dev", "--demo"]])
def test_dev_commands_say_the_development_tools_are_missing(image_tree: Path, argv: list[str]) -> None:
    done = _run_in_image(image_tree, (
        "import service.cli, importlib.util\n"
        f"assert service.cli.__file__.startswith({str(image_tree)!r}), service.cli.__file__\n"
        "assert importlib.util.find_spec('devtools') is None\n"
        f"sys.exit(service.cli.main({argv!r}))\n"
    ))
    assert done.returncode == 2, done.stderr
    assert "development tools" in done.stderr and "Traceback" not in done.stderr


def test_the_product_imports_and_its_other_commands_parse_in_the_image(image_tree: Path) -> None:
    code = "import service.app, service.cli\nservice.cli.build_parser().parse_args(['migrate'])\n"
    done = _run_in_image(image_tree, code)
    assert done.returncode == 0, done.stderr
