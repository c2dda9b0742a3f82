"""create_app(settings) → the Starlette app. The lifespan opens every resource once
(engine, HTTP client, S3, provider client, LISTEN connection, workers) and closes them
in reverse order."""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import AsyncIterator, Iterator

import httpcore
import httpx
import structlog
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from service.api import (
    callback_secret_api,
    facade,
    health,
    job_api,
    job_lifecycle,
    job_stream,
    metrics_endpoint,
    openapi_endpoint,
    owner_account,
    receipt_api,
    receiver,
)
from service.api.plumbing import error_responses
from service.api.plumbing.header_guard import HeaderGuard
from service.api.stream_gate import StreamGate, live_check
from service.clients.egress import Egress, Resolver
from service.clients.http_client import http_client, lean_transport
from service.clients.storage import Storage
from service.clients.wavespeed import WaveSpeedClient
from service.db import callback_secrets, news_writer, page_sessions
from service.db import engine as db
from service.db.listen import Notifications
from service.db.receipt_keys import ReceiptSigner
from service.domain import receipt_keys
from service.domain.content_credentials import ContentSigner
from service.domain.errors import ConfigError
from service.domain.pacing import Pacer
from service.domain.sealing import Sealer
from service.observability import logs
from service.observability.instrumentation import Libraries, instrument_client, request_middleware
from service.observability.tracing import Tracing, otlp_header_values
from service.resources import Resources
from service.settings import Settings
from service.web import bulk_page, history_page
from service.work.runner import Runner, new_worker_id

log = structlog.get_logger(__name__)


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value else None


def content_signer(settings: Settings) -> ContentSigner | None:
    """C2PA_SIGNING_CERT/KEY's signer, checked (ConfigError with the reason C2PA would
    reject the certificate): ``serve`` and ``worker`` call it before anything starts."""
    return ContentSigner.from_files(settings.c2pa_signing_cert, settings.c2pa_signing_key,
                                    include_prompt=settings.c2pa_include_prompt)


async def start_receipt_signer(settings: Settings, engine: AsyncEngine, sealer: Sealer) -> ReceiptSigner:
    configured = receipt_keys.load(settings.receipt_signing_key) if settings.receipt_signing_key else None
    signer = ReceiptSigner(configured, sealer)
    async with engine.begin() as conn:
        await signer.start(conn)
    return signer


def build_duties(res: Resources) -> list:  # type: ignore[type-arg]
    from service.work.deliverer import Deliverer
    from service.work.eraser import Eraser
    from service.work.holds import HeldReservations
    from service.work.reconciler import Reconciler
    from service.work.retention import Retention
    from service.work.start_timeout import StartTimeouts
    from service.work.storer import Storer
    from service.work.submitter import Submitter

    return [Submitter(res), Storer(res), Reconciler(res), Deliverer(res), Eraser(res), Retention(res),
            StartTimeouts(res), HeldReservations(res)]


def open_storage(settings: Settings, bucket: str, http: httpx.AsyncClient, tracing: Tracing | None = None) -> Storage:
    return Storage(bucket=bucket, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
                   part_size=settings.s3_part_size_bytes, max_threads=settings.s3_max_threads, http=http,
                   tracing=tracing, ca_bundle=settings.aws_ca_bundle)


@contextlib.contextmanager
def open_tracing(settings: Settings, given: Tracing | None) -> Iterator[Tracing]:
    """The process's tracer (``given``, or one made from the settings and shut down at the
    end, which sends what it still holds) and, while it is open, the instrumentation of
    the libraries that wrap process-wide (asyncpg, botocore) when spans are exported."""
    tracing = given or Tracing.from_settings(settings)
    libraries = Libraries(tracing)
    libraries.start()
    try:
        yield tracing
    finally:
        libraries.stop()
        if given is None:
            tracing.shutdown()
        else:
            tracing.flush()


@contextlib.asynccontextmanager
async def open_resources(
    settings: Settings, resolver: Resolver | None = None, network: httpcore.AsyncNetworkBackend | None = None,
    tracing: Tracing | None = None,
) -> AsyncIterator[Resources]:
    """``resolver`` and ``network``: the egress layer's name lookup and sockets (tests
    replace them, since the public internet is out of their reach; None: the system's);
    ``tracing``: the process's tracer (None: one from the settings, for this block)."""
    with open_tracing(settings, tracing) as tracer:
        async with _open_resources(settings, resolver, network, tracer) as res:
            yield res


def provider_http_client() -> httpx.AsyncClient:
    """The client for the service's own peers, WaveSpeed and S3 (requests on someone
    else's behalf go through the egress layer instead)."""
    return http_client(
        lean_transport(max_connections=200, max_keepalive_connections=50),
        follow_redirects=False,
        headers={"User-Agent": "wavespeed-jobs/0.1"},
    )


@contextlib.asynccontextmanager
async def _open_resources(
    settings: Settings, resolver: Resolver | None, network: httpcore.AsyncNetworkBackend | None, tracing: Tracing,
) -> AsyncIterator[Resources]:
    missing = settings.missing_for_serve()
    if missing:
        raise ConfigError(f"missing required settings: {', '.join(missing)}")
    assert settings.database_url and settings.s3_bucket and settings.wavespeed_api_key
    signer = content_signer(settings)  # first: a certificate C2PA would reject stops the start here
    engine = db.create_engine(settings.database_url, settings.db_pool_size,
                              transaction_pooling=settings.transaction_pooling)
    http = provider_http_client()
    storage = open_storage(settings, settings.s3_bucket, http, tracing)
    notifications = Notifications(db.asyncpg_dsn(settings.session_database_url or settings.database_url))
    sealer = Sealer(_secret(settings.secrets_encryption_key))
    egress = Egress(allow_private=settings.allow_private_networks, resolver=resolver, network=network)
    try:
        wavespeed = WaveSpeedClient(
            http, settings.wavespeed_base_url, settings.wavespeed_api_key.get_secret_value(),
            settings.wavespeed_timeout_seconds,
        )
        webhook_secret = _secret(settings.wavespeed_webhook_secret) or await wavespeed.webhook_secret()
        res = Resources(
            settings=settings,
            engine=engine,
            http=http,
            storage=storage,
            wavespeed=wavespeed,
            notifications=notifications,
            webhook_secret=webhook_secret,
            callback_secret=await callback_secrets.service_wide(engine, _secret(settings.callback_signing_secret)),
            worker_id=new_worker_id(),
            egress=egress,
            sealer=sealer,
            pacer=Pacer(settings.lifecycle_pause_factor),
            receipt_signer=await start_receipt_signer(settings, engine, sealer),
            content_signer=signer,
            tracing=tracing,
        )
        instrument_client(tracing, http)
        logs.register_secret(settings.wavespeed_api_key.get_secret_value(), webhook_secret, res.callback_secret,
                             *otlp_header_values(settings))
        if settings.s3_create_bucket:
            await storage.ensure_bucket()
        await _warn_if_jit_on(settings, engine)
        await notifications.start()
        yield res
    finally:
        await notifications.stop()
        await egress.aclose()
        await http.aclose()
        await storage.aclose()
        await engine.dispose()
        if signer is not None:
            signer.close()


async def _warn_if_jit_on(settings: Settings, engine: AsyncEngine) -> None:
    """Behind a transaction pooler no session can turn JIT off for itself (what it cost a
    claim: engine.SESSION_SETTINGS): the database or role must, and start-up says so."""
    if settings.transaction_pooling and await db.jit_on(engine):
        log.warning("database.jit_on", fix="turn JIT off on the database or its role: docs/deploy.md")


def routes() -> list[BaseRoute]:
    out: list[BaseRoute] = []
    # The receiver first: Starlette tries the routes in order, a regex each, and the
    # provider's webhooks are the busiest path (no other route starts with /webhooks).
    # The facade last: it ends in an /api/v3 catch-all.
    for module in (receiver, health, metrics_endpoint, openapi_endpoint, job_api, job_lifecycle, job_stream,
                   receipt_api, callback_secret_api, owner_account, facade):
        out += module.routes
    out += bulk_page.routes + history_page.routes  # the history page at / (and /login, /bulk, /jobs/{id}, /static)
    return out


def create_ops_app(res: Resources) -> Starlette:
    """A worker's own port (``worker --port``): liveness, readiness and metrics on the
    worker's resources, nothing of the API."""
    app = Starlette(routes=[*health.routes, *metrics_endpoint.routes], exception_handlers=error_responses.HANDLERS,
                    middleware=[Middleware(HeaderGuard, limit=res.settings.max_request_header_bytes)])
    app.state.resources = res
    return app


async def warn_of_shared_secret(engine: AsyncEngine) -> None:
    """While owners from before per-owner secrets still sign with the service-wide one,
    any of them can read it and sign for the others: say so at every start, with the fix."""
    async with engine.connect() as conn:
        sharing = await callback_secrets.sharing_owners(conn)
    if sharing:
        log.warning("callback_secret.shared", owners=len(sharing), names=sharing[:20],
                    why="these owners sign callbacks with one service-wide secret that each of them can read",
                    fix="wavespeed-jobs callback-secret rotate --all-sharing")


def create_app(
    settings: Settings, *, run_workers: bool = True, resolver: Resolver | None = None,
    network: httpcore.AsyncNetworkBackend | None = None, tracing: Tracing | None = None,
) -> Starlette:
    """``tracing``: the process's tracer (None: one from the settings, shut down with the app)."""
    tracer = tracing or Tracing.from_settings(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with (open_resources(settings, resolver, network, tracer) as res,
                    news_writer.open_writer(settings) as writer):
            app.state.resources = res
            app.state.news_writer = writer  # the receiver's group commit (service/db/news_writer.py)
            await warn_of_shared_secret(res.engine)
            # Live streams' caps, and the recheck of their keys and sessions (service/api/stream_gate.py).
            app.state.streams = StreamGate(settings.streams_max_per_process, settings.streams_max_per_owner,
                                           live_check(functools.partial(page_sessions.live_credentials, res.engine)))
            # What start-up built (modules, botocore's service models, SQLAlchemy metadata:
            # ~140,000 objects) lives as long as the process. Freezing it keeps the
            # garbage collector's full passes from rescanning it: each took ~70 ms and
            # stalled every request in flight (tests/benchmarks/bench_receiver.py).
            gc.freeze()
            runner = Runner(res, build_duties(res)) if run_workers else None
            if runner:
                await runner.start()
                # The receiver's commits wake this process's duties at once and hand them
                # the jobs they move to storing (service/db/news_writer.py).
                writer.wake_local = res.notifications.kick_for
                writer.handoff = runner
            try:
                yield
            finally:
                if runner:
                    writer.handoff = None
                    await runner.stop(settings.shutdown_grace_seconds)
        if tracing is None:
            tracer.shutdown()

    return Starlette(routes=routes(), exception_handlers=error_responses.HANDLERS, lifespan=lifespan,
                     middleware=[*request_middleware(tracer),
                                 Middleware(HeaderGuard, limit=settings.max_request_header_bytes)])

