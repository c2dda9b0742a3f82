"""How many rows a duty works on at once, following its backlog instead of a fixed number.

A fixed 4 stores in flight made a burst of 400 finished jobs queue for seconds while the
process waited on the network, not the CPU; a fixed 32 would hold memory (a part buffer
and the bytes kept for the thumbnail, per store) when there is nothing to gain. So: when
a claim fills every free slot, more is waiting and the limit doubles (up to ``high``);
when a claim comes back short, the backlog is drained and the limit falls back to what
is running plus one free slot (never below ``low``). The runner reads ``value`` before
each claim.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class BacklogLimit:
    def __init__(self, low: int, high: int) -> None:
        self.low = low
        self.high = max(low, high)
        self.value = low
        self.active = 0

    def claimed(self, asked: int, got: int) -> None:
        """Adjust after a claim that asked for ``asked`` rows and got ``got``."""
        if asked > 0 and got >= asked:
            self.waiting()
        else:
            self.value = min(self.high, max(self.low, self.active + got + 1))

    def waiting(self) -> None:
        """A row was handed to the duty with every slot taken (service/work/runner.py
        ``reserve``): more is waiting, as after a claim that filled every free slot."""
        self.value = min(self.high, self.value * 2)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
