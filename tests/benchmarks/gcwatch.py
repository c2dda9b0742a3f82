"""Run a module as ``python -m`` would, recording every garbage-collector pass.

``python -m tests.benchmarks.gcwatch OUT.json MODULE [ARGS...]``: at exit, OUT.json holds
per generation the number of passes and their total pause, and every pause of 5 ms or
more with its wall-clock time. A pass stops the event loop for as long as it takes, so
this is how the receiver benchmark tells GC stalls from other tails.
"""

from __future__ import annotations

import atexit
import gc
import json
import runpy
import sys
import time
from typing import Any


def main() -> None:
    out, module, *args = sys.argv[1:]
    stats: dict[int, list[float]] = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
    long: list[tuple[float, int, float]] = []  # (wall time, generation, ms)
    started: list[float] = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - started[0]) * 1000
        entry = stats[info["generation"]]
        entry[0] += 1
        entry[1] += ms
        if ms >= 5:
            long.append((time.time(), info["generation"], ms))

    def write() -> None:
        with open(out, "w") as f:
            json.dump({"generations": {str(g): {"passes": int(c), "total_ms": t} for g, (c, t) in stats.items()},
                       "long": long}, f)

    gc.callbacks.append(on_gc)
    atexit.register(write)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
