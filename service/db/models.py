"""SQLAlchemy 2 typed models. The schema itself is created by the Alembic revisions in
migrations/ (which must stay in step with this file); these classes are for queries."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    Numeric,
    SmallInteger,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

Timestamp = DateTime(timezone=True)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    owner: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, default="queued")
    input: Mapped[dict[str, Any]] = mapped_column(JSONB)
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSONB, default=dict)
    callback_url: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    request_hash: Mapped[str | None] = mapped_column(Text)

    provider_task_id: Mapped[str | None] = mapped_column(Text, unique=True)
    provider_status: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    has_nsfw_contents: Mapped[list[bool] | None] = mapped_column(JSONB)
    inference_ms: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(12, 4))

    # Tenancy (revision 0006): priority 0 (most urgent) to 9; vtag is the job's place in
    # its owner's weighted turn (service/db/fairness.py); a job not sent by
    # start_deadline_at ends timed_out.
    priority: Mapped[int] = mapped_column(SmallInteger, default=5)
    vtag: Mapped[float] = mapped_column(Float, default=0.0)
    start_timeout_seconds: Mapped[int | None] = mapped_column(Integer)
    start_deadline_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)

    # Scheduling: the job row is its own queue entry (see service/db/leases.py).
    run_after: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    locked_by: Mapped[str | None] = mapped_column(Text)
    submit_sent_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    deadline_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    last_news_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)

    callback_status: Mapped[str | None] = mapped_column(Text)
    callback_attempts: Mapped[int] = mapped_column(Integer, default=0)

    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=func.now())
    submitted_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    completed_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)

    # Data lifecycle (revision 0007): a deleted job is a tombstone; see service/work/eraser.py.
    deleted_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    deleted_reason: Mapped[str | None] = mapped_column(Text)
    retry_of: Mapped[str | None] = mapped_column(Text)
    # The job's trace (revision 0016): the W3C traceparent of its admission span; every
    # later span of the job is its child (service/observability/tracing.py).
    traceparent: Mapped[str | None] = mapped_column(Text)


class JobOutput(Base):
    __tablename__ = "job_outputs"

    job_id: Mapped[str] = mapped_column(Text, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_url: Mapped[str] = mapped_column(Text)
    key: Mapped[str | None] = mapped_column(Text)
    content_type: Mapped[str | None] = mapped_column(Text)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(Text)
    thumbnail_key: Mapped[str | None] = mapped_column(Text)
    stored_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    # The stored object carries an embedded, signed C2PA manifest (revision 0014).
    content_credentials: Mapped[bool] = mapped_column(Boolean, default=False)


class WebhookEvent(Base):
    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(Text, unique=True)
    job_id: Mapped[str | None] = mapped_column(Text)
    task_id: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=func.now())
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    outcome: Mapped[str] = mapped_column(Text)


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(Text, ForeignKey("jobs.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=func.clock_timestamp())
    type: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)


class Delivery(Base):
    __tablename__ = "deliveries"

    id: Mapped[str] = mapped_column(Text, primary_key=True)  # the stable webhook-id
    job_id: Mapped[str] = mapped_column(Text, ForeignKey("jobs.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(Text)
    url: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    locked_until: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    locked_by: Mapped[str | None] = mapped_column(Text)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=func.now())
    delivered_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)


class Erasure(Base):
    """A job whose data must still be erased: the eraser's duty row (revision 0007)."""

    __tablename__ = "erasures"

    job_id: Mapped[str] = mapped_column(Text, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    requested_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=func.now())
    run_after: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=func.now())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    locked_by: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(Text)
    key_hash: Mapped[str] = mapped_column(Text, unique=True)
    prefix: Mapped[str] = mapped_column(Text)
    public_id: Mapped[str] = mapped_column(Text, unique=True)
    label: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=func.now())
    expires_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)


class Owner(Base):
    """An owner: its budget and limits (revision 0006). Keyed by the name every key and
    job carries."""

    __tablename__ = "owners"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    monthly_budget_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 4))
    max_in_flight: Mapped[int | None] = mapped_column(Integer)
    weight: Mapped[int] = mapped_column(Integer, default=1)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    retention_days: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=func.now())


class LedgerEntry(Base):
    """Append-only money: ``reserve`` at admission, ``spend`` at completion, ``release``
    at every end (service/db/ledger.py)."""

    __tablename__ = "ledger"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(Text)
    job_id: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    amount_usd: Mapped[Decimal] = mapped_column(Numeric(14, 4))
    images: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(Text)
    reserved_at: Mapped[dt.datetime] = mapped_column(Timestamp)
    at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=func.now())


class PageSession(Base):
    __tablename__ = "dashboard_sessions"  # the history page's sessions; the table keeps its first name

    token_hash: Mapped[str] = mapped_column(Text, primary_key=True)
    owner: Mapped[str] = mapped_column(Text)
    api_key_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("api_keys.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=func.now())
    expires_at: Mapped[dt.datetime] = mapped_column(Timestamp)


class JobMetadata(Base):
    """One row per metadata key of a job, kept by a trigger on jobs (revision 0003), so a
    ``metadata.<key>=<value>`` filter walks a btree in page order (service/db/history.py)."""

    __tablename__ = "job_metadata"

    job_id: Mapped[str] = mapped_column(Text, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    owner: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp)
    status: Mapped[str] = mapped_column(Text)


class ServiceSecret(Base):
    __tablename__ = "service_secrets"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=func.now())


class CallbackSecret(Base):
    """Each owner's Standard Webhooks secret for its callbacks (revision 0005). Values are
    sealed with SECRETS_ENCRYPTION_KEY when it is set (service/domain/sealing.py)."""

    __tablename__ = "callback_secrets"

    owner: Mapped[str] = mapped_column(Text, primary_key=True)
    # NULL: the service-wide secret (CALLBACK_SIGNING_SECRET, or the one generated into
    # service_secrets), kept by owners that existed before per-owner secrets, until they rotate.
    secret: Mapped[str | None] = mapped_column(Text)
    previous_secret: Mapped[str | None] = mapped_column(Text)
    previous_expires_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=func.now())
    rotated_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)


class ReceiptKey(Base):
    """Every key that signed receipts (revision 0014): published while its row lives;
    ``private_key`` (sealed PEM) only on the one the service made and signs with now."""

    __tablename__ = "receipt_keys"

    kid: Mapped[str] = mapped_column(Text, primary_key=True)
    alg: Mapped[str] = mapped_column(Text)
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSONB)
    private_key: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=func.now())
    retired_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)


def table(model: type[Base]) -> Table:
    """The Core table behind ``model``, typed as a Table (``__table__`` is typed as the
    broader FromClause, which insert()/update() do not accept under mypy)."""
    core = model.__table__
    assert isinstance(core, Table)
    return core
