"""What a running process holds: opened once in the app's lifespan (or by the worker
command) and passed to everything that needs it. No module-level clients."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from service.clients.egress import Egress
from service.clients.storage import Storage
from service.clients.wavespeed import WaveSpeedClient
from service.db.leases import Handoff
from service.db.listen import Notifications
from service.db.receipt_keys import ReceiptSigner
from service.domain.content_credentials import ContentSigner
from service.domain.pacing import Pacer
from service.domain.sealing import Sealer
from service.observability.figures_cache import FiguresCache
from service.observability.tracing import Tracing
from service.settings import Settings


@dataclass
class Resources:
    settings: Settings
    engine: AsyncEngine
    http: httpx.AsyncClient
    storage: Storage
    wavespeed: WaveSpeedClient
    notifications: Notifications
    webhook_secret: str
    # The service-wide callback secret: kept by owners that existed before per-owner
    # secrets (service/db/callback_secrets.py), until they rotate.
    callback_secret: str
    egress: Egress  # every request made on someone else's behalf (service/clients/egress.py)
    sealer: Sealer  # secrets at rest (SECRETS_ENCRYPTION_KEY)
    pacer: Pacer  # background batches take turns and rest (service/domain/pacing.py)
    receipt_signer: ReceiptSigner  # which key signs receipts (service/db/receipt_keys.py)
    # Content Credentials for stored outputs (C2PA_SIGNING_CERT/KEY); None: outputs are stored as they came.
    content_signer: ContentSigner | None = None
    # Each job's trace (service/observability/tracing.py); off: ids and propagation only.
    tracing: Tracing = field(default_factory=Tracing.off)
    worker_id: str = field(default="")
    # This process's running duties, for statements that hand them new rows directly (set
    # by service/work/runner.py while it runs; None: no duties here, rows wait for claims).
    handoff: Handoff | None = None
    # /metrics' database figures, read at most once every METRICS_CACHE_SECONDS.
    metrics_figures: FiguresCache = field(init=False)

    def __post_init__(self) -> None:
        self.metrics_figures = FiguresCache(self.settings.metrics_cache_seconds)

    def presign(self, key: str) -> str:
        return self.storage.presign(key, self.settings.s3_presign_seconds)
