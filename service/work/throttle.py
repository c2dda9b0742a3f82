"""The provider's account limits (tasks in flight, tasks per minute), enforced across
every process on the database.

The check and the "about to send" mark happen in one transaction under a transaction
-scoped advisory lock, so two processes cannot both see the last free slot.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db import queries

THROTTLE_RECHECK_SECONDS = 1.0
_LOCK_KEY = 0x7773_6A01  # arbitrary, constant: "wsj" submit throttle

# Why: in flight = sent and not yet heard to be finished; per minute = sends in the last
# 60 s. Both read only rows with submit_sent_at set (indexed), never the whole history.
USAGE = text(
    """
    SELECT
      count(*) FILTER (WHERE status IN ('queued', 'submitted', 'processing')) AS in_flight,
      count(*) FILTER (WHERE submit_sent_at > now() - interval '60 seconds') AS last_minute
    FROM jobs
    WHERE submit_sent_at IS NOT NULL
      AND (status IN ('queued', 'submitted', 'processing') OR submit_sent_at > now() - interval '60 seconds')
    """
)


async def mark_submit_sent(
    conn: AsyncConnection, job_id: str, worker: str, *, max_in_flight: int, max_per_minute: int
) -> Literal["marked", "throttled", "gone"]:
    """Mark ``job_id`` as about to be submitted if the limits allow; else "throttled".
    "gone" when the job is no longer ours to submit (canceled, or lease lost)."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    usage = (await conn.execute(USAGE)).one()
    if usage.in_flight >= max_in_flight or usage.last_minute >= max_per_minute:
        return "throttled"
    marked = (await conn.execute(queries.MARK_SUBMIT_SENT, {"id": job_id, "worker": worker})).first()
    return "marked" if marked else "gone"
