"""Fair share: each job's place in its owner's weighted turn, given at admission.

Start-time fair queueing on the job rows themselves: a job's ``vtag`` is its owner's
last waiting tag at that priority (or, when the owner waits for nothing there, the
head of the queue now, "virtual time") plus ``1 / weight``. The submit claim
(``claim_submits`` in revision 0006) then takes, for each free provider slot, the
lowest (priority, vtag) among the heads of the owners that may send: one index probe
per owner on ``jobs_fair_queue``, whatever the backlog. So owner A's 100,000 waiting
jobs and owner B's new one interleave from B's first submit: B waits about one turn
per job, not behind A's backlog; weights 3 : 1 give three turns for one.

The tag is computed under the owner's row lock (owners.lock), so one owner's
concurrent submits take consecutive turns.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# Why: both parts are index probes (jobs_fair_queue, backward for the owner's last
# tag; one LIMIT 1 per owner for the heads). Paused owners and owners at their cap do
# not hold virtual time back: a newcomer would otherwise get turns in front of owners
# who are being served.
NEXT_TAG = text(
    """
    SELECT greatest(
        (SELECT max(vtag) FROM jobs
         WHERE owner = :owner AND priority = :priority AND status = 'queued' AND submit_sent_at IS NULL),
        (SELECT min(h.vtag) FROM owners o
         CROSS JOIN LATERAL (
             SELECT j.vtag FROM jobs j
             WHERE j.owner = o.name AND j.priority = :priority AND j.status = 'queued' AND j.submit_sent_at IS NULL
             ORDER BY j.vtag LIMIT 1) AS h
         WHERE NOT o.paused
           AND (o.max_in_flight IS NULL OR owner_in_flight(o.name, :max_in_flight) < o.max_in_flight)),
        0) + 1.0 / :weight AS tag
    """
)


async def next_tag(conn: AsyncConnection, owner: str, weight: int, priority: int, max_in_flight: int) -> float:
    row = (await conn.execute(NEXT_TAG, {"owner": owner, "priority": priority, "weight": max(1, weight),
                                         "max_in_flight": max_in_flight})).one()
    return float(row.tag)
