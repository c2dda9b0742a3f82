"""Run every benchmark in this folder (``bench_*.py`` exposing ``main(argv) -> int``)
one after another and print their figures; ``names`` picks some (``receiver``,
``storer`` or ``bench_storer``).

``python -m tests.benchmarks [names...]`` or ``python tests/benchmarks/run.py [names...]``.
Benchmarks added later are found by their file name; nothing to register.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests.benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Module names of the benchmarks present, in file-name order."""
    return [p.stem for p in sorted(HERE.glob("bench_*.py"))]


def _wanted(available: list[str], names: Sequence[str]) -> list[str]:
    if not names:
        return available
    chosen = []
    for name in names:
        stem = name if name.startswith("bench_") else f"bench_{name}"
        if stem not in available:
            raise SystemExit(f"no benchmark {name!r}; present: {', '.join(available)}")
        chosen.append(stem)
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        print("present:", ", ".join(discover()))
        return 0
    results: list[tuple[str, str, float]] = []
    for stem in _wanted(discover(), args):
        module = importlib.import_module(f"tests.benchmarks.{stem}")
        entry = getattr(module, "main", None)
        if not callable(entry):
            results.append((stem, "skipped: no main()", 0.0))
            continue
        print(f"\n######## {stem}", flush=True)
        started = time.monotonic()
        try:
            code = entry([])
            outcome = "ok" if not code else f"FAILED (exit {code})"
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - one broken benchmark must not hide the others' figures
            outcome = f"CRASHED: {type(exc).__name__}: {exc}"
        results.append((stem, outcome, time.monotonic() - started))
    print("\n######## summary")
    for stem, outcome, seconds in results:
        print(f"{stem:<28} {outcome:<40} {seconds:6.1f} s")
    return 0 if all(o == "ok" or o.startswith("skipped") for _, o, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
