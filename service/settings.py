"""Every environment variable the service reads, read and validated once.

``Settings()`` is built at the edge (the CLI) and passed down; nothing else reads
``os.environ``. docs/configuration.md lists every variable with its default (tests/unit/test_docs.py).
"""

from __future__ import annotations

import sys
from decimal import Decimal, InvalidOperation
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    # --- required for `serve` (dev fills them in) ---
    database_url: str | None = None
    s3_bucket: str | None = None
    wavespeed_api_key: SecretStr | None = None
    public_base_url: str | None = None

    # --- database behind a connection pooler (docs/deploy.md) ---
    # "transaction": DATABASE_URL is PgBouncer (or a pooler like it) in transaction pooling
    # mode, where a server session lasts one transaction: no named prepared statements, no
    # startup parameters. What needs a session of its own (LISTEN/NOTIFY, migrations) then
    # uses DATABASE_DIRECT_URL. Unset (or "session"): DATABASE_URL is used for everything.
    database_pool_mode: Literal["session", "transaction"] | None = None
    database_direct_url: str | None = None

    # --- storage ---
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_prefix: str = "outputs/"
    # AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are read by boto3's own chain.
    s3_presign_seconds: int = Field(3600, ge=60, le=604800)
    s3_part_size_bytes: int = Field(8 * 1024 * 1024, ge=5 * 1024 * 1024)
    s3_max_threads: int = Field(8, ge=1, le=64)
    s3_create_bucket: bool = False
    # The CA certificates (a PEM file) an S3 endpoint's certificate is checked against,
    # for one behind a private CA (self-hosted MinIO): boto3's variable, applied to every
    # S3 call, boto3's and those the service signs itself. Unset: the public roots.
    aws_ca_bundle: str | None = None

    # --- provider ---
    wavespeed_base_url: str = "https://api.wavespeed.ai"
    wavespeed_webhook_secret: SecretStr | None = None
    wavespeed_timeout_seconds: float = Field(30.0, gt=0)
    provider_max_in_flight: int = Field(100, ge=1)
    provider_max_per_minute: int = Field(600, ge=1)
    price_flux_dev_lora_usd: str = "0.015"
    price_flux_krea_dev_lora_usd: str = "0.015"

    # --- receiver ---
    # A request's whole header block: 431 past it (service/api/plumbing/header_guard.py).
    max_request_header_bytes: int = Field(64 * 1024, ge=4096, le=1024 * 1024)
    webhook_max_body_bytes: int = Field(1024 * 1024, ge=1024)
    webhook_tolerance_seconds: int = Field(300, ge=1)

    # --- WaveSpeed-compatible facade: longest hold of an enable_sync_mode submit ---
    facade_sync_timeout_seconds: float = Field(60.0, gt=0, le=600)

    # --- callbacks to backends ---
    callback_signing_secret: SecretStr | None = None
    callback_retry_schedule: str = "0,5,300,1800,7200,18000,36000,86400"
    callback_timeout_seconds: float = Field(10.0, gt=0)
    callback_concurrency: int = Field(32, ge=1)
    allow_private_networks: bool = False
    # Host suffixes output downloads may reach, comma-separated ("wavespeed.ai,cloudfront.net");
    # unset: any host whose addresses are all global.
    output_hosts_allowed: str | None = None
    # A Fernet key: per-owner callback secrets are encrypted with it at rest.
    secrets_encryption_key: SecretStr | None = None

    # --- provenance (docs/provenance.md) ---
    # Paths of a PEM certificate chain (leaf first) and its private key: every stored
    # output then carries signed Content Credentials (C2PA). Both or neither.
    c2pa_signing_cert: str | None = Field(None, min_length=1, max_length=4096)
    c2pa_signing_key: str | None = Field(None, min_length=1, max_length=4096)
    # The prompt is a user's own words: left out of the manifest unless asked for.
    c2pa_include_prompt: bool = False
    # Path of a PEM private key (Ed25519 or P-256) receipts are signed with; unset: a
    # key the service makes on first start and keeps in the database.
    receipt_signing_key: str | None = Field(None, min_length=1, max_length=4096)

    # --- workers ---
    reconcile_after_seconds: float = Field(120.0, gt=0)
    job_deadline_seconds: float = Field(1800.0, gt=0)
    submit_lost_deadline_seconds: float = Field(600.0, gt=0)
    lease_seconds: float = Field(15.0, gt=0)
    poll_interval_seconds: float = Field(1.0, gt=0)
    submit_concurrency: int = Field(8, ge=1)
    submit_downstream_limit: int = Field(16, ge=0, le=1024)
    store_concurrency: int = Field(4, ge=1, le=256)
    store_concurrency_max: int = Field(16, ge=1, le=256)
    download_timeout_seconds: float = Field(60.0, gt=0)
    max_output_bytes: int = Field(200 * 1024 * 1024, ge=1024)
    shutdown_grace_seconds: float = Field(20.0, ge=0)
    db_pool_size: int = Field(10, ge=1)

    # --- data lifecycle: erasure, retention, bulk actions (service/work/eraser.py, retention.py) ---
    output_retention_days: int | None = Field(None, ge=1, le=36500)
    retention_interval_seconds: float = Field(60.0, gt=0)
    retention_batch_size: int = Field(1000, ge=1, le=10000)
    erase_batch_size: int = Field(500, ge=1, le=5000)
    erase_concurrency: int = Field(1, ge=1, le=32)
    # After a duty's batch (retention sweep, erasure) that took t seconds, the next rests
    # factor * t (service/domain/pacing.py); ERASE_PAUSE_FACTOR is read too. 30: the
    # receiver's p99 during a retention backlog was 1.01 of idle's, pooled over windows of
    # erasure and of none in turn (1.4-1.6 at 1; bench_lifecycle retention, 2026-12-07,
    # 9e96cdf; the latest figure is in docs/benchmarks.md).
    lifecycle_pause_factor: float = Field(
        30.0, ge=0, le=1000, validation_alias=AliasChoices("lifecycle_pause_factor", "erase_pause_factor"))
    # Fewer, longer batches meet fewer API requests (each meeting costs one a millisecond
    # or two): at the same 8 s target batches of 100 gave a p99 ratio of 1.32, of 500
    # 0.97-1.28, of 1,000 1.01-1.30, of 2,000 1.10-1.11 (bench_lifecycle bulk, 2026-12-07,
    # 2d5440c: 500 and more alike within the runs' spread); a batch of 1,000 holds its rows
    # ~45 ms.
    bulk_batch_size: int = Field(1000, ge=1, le=5000)
    # A bulk action's batches (the matching first) rest up to BULK_PAUSE_FACTOR times their
    # own duration, and no more than still ends the bulk BULK_TARGET_SECONDS after it began
    # (service/domain/pacing.py spread_factor; 0: no target, always the factor). The API's p99
    # moves with the share of time the bulk holds Postgres: during a bulk of 10,000 spread
    # over 8 s (these defaults) it was 1.01-1.30 of idle (median of rounds; 1.10 over all
    # 60 rounds of five runs), 1.39-1.40 at a fixed factor of 3 (batches of 500, ~2 s)
    # (bench_lifecycle bulk, 2026-12-07, ee87ced; docs/benchmarks.md).
    bulk_pause_factor: float = Field(20.0, ge=0, le=100)
    bulk_target_seconds: float = Field(8.0, ge=0, le=3600)
    stream_keepalive_seconds: float = Field(15.0, gt=0, le=300)
    # ~33.5 KiB each (bench_lifecycle streams): 2,000 open streams cost ~65 MiB of RSS.
    streams_max_per_process: int = Field(2000, ge=1, le=100_000)
    # One owner's share of a process's streams: one owner cannot take them all.
    streams_max_per_owner: int = Field(100, ge=1, le=100_000)

    # --- the history page (the web page at /; its variable keeps the name DASHBOARD_SESSION_HOURS) ---
    dashboard_session_hours: float = Field(12.0, gt=0, le=24 * 30)

    # --- /metrics (docs/operations.md) ---
    # Set: /metrics answers only "Authorization: Bearer <METRICS_TOKEN>" (401 otherwise).
    metrics_token: SecretStr | None = None
    # Series labelled by owner (spend, reservations, budget, jobs waiting): off by default,
    # since owner names are the operator's customers and /metrics is often widely scraped.
    metrics_per_owner: bool = False
    # The figures read from the database, at most once this often per process (0: at
    # every scrape); service/observability/figures_cache.py says why.
    metrics_cache_seconds: float = Field(15.0, ge=0, le=3600)

    # --- logs ---
    log_level: str = "info"
    log_format: Literal["json", "console"] | None = None

    # --- traces: OpenTelemetry's own variables (service/observability/tracing.py) ---
    # Nothing is exported unless OTEL_TRACES_EXPORTER or an OTLP endpoint is set; every job
    # still has a trace id, propagated to callbacks and upstream submits.
    otel_sdk_disabled: bool = False
    otel_traces_exporter: Literal["otlp", "console", "none"] | None = None
    otel_exporter_otlp_endpoint: str | None = Field(None, min_length=1, max_length=2048)
    otel_exporter_otlp_traces_endpoint: str | None = Field(None, min_length=1, max_length=2048)
    # Only OTLP over HTTP with protobuf bodies is built in.
    otel_exporter_otlp_protocol: Literal["http/protobuf"] | None = None
    otel_exporter_otlp_headers: SecretStr | None = None  # "key=value,…": a collector's token goes here
    otel_exporter_otlp_timeout: int = Field(10000, ge=1, le=600000)  # milliseconds, as the standard says
    otel_service_name: str = Field("wavespeed-jobs", min_length=1, max_length=255)
    otel_traces_sampler: Literal[
        "always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
        "parentbased_traceidratio"] = "parentbased_always_on"
    otel_traces_sampler_arg: float = Field(1.0, ge=0, le=1)  # the ratio of the *traceidratio samplers

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _metrics_token(cls, value: object) -> object:
        if value == "":
            return None  # METRICS_TOKEN= : unset
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(raw, str) and not (16 <= len(raw) <= 1024 and raw.isascii() and raw.isprintable()
                                         and " " not in raw):
            raise ValueError("must be 16 to 1024 printable ASCII characters without spaces "
                             "(e.g. the output of `openssl rand -hex 32`)")
        return value

    @field_validator("database_pool_mode", "database_direct_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value  # VAR= in a compose file or a shell

    @model_validator(mode="after")
    def _direct_url_for_transaction_pooling(self) -> Settings:
        if self.transaction_pooling and self.database_url and not self.database_direct_url:
            raise ValueError("DATABASE_DIRECT_URL is required when DATABASE_POOL_MODE=transaction: LISTEN/NOTIFY "
                             "and migrations need a session of their own, which a transaction pooler does not keep")
        return self

    @property
    def transaction_pooling(self) -> bool:
        return self.database_pool_mode == "transaction"

    @property
    def session_database_url(self) -> str | None:
        """The URL for what needs a session of its own (LISTEN/NOTIFY, migrations)."""
        return self.database_direct_url or self.database_url

    @field_validator("aws_ca_bundle")
    @classmethod
    def _ca_bundle_readable(cls, value: str | None) -> str | None:
        if not value:
            return None
        try:
            with open(value, "rb") as pem:
                if b"-----BEGIN CERTIFICATE-----" not in pem.read(1024 * 1024):
                    raise ValueError("must be a PEM file of CA certificates")
        except OSError as exc:
            raise ValueError(f"must be a readable file ({exc.strerror})") from None
        return value

    @field_validator("s3_prefix")
    @classmethod
    def _prefix_slash(cls, value: str) -> str:
        return value if not value or value.endswith("/") else value + "/"

    @field_validator("public_base_url", "wavespeed_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @field_validator("price_flux_dev_lora_usd", "price_flux_krea_dev_lora_usd")
    @classmethod
    def _price(cls, value: str) -> str:
        # Checked here, at start: a bad price used to surface only in the storer, as
        # every job stuck in `storing`.
        try:
            price = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError("must be a decimal number of US dollars, e.g. 0.015") from None
        if not price.is_finite() or not 0 <= price <= 1000:
            raise ValueError("must be a decimal number of US dollars from 0 to 1000")
        if price.as_tuple().exponent < -4:  # type: ignore[operator]
            raise ValueError("must have at most 4 decimal places (cost_usd is stored to 0.0001)")
        return value.strip()

    @field_validator("output_hosts_allowed")
    @classmethod
    def _hosts(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        for suffix in value.split(","):
            host = suffix.strip().lstrip(".")
            if not host or any(c in host for c in "/:@ ") or not host.isascii():
                raise ValueError("must be comma-separated host names, e.g. 'wavespeed.ai,cloudfront.net'")
        return value

    @model_validator(mode="after")
    def _signing_pair(self) -> Settings:
        if (self.c2pa_signing_cert is None) != (self.c2pa_signing_key is None):
            raise ValueError("C2PA_SIGNING_CERT and C2PA_SIGNING_KEY are set together or not at all")
        return self

    @property
    def output_host_suffixes(self) -> list[str]:
        if not self.output_hosts_allowed:
            return []
        return [s.strip().lstrip(".").lower() for s in self.output_hosts_allowed.split(",") if s.strip()]

    @field_validator("callback_retry_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        try:
            delays = [float(p) for p in value.split(",") if p.strip()]
        except ValueError:
            raise ValueError("must be comma-separated seconds, e.g. '0,5,300'") from None
        if not delays or any(d < 0 for d in delays):
            raise ValueError("must list at least one non-negative delay")
        return value

    @property
    def retry_delays(self) -> list[float]:
        return [float(p) for p in self.callback_retry_schedule.split(",") if p.strip()]

    @field_validator("otel_exporter_otlp_endpoint", "otel_exporter_otlp_traces_endpoint")
    @classmethod
    def _otlp_endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL, e.g. http://collector:4318")
        return value.strip()

    @property
    def otlp_traces_url(self) -> str | None:
        """Where spans are posted: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as it is, else
        OTEL_EXPORTER_OTLP_ENDPOINT + ``/v1/traces`` (the standard's rule)."""
        if self.otel_exporter_otlp_traces_endpoint:
            return self.otel_exporter_otlp_traces_endpoint
        if self.otel_exporter_otlp_endpoint:
            return self.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
        return None

    @property
    def traces_exporter(self) -> str:
        """``otlp``, ``console`` or ``none``: OTEL_TRACES_EXPORTER when set; otherwise
        ``otlp`` only when an endpoint is set (nothing configured: nothing exported)."""
        if self.otel_sdk_disabled:
            return "none"
        if self.otel_traces_exporter:
            return self.otel_traces_exporter
        return "otlp" if self.otlp_traces_url else "none"

    @property
    def effective_log_format(self) -> str:
        if self.log_format:
            return self.log_format
        return "console" if sys.stderr.isatty() else "json"

    def price_usd(self, model: str) -> str:
        if model.endswith("flux-krea-dev-lora"):
            return self.price_flux_krea_dev_lora_usd
        return self.price_flux_dev_lora_usd

    def missing_for_serve(self) -> list[str]:
        """The required variables that are unset, by their environment names."""
        required = {
            "DATABASE_URL": self.database_url,
            "S3_BUCKET": self.s3_bucket,
            "WAVESPEED_API_KEY": self.wavespeed_api_key,
            "PUBLIC_BASE_URL": self.public_base_url,
        }
        return [name for name, value in required.items() if not value]
