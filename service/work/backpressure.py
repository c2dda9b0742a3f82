"""How many new jobs the submitter may take while this process's later duties are busy.

With a fast provider a submit comes back as a webhook within a second or so. A submitter
that fills every free slot then starts jobs faster than the storer and the deliverer of
the same process (one event loop, the same cores) finish them, and a job whose webhook
has come waits behind new submits: in a burst of 400 jobs, webhook → callback took
3.2 s at p99, nearly all of it waiting for a storer slot. Finishing work already started
before starting more gives the same throughput at a far shorter wait (Little's law: the
time a job spends between its webhook and its callback is the work in progress there
over the throughput).

So the submitter takes, per WINDOW_SECONDS, at most SUBMIT_DOWNSTREAM_LIMIT new jobs less
the downstream work, plus one for each job the storer finished in that window:

- downstream work is the stores and callbacks this process is running, plus what it
  knows waits for them (a claim that took every row it asked for: as many again may wait);
- a job out, a job in: while downstream is busy the submitter goes at the pace the
  storer finishes jobs, whatever the provider's speed, and the work between webhook and
  callback stays near the limit. Only counting work in progress would not do: an instant
  provider's answers land a moment after the submits, so a submitter that sees an empty
  storer sends a hundred jobs before the first webhook comes back (stop and go, 3 s
  waits); counting the jobs upstream would hold a slow provider's throughput to the
  limit over its task time.

It never starves:

- with nothing downstream, up to the limit go out per window (the limit is at least 1);
- a store or callback running longer than STALLED_SECONDS waits on someone else (S3, the
  provider's download, a backend's endpoint), not on this process: it stops counting, and
  so does a backlog seen longer ago than that. A broken S3 or a slow endpoint slows submits
  to the limit per window, never stops them: holding them would not bring S3 back sooner,
  while users expect their queued jobs to start (and a held job could reach its
  start_timeout_seconds).

The rules are pure functions of what the runner hands in and the clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

# A healthy copy (download, S3, thumbnail) takes a few hundred ms and a callback less;
# one running longer waits on the outside, and holding submits for it gains nothing.
STALLED_SECONDS = 2.0
# The pace is counted over this long: longer than an instant provider's answer takes to
# come back, so the jobs just sent still count when downstream looks empty.
WINDOW_SECONDS = 1.0


@dataclass(frozen=True)
class Backlog:
    """A downstream claim that came back full: ``rows`` taken at ``seen`` (monotonic)."""

    seen: float
    rows: int


def after_claim(asked: int, got: int, now: float, before: Backlog | None) -> Backlog | None:
    """What a downstream duty's claim says about its backlog: a claim that filled every
    slot it asked for left perhaps as many waiting; a short one, nothing. A duty that was
    full asks for nothing (``asked`` 0): what it knew still holds."""
    if asked <= 0:
        return before
    return Backlog(now, got) if got >= asked else None


def downstream_work(started: Iterable[float], backlog: Iterable[Backlog | None], now: float) -> int:
    """Downstream work that waits on this process: tasks started less than STALLED_SECONDS
    ago (monotonic start times) and backlogs seen as recently."""
    running = sum(1 for began in started if now - began < STALLED_SECONDS)
    waiting = sum(b.rows for b in backlog if b is not None and now - b.seen < STALLED_SECONDS)
    return running + waiting


def submit_room(free: int, work: int, limit: int, *, taken: int = 0, finished: int = 0) -> int:
    """How many of the submitter's ``free`` slots it may fill now, with ``work``
    downstream, ``taken`` jobs claimed and ``finished`` jobs stored in the last window;
    ``limit`` 0 never holds."""
    if limit <= 0:
        return free
    return max(0, min(free, limit - work + finished - taken))


def _recent(moments: deque[float], now: float) -> int:
    while moments and now - moments[0] >= WINDOW_SECONDS:
        moments.popleft()
    return len(moments)


@dataclass
class Backpressure:
    """What the runner tracks for a duty held back by its ``downstream`` duties (the
    first paces it: each row it finishes lets one more in)."""

    downstream: tuple[str, ...]
    limit: int
    holding: bool = False  # the last room given was short: wake the duty as work ends
    _began: dict[str, dict[str, float]] = field(default_factory=dict)
    _backlog: dict[str, Backlog | None] = field(default_factory=dict)
    _taken: deque[float] = field(default_factory=deque)
    _finished: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self._began = {name: {} for name in self.downstream}
        self._backlog = dict.fromkeys(self.downstream)

    def began(self, duty: str, row_id: str, now: float) -> None:
        self._began[duty][row_id] = now

    def ended(self, duty: str, row_id: str, now: float) -> None:
        self._began[duty].pop(row_id, None)
        if duty == self.downstream[0]:
            self._finished.append(now)
            _recent(self._finished, now)  # kept short even while the held duty claims nothing

    def claimed(self, duty: str, asked: int, got: int, now: float) -> None:
        """A downstream duty's claim."""
        self._backlog[duty] = after_claim(asked, got, now, self._backlog[duty])

    def took(self, rows: int, now: float) -> None:
        """The held duty's own claim."""
        self._taken.extend([now] * rows)

    def room(self, free: int, now: float) -> int:
        work = downstream_work([t for rows in self._began.values() for t in rows.values()],
                               self._backlog.values(), now)
        room = submit_room(free, work, self.limit, taken=_recent(self._taken, now),
                           finished=_recent(self._finished, now))
        self.holding = room < free
        return room
