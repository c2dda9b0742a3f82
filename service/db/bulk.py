"""Bulk actions on an owner's jobs chosen by the history filters: cancel, retry,
redeliver, delete (``POST /v1/jobs/bulk`` and ``wavespeed-jobs bulk``).

The filter means exactly what ``GET /v1/jobs`` means by it: it is parsed by
service/db/history.py's ``parse_filter`` and selected by its ``history_query``. The
matching ids (at most ``MAX_MATCHES``) are read first, then acted on in batches of
``BULK_BATCH_SIZE``, each its own transaction, so no row lock is held for longer than one
batch and the API keeps answering while 10,000 jobs are canceled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired

from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection
from typing_extensions import TypedDict

from service.db import admission, deletion, deliveries, jobs, owners, queries
from service.db.history import HistoryFilter, page_query, parse_filter
from service.domain.errors import FieldError, ValidationFailed
from service.domain.schemas import MODELS
from service.domain.states import TERMINAL, JobStatus

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


async def match(conn: AsyncConnection, owner: str, f: HistoryFilter) -> list[str]:
    """The ids of ``owner``'s jobs a bulk acts on; a filter matching more than
    ``MAX_MATCHES`` is refused, naming how many it matches."""
    ids = await matching_ids(conn, owner, f, MAX_MATCHES + 1)
    if len(ids) > MAX_MATCHES:
        count = await _count(conn, owner, f)
        shown = f"{count:,}" if count < COUNT_CAP else f"at least {COUNT_CAP:,}"
        raise ValidationFailed([FieldError(
            "filter", f"matches {shown} jobs; a bulk action takes at most {MAX_MATCHES:,}: narrow the filter")])
    return ids


async def act(conn: AsyncConnection, action: str, owner: str, batch: list[str], traces: Sequence[str] = ()) -> int:
    """Apply ``action`` to one batch of ``owner``'s jobs in ``conn``'s transaction;
    returns how many it changed. ``traces``: for a retry, the trace context of each new
    job (its admission span), one per id of ``batch``."""
    if action in ("cancel", "delete"):
        canceled = await jobs.finish_many(conn, owner, batch, JobStatus.CANCELED, reason=f"bulk.{action}")
        if action == "cancel":
            return canceled
        return len(await deletion.mark_deleted(conn, batch, "request", owner))
    if action == "retry":
        # The owner's lock first (the order admission keeps): a second retry of the same
        # jobs at once (a client that timed out and posted again) waits here, and its
        # RETRY_MANY then sees the first one's new jobs and makes none. Taken only in the
        # same transaction after the insert, both inserted their own and paid twice.
        await owners.lock(conn, owner)
        made = await conn.execute(queries.RETRY_MANY, {
            "old": batch, "new": jobs.sortable_ids("job", len(batch)), "owner": owner, "retryable": RETRYABLE,
            "traces": list(traces) if traces else [None for _ in batch],
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
        delivery_id = await deliveries.redeliver(conn, row.id, row.callback_url, JobStatus(row.status))
        await jobs.add_event(conn, row.id, "callback.redeliver_requested", {"delivery_id": delivery_id, "bulk": True})
    return len(rows)
