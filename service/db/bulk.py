"""Bulk actions on an owner's jobs chosen by the history filters: cancel, retry,
redeliver, delete (``POST /v1/jobs/bulk`` and ``wavespeed-jobs bulk``).

The filter means exactly what ``GET /v1/jobs`` means by it: it is parsed by
service/db/history.py's ``parse_filter`` and selected by its ``history_query``. The
matching ids (at most ``MAX_MATCHES``) are read first, then acted on in batches of
``BULK_BATCH_SIZE``, each its own transaction, so no row lock is held for longer than one
batch and the API keeps answering while 10,000 jobs are canceled.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired

from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from typing_extensions import TypedDict

from service.db import admission, jobs, owners, queries
from service.db.engine import one_statement
from service.db.history import HistoryFilter, page_query, parse_filter
from service.db.pacing import Pacer, Turn, spread_factor
from service.domain.errors import FieldError, ValidationFailed
from service.domain.schemas import MODELS
from service.domain.states import TERMINAL, JobStatus
from service.work import deliverer
from service.work.eraser import mark_deleted

ACTIONS = ("cancel", "retry", "redeliver", "delete")
MAX_MATCHES = 10_000
COUNT_CAP = 1_000_000  # an over-broad filter is counted up to here, to name the count
MAX_METADATA_FILTERS = 16
FILTER_KEYS = ("status", "model", "created_after", "created_before", "metadata")
RETRYABLE = [JobStatus.FAILED.value, JobStatus.TIMED_OUT.value]


class BulkFilter(TypedDict, total=False):
    """The history filters of GET /v1/jobs, as JSON; at least one is required."""

    status: Annotated[list[JobStatus], Field(min_length=1, max_length=8)]
    model: Annotated[str, Field(json_schema_extra={"enum": list(MODELS)})]
    created_after: Annotated[str, Field(json_schema_extra={"format": "date-time"})]
    created_before: Annotated[str, Field(json_schema_extra={"format": "date-time"})]
    metadata: Annotated[dict[str, str], Field(max_length=MAX_METADATA_FILTERS)]


class BulkBody(TypedDict):
    """The body of POST /v1/jobs/bulk (checked by ``parse_bulk``)."""

    action: Literal["cancel", "retry", "redeliver", "delete"]
    filter: BulkFilter
    dry_run: NotRequired[bool]


class BulkResult(TypedDict):
    object: Literal["bulk_result"]
    action: str
    matched: Annotated[int, Field(description="Jobs the filter matched (at most 10,000).")]
    affected: Annotated[int, Field(description="Jobs the action changed (0 on a dry run).")]
    dry_run: bool
    started_at: Annotated[str, Field(json_schema_extra={"format": "date-time"})]


@dataclass
class BulkRequest:
    action: str
    filter: HistoryFilter
    dry_run: bool


def _filter_params(raw: Any, errors: list[FieldError]) -> list[tuple[str, str]]:
    """The JSON filter as the query parameters of GET /v1/jobs."""
    if not isinstance(raw, dict):
        errors.append(FieldError("filter", "must be an object"))
        return []
    params: list[tuple[str, str]] = []
    for key, value in raw.items():
        loc = f"filter.{key}"
        if key == "status":
            values = value if isinstance(value, list) else [value]
            if not values or len(values) > 8 or not all(isinstance(v, str) for v in values):
                errors.append(FieldError(loc, "must be a status or a list of 1 to 8 statuses"))
                continue
            params += [("status", v) for v in values]
        elif key in ("model", "created_after", "created_before"):
            if not isinstance(value, str) or not value or len(value) > 100:
                errors.append(FieldError(loc, "must be a non-empty string of at most 100 characters"))
                continue
            params.append((key, value))
        elif key == "metadata":
            if (not isinstance(value, dict) or len(value) > MAX_METADATA_FILTERS
                    or not all(isinstance(k, str) and isinstance(v, str) and k and len(k) <= 64 and len(v) <= 512
                               for k, v in value.items())):
                errors.append(FieldError(loc, f"must be an object of at most {MAX_METADATA_FILTERS} string keys "
                                              "(1-64 characters) with string values (at most 512)"))
                continue
            params += [(f"metadata.{k}", v) for k, v in value.items()]
        else:
            errors.append(FieldError(loc, f"unknown filter; use {', '.join(FILTER_KEYS)}"))
    return params


def parse_bulk(body: Any) -> BulkRequest:
    """The body of POST /v1/jobs/bulk (or the CLI's arguments in the same shape)."""
    if not isinstance(body, dict):
        raise ValidationFailed([FieldError("body", "must be a JSON object")])
    errors: list[FieldError] = []
    for key in body:
        if key not in ("action", "filter", "dry_run"):
            errors.append(FieldError(str(key)[:64], "unknown field; use action, filter, dry_run"))
    params = _filter_params(body.get("filter", {}), errors)
    return bulk_request(body.get("action"), params, body.get("dry_run", False), errors, prefix="filter.")


def bulk_request(action: Any, params: list[tuple[str, str]], dry_run: Any, errors: list[FieldError] | None = None,
                 *, prefix: str = "") -> BulkRequest:
    """A bulk action on the filter given as GET /v1/jobs's query parameters (also the
    history page's form, which speaks them). An empty filter is refused."""
    errors = list(errors or [])
    if action not in ACTIONS:
        errors.append(FieldError("action", f"must be one of {', '.join(ACTIONS)}"))
    if not isinstance(dry_run, bool):
        errors.append(FieldError("dry_run", "must be true or false"))
    if not params and not any(e["loc"].startswith(prefix + "filter") or e["loc"].startswith("filter")
                              for e in errors):
        errors.append(FieldError("filter", "must name at least one condition (an empty filter would act on "
                                           "every job)"))
    f = HistoryFilter()
    try:
        f = parse_filter(params)
    except ValidationFailed as exc:
        errors += [FieldError(prefix + e["loc"], e["msg"]) for e in exc.fields]
    if errors:
        raise ValidationFailed(errors)
    return BulkRequest(action=str(action), filter=f, dry_run=bool(dry_run))


async def matching_ids(conn: AsyncConnection, owner: str, f: HistoryFilter, limit: int) -> list[str]:
    """Up to ``limit`` ids of ``owner``'s (undeleted) jobs matching ``f``, newest first:
    the very statement GET /v1/jobs runs, only longer."""
    f.limit, f.cursor = limit - 1, None  # history_query fetches limit + 1
    page = (await page_query(conn, owner, f)).subquery("page")
    # One array, not 10,000 rows: wrapping each row in a Row object cost serve's event
    # loop ~15 ms per bulk (py-spy, bench_lifecycle bulk), time every API request in
    # flight waits out; the array is decoded in C. array_agg over the ordered subquery
    # keeps its order (no join or grouping in between).
    ids = (await conn.execute(select(func.array_agg(page.c.id)))).scalar_one()
    return list(ids or [])


async def _count(conn: AsyncConnection, owner: str, f: HistoryFilter) -> int:
    f.limit, f.cursor = COUNT_CAP - 1, None
    page = (await page_query(conn, owner, f)).subquery("page")
    return int((await conn.execute(select(func.count()).select_from(page))).scalar_one())


async def _act(conn: AsyncConnection, action: str, owner: str, batch: list[str]) -> int:
    if action in ("cancel", "delete"):
        canceled = await jobs.finish_many(conn, owner, batch, JobStatus.CANCELED, reason=f"bulk.{action}")
        if action == "cancel":
            return canceled
        return len(await mark_deleted(conn, batch, "request", owner))
    if action == "retry":
        # The owner's lock first (the order admission keeps): a second retry of the same
        # jobs at once (a client that timed out and posted again) waits here, and its
        # RETRY_MANY then sees the first one's new jobs and makes none. Taken only in the
        # same transaction after the insert, both inserted their own and paid twice.
        await owners.lock(conn, owner)
        made = await conn.execute(queries.RETRY_MANY, {
            "old": batch, "new": jobs.sortable_ids("job", len(batch)), "owner": owner, "retryable": RETRYABLE,
        })
        created = [r.job_id for r in made.all()]
        await admission.admit_retries(conn, owner, created)  # reserved and in turn, like a submit
        count = len(created)
        if count:
            await jobs.notify(conn, queries.CHANNEL_WORK, "submit")
        return count
    rows = (await conn.execute(queries.REDELIVERABLE, {
        "ids": batch, "owner": owner, "terminal": sorted(s.value for s in TERMINAL)})).all()
    for row in rows:
        delivery_id = await deliverer.redeliver(conn, row.id, row.callback_url, JobStatus(row.status))
        await jobs.add_event(conn, row.id, "callback.redeliver_requested", {"delivery_id": delivery_id, "bulk": True})
    return len(rows)


def _transaction(engine: AsyncEngine) -> AbstractAsyncContextManager[AsyncConnection]:
    return engine.begin()


async def run_bulk(engine: AsyncEngine, owner: str, request: BulkRequest, batch_size: int, pacer: Pacer,
                   pause_factor: float | None = None, target_seconds: float = 0.0) -> BulkResult:
    """Match, check the bound, then act batch by batch, each batch its own transaction
    paced by ``pacer``: it rests up to ``pause_factor`` times what the batch took, as much
    as still lets the bulk end ``target_seconds`` after it began (``spread_factor``), so
    the API keeps most of the database and of its process; the answer of POST /v1/jobs/bulk."""
    started = dt.datetime.now(dt.UTC)
    began = time.monotonic()
    most = pacer.factor if pause_factor is None else pause_factor
    # The matching is the bulk's first batch: it holds Postgres for as long as one (~10 ms
    # for 10,000 ids) and right before the first action batch it made the bulk's start the
    # slowest moment of the API's probe in most rounds (bench_lifecycle bulk).
    # Each batch enters the pacer at factor 1 (at most 1): after another batch (a duty's,
    # in a process that also runs them) it waits that batch's duration, not up to 20 times
    # it; the rests that spread the bulk are its own, sized after each of its batches
    # (turn.factor), and time lost waiting for turns only shortens them.
    enter = min(1.0, most)
    affected, worked, batches = 0, 0.0, 1

    def pace(turn: Turn, done: int) -> None:
        """The rest after the ``done``-th batch (the matching is the first), by the target."""
        nonlocal worked
        now = time.monotonic()
        worked += now - turn.started
        turn.factor = spread_factor(most, target_seconds, now - began, worked, done, batches - done)

    # A dry run (the history page's preview) is only the matching: it answers at once
    # instead of queueing for a turn behind a duty's batch (an erasure's S3 call).
    matching: AbstractAsyncContextManager[Turn] = (
        contextlib.nullcontext(Turn(enter, rest=False, started=began)) if request.dry_run
        else pacer.batch(enter))
    async with matching as turn, engine.begin() as conn:
        ids = await matching_ids(conn, owner, request.filter, MAX_MATCHES + 1)
        if len(ids) > MAX_MATCHES:
            count = await _count(conn, owner, request.filter)
            shown = f"{count:,}" if count < COUNT_CAP else f"at least {COUNT_CAP:,}"
            raise ValidationFailed([FieldError(
                "filter", f"matches {shown} jobs; a bulk action takes at most {MAX_MATCHES:,}: narrow the filter")])
        batches += -(-len(ids) // batch_size)
        turn.rest = batches > 1
        pace(turn, 1)
    if not request.dry_run:
        # A cancel is one statement (FINISH_MANY), atomic by itself: on an autocommit
        # connection it is one round trip instead of three (BEGIN, it, COMMIT), each of
        # which costs serve's event loop a turn while API requests wait.
        connect = one_statement if request.action == "cancel" else _transaction
        for done in range(2, batches + 1):
            # No rest after the last batch: nothing of this bulk follows it, and the rest
            # would only hold back the caller's answer (up to 20 x ~45 ms for a batch of 1,000).
            part = ids[(done - 2) * batch_size : (done - 1) * batch_size]
            async with pacer.batch(enter, rest_after=done < batches) as turn, connect(engine) as conn:
                affected += await _act(conn, request.action, owner, part)
                pace(turn, done)
    return {"object": "bulk_result", "action": request.action, "matched": len(ids), "affected": affected,
            "dry_run": request.dry_run, "started_at": started.isoformat().replace("+00:00", "Z")}
