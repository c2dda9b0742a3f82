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

from sqlalchemy.ext.asyncio import AsyncConnection

from service.db import queries


async def next_tag(conn: AsyncConnection, owner: str, weight: int, priority: int, max_in_flight: int) -> float:
    row = (await conn.execute(queries.NEXT_TAG, {"owner": owner, "priority": priority, "weight": max(1, weight),
                                                 "max_in_flight": max_in_flight})).one()
    return float(row.tag)
