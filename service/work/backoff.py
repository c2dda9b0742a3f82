"""The one retry delay every duty uses after a failure that says nothing of when to
come back (a 5xx, a dropped connection, an S3 hiccup)."""

from __future__ import annotations

import random


def backoff(attempt: int, base: float = 2.0, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter (attempt 1 → up to ``base`` seconds).

    The jitter keeps half the delay: workers that failed together (a provider outage)
    spread out when it ends instead of all retrying in the same second."""
    return random.uniform(0.5, 1.0) * min(cap, base * 2.0 ** max(0, attempt - 1))
