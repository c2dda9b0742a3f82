"""Provider news: the one way a webhook, or a result the reconciler fetched, changes jobs.

``plan`` reads a prediction (pure, no I/O) into a ``News``: what the provider says and
which status it would move the job to. ``apply`` writes a batch of them with ONE
statement (``queries.APPLY_NEWS``), which judges each item against its locked job row:
unknown job, duplicate webhook-id, another task, late (job already terminal), stale
(the provider already said more), or applied, with the forward-only transition guarded
by ``states.allowed_from``. The receiver batches many webhooks into one call (group
commit, service/db/news_writer.py); the reconciler calls it with one item inside its own
transaction. Wake-ups are returned, not sent: NOTIFY inside a transaction serialises the
commits of every notifying transaction, so callers send them after the commit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db import queries
from service.db.jobs import new_delivery_id
from service.domain.states import CALLBACK_EVENT, TERMINAL, JobStatus, allowed_from

NO_OUTPUTS_ERROR = "provider reported completion without outputs"
FAILED_ERROR = "the provider reported the task as failed"
_TERMINAL = sorted(s.value for s in TERMINAL)
# Postgres refuses a NOTIFY payload of 8,000 bytes or more.
PAYLOAD_BYTES = 7000

# The verdicts of queries.APPLY_NEWS, as the receiver's outcome (and metric label).
_OUTCOME = {
    "unknown_job": "unknown_job",
    "duplicate": "duplicate",
    "task_mismatch": "task_mismatch",
    "task_taken": "task_mismatch",
    "late": "late",
    "unchanged": "unchanged",
}


@dataclass(frozen=True)
class News:
    """One piece of provider news about one job, as ``APPLY_NEWS`` takes it."""

    job_id: str
    source: str  # "webhook" or "reconcile": the reason written on the status change
    webhook_id: str | None  # None for a reconciler result (no webhook log row)
    body: str | None  # the raw verified body (JSON text), logged in webhook_events
    task_id: str | None
    provider_status: str | None
    detail: dict[str, Any]  # of the "webhook.received" event
    inference_ms: int | None = None
    nsfw: list[bool] | None = None
    outputs: tuple[str, ...] = ()
    target: JobStatus | None = None
    error: str | None = None
    delay: float = 0.0  # seconds until a non-terminal target is due (reconcile check)
    # A completion without outputs is reported as "advanced" even when the failure it
    # implies could not be applied (the job had moved on): the news itself was acted on.
    always_advanced: bool = False


@dataclass(frozen=True)
class Result:
    outcome: str  # advanced, unchanged, duplicate, late, task_mismatch, unknown_job
    moved: bool
    wake: tuple[tuple[str, str], ...]  # (channel, payload) to NOTIFY after the commit
    traceparent: str | None = None  # the job's trace (None: unknown job, or one without a trace)
    adopted: str | None = None  # the row the holder given for this item got (the job to store, or its delivery)


def _inference_ms(prediction: dict[str, Any]) -> int | None:
    timings = prediction.get("timings")
    if isinstance(timings, dict):
        value = timings.get("inference")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 2**31:
            return int(value)
    return None


def _nsfw(prediction: dict[str, Any]) -> list[bool] | None:
    value = prediction.get("has_nsfw_contents")
    if isinstance(value, list) and all(isinstance(v, bool) for v in value):
        return value
    return None


def _outputs(prediction: dict[str, Any]) -> tuple[str, ...]:
    value = prediction.get("outputs")
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    return ()


def plan(
    job_id: str,
    prediction: dict[str, Any],
    *,
    source: str,
    reconcile_after: float,
    webhook_id: str | None = None,
    body: str | None = None,
) -> News:
    """What ``prediction`` says about job ``job_id`` and where it would move it."""
    task_id = prediction.get("id") if isinstance(prediction.get("id"), str) and prediction.get("id") else None
    status = prediction.get("status") if isinstance(prediction.get("status"), str) else None
    outputs: tuple[str, ...] = ()
    target: JobStatus | None = None
    error: str | None = None
    delay, always_advanced = 0.0, False
    if status == "completed":
        outputs = _outputs(prediction)
        if outputs:
            target = JobStatus.STORING
        else:
            target, error, always_advanced = JobStatus.FAILED, NO_OUTPUTS_ERROR, True
    elif status == "failed":
        target, error = JobStatus.FAILED, str(prediction.get("error") or FAILED_ERROR)
    elif status == "processing":
        target, delay = JobStatus.PROCESSING, reconcile_after
    # Built once (a frozen dataclass costs a setattr per field): the receiver plans
    # every webhook on its request.
    return News(
        job_id=job_id, source=source, webhook_id=webhook_id, body=body, task_id=task_id,
        provider_status=status, inference_ms=_inference_ms(prediction), nsfw=_nsfw(prediction),
        detail={"webhook_id": webhook_id, "task_id": task_id, "status": prediction.get("status")},
        outputs=outputs, target=target, error=error, delay=delay, always_advanced=always_advanced,
    )


# Per target status, computed once: APPLY_NEWS's "reachable from" list, whether it
# ends the job, and the callback event of an end (enum hashing and the state rule per
# item were most of the cost of building a batch's arrays).
_ALLOWED = {target: ",".join(allowed_from(target)) for target in JobStatus}
_ENDS = {target: target in TERMINAL for target in JobStatus}


def handoff_duty(item: News) -> str | None:
    """The duty (service/work) that works on what ``item`` makes when it moves its job:
    the storer for a move to storing, the deliverer for an end (its callback)."""
    if item.target is None:
        return None
    if item.target == JobStatus.STORING:
        return "store"
    return "deliver" if _ENDS[item.target] else None


def _args(items: Sequence[News], holders: Sequence[str | None] | None, lease: float) -> list[Any]:
    """APPLY_NEWS's parallel arrays (and its scalars)."""
    ends = [_ENDS[n.target] if n.target else False for n in items]
    dumps = json.dumps
    return [
        [n.job_id for n in items],
        [n.webhook_id for n in items],
        [n.task_id for n in items],
        [n.body for n in items],
        [n.provider_status for n in items],
        [n.inference_ms for n in items],
        [None if n.nsfw is None else dumps(n.nsfw) for n in items],
        [dumps(n.outputs) for n in items],
        [n.target.value if n.target else None for n in items],
        [_ALLOWED[n.target] if n.target else None for n in items],
        ends,
        [n.error for n in items],
        [new_delivery_id() if end else None for end in ends],
        [CALLBACK_EVENT[n.target] if end and n.target else None for n, end in zip(items, ends, strict=True)],
        [n.source for n in items],
        [float(n.delay) for n in items],
        [dumps(n.detail) for n in items],
        _TERMINAL,
        list(holders) if holders is not None else [None] * len(items),
        float(lease),
    ]


def _wake(news: News, has_callback: bool, adopted: bool) -> tuple[tuple[str, str], ...]:
    """The NOTIFYs a move causes, as ``jobs.transition`` sends them: a terminal job wakes
    its waiters (and the deliverer when it has a callback); a job due for more work
    wakes that duty and the job's live streams. Work a local duty adopted wakes no duty:
    it is leased already, and a claim it woke anywhere would find nothing."""
    assert news.target is not None
    if news.target in TERMINAL:
        deliver = ((queries.CHANNEL_WORK, "deliver"),) if has_callback and not adopted else ()
        return (*deliver, (queries.CHANNEL_DONE, news.job_id))
    work = () if adopted else ((queries.CHANNEL_WORK, news.target.value),)
    return (*work, (queries.CHANNEL_JOB, news.job_id))


async def apply(conn: asyncpg.Connection, items: Sequence[News], *, holders: Sequence[str | None] | None = None,
                lease: float = 0.0) -> list[Result]:
    """Write ``items`` (no two for the same job or webhook-id) with one statement, in
    the caller's transaction if it has one; one result per item, in order. ``holders``
    (one per item, None: none): the duty holder that takes the item's work at once,
    leased for ``lease`` seconds (service/db/news_writer.py's handoff)."""
    rows = await conn.fetch(queries.APPLY_NEWS, *_args(items, holders, lease))
    results = []
    for news, row in zip(items, rows, strict=True):
        verdict = row["verdict"]
        if verdict == "apply":
            moved = bool(row["moved"])
            outcome = "advanced" if moved or news.always_advanced else "unchanged"
            adopted = row["adopted"]
            wake = _wake(news, row["has_callback"], adopted is not None) if moved else ()
            results.append(Result(outcome, moved, wake, row["traceparent"], adopted))
        else:
            results.append(Result(_OUTCOME[verdict], False, (), row["traceparent"]))
    await settle_late(conn, [n for n, row in zip(items, rows, strict=True) if row["verdict"] == "late"])
    return results


async def settle_late(conn: asyncpg.Connection, late: Sequence[News]) -> None:
    """The money of late results: a job that ended (canceled, timed out) after its task
    was sent keeps its reservation while the task may be made; the task's completion
    spends the images made, its failure releases (``ledger_settle_held``). A statement
    only when a batch holds such news; idempotent, so a crash between the two statements
    is mended by the last look at the deadline (service/work/holds.py)."""
    ended = [n for n in late if n.provider_status in ("completed", "failed")]
    if ended:
        await conn.execute(queries.SETTLE_HELD, [n.job_id for n in ended],
                           [len(n.outputs) if n.provider_status == "completed" else 0 for n in ended])


async def notify(conn: asyncpg.Connection, wakes: Sequence[tuple[str, str]]) -> None:
    """Send many wake-ups in one statement (Postgres drops repeats within it)."""
    joined = joined_wakes(wakes)
    if joined:
        await conn.execute(queries.NOTIFY_MANY, [c for c, _ in joined], [p for _, p in joined])


def joined_wakes(wakes: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The wake-ups as few notifications: the job ids of the job and done channels
    joined by commas (as a bulk batch's ends are; service/db/listen.py splits them), in
    payloads under Postgres's 8,000-byte limit. A batch of N moves costs Postgres and
    every listening process a few notifications instead of N + 1: each one is queued,
    sent to every listener and handled there one by one."""
    work: list[tuple[str, str]] = []
    ids: dict[str, list[str]] = {}
    for channel, payload in sorted(set(wakes)):
        if channel == queries.CHANNEL_WORK:
            work.append((channel, payload))  # a duty's name: one each
        else:
            ids.setdefault(channel, []).append(payload)
    for channel, payloads in ids.items():
        chunk: list[str] = []
        size = 0
        for payload in payloads:
            if chunk and size + len(payload.encode()) + 1 > PAYLOAD_BYTES:
                work.append((channel, ",".join(chunk)))
                chunk, size = [], 0
            chunk.append(payload)
            size += len(payload.encode()) + 1
        work.append((channel, ",".join(chunk)))
    return work


def work_wakes(result: Result) -> list[str]:
    """The work wake-ups of ``result`` (their payloads): what its commit asks this
    process's own duties to look at (``Notifications.kick_for``)."""
    return [payload for channel, payload in result.wake if channel == queries.CHANNEL_WORK]


async def apply_one(conn: AsyncConnection, item: News) -> Result:
    """Apply one piece of news inside ``conn``'s transaction (the reconciler's fetched
    result, under the job's row lock) and queue its wake-ups (NOTIFY, sent at the
    commit); the caller wakes its own process's duties from ``wake`` once committed."""
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    (result,) = await apply(raw, [item])
    await notify(raw, result.wake)
    return result
