"""queued → timed_out: a job not sent upstream within its ``start_timeout_seconds``.

The submit claim never picks a job past its start deadline (claim_submits), so once
the deadline passes the job can only end here: claimed like any duty (SKIP LOCKED and
a lease), then moved through the one guarded transition, which queues its
``job.timed_out`` callback and releases its reservation in the same transaction.
"""

from __future__ import annotations

import structlog

from service.db import jobs, leases
from service.domain.states import JobStatus
from service.resources import Resources
from service.work.runner import holder_for

log = structlog.get_logger(__name__)

NEVER_STARTED = "the job was not sent to the provider within its start_timeout_seconds ({seconds} s); it never started"


class StartTimeouts:
    name = "start_timeout"
    table = "jobs"
    concurrency = 4

    def __init__(self, res: Resources) -> None:
        self.res = res
        self.holder = holder_for(res, self.name)

    async def claim(self, limit: int) -> list[str]:
        return await leases.claim_expired_starts(self.res.engine, limit, holder=self.holder,
                                                 lease=self.res.settings.lease_seconds)

    async def run(self, job_id: str) -> None:
        worker = self.holder
        async with self.res.engine.begin() as conn:
            job = await jobs.lock_job(conn, job_id)
            if job is None or job.status != JobStatus.QUEUED or job.locked_by != worker or job.submit_sent_at:
                return
            moved = await jobs.transition(
                conn, job, JobStatus.TIMED_OUT, reason="start_timeout", worker=worker,
                values={"error": NEVER_STARTED.format(seconds=job.start_timeout_seconds)},
            )
        if moved:
            log.info("job.start_timed_out", job_id=job_id)
