"""What the app's lifespan owns, created once and handed to every handler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from framewire.engine.api import EngineClient
from framewire.gateway.platform.auth import Authenticator
from framewire.gateway.settings import Settings

if TYPE_CHECKING:
    from framewire.gateway.db import Database
    from framewire.gateway.platform.keys import KeyStore
    from framewire.gateway.platform.limits import Limiter
    from framewire.gateway.platform.metering import Meter
    from framewire.gateway.platform.metrics import Metrics
    from framewire.gateway.platform.usage import UsageMeter
    from framewire.gateway.realtime.session import RealtimeSession
    from framewire.gateway.requests.dispatcher import Dispatcher
    from framewire.gateway.requests.finaliser import OutputFinaliser
    from framewire.gateway.requests.inputs import InputFetcher
    from framewire.gateway.requests.job_store import JobStore
    from framewire.gateway.requests.webhooks import WebhookDeliverer, WebhookSigner
    from framewire.gateway.storage.store import FileStore, UrlSigner


@dataclass(eq=False)
class Resources:
    settings: Settings
    engine: EngineClient
    auth: Authenticator
    sessions: set[RealtimeSession] = field(default_factory=set)
    draining: bool = False
    # storage/queue (set by create_app; opened and closed by the lifespan)
    db: Database | None = None
    files: FileStore = field(default=None)  # type: ignore[assignment]
    signer: UrlSigner = field(default=None)  # type: ignore[assignment]
    storage_secret: bytes = b""
    finaliser: OutputFinaliser = field(default=None)  # type: ignore[assignment]
    fetcher: InputFetcher = field(default=None)  # type: ignore[assignment]
    jobs: JobStore = field(default=None)  # type: ignore[assignment]
    dispatcher: Dispatcher = field(default=None)  # type: ignore[assignment]
    webhook_signer: WebhookSigner = field(default=None)  # type: ignore[assignment]
    webhooks: WebhookDeliverer = field(default=None)  # type: ignore[assignment]
    # platform (keys, usage, metrics, limits, drain)
    keys: KeyStore = field(default=None)  # type: ignore[assignment]
    usage: UsageMeter = field(default=None)  # type: ignore[assignment]
    metrics: Metrics = field(default=None)  # type: ignore[assignment]
    limiter: Limiter = field(default=None)  # type: ignore[assignment]
    meter: Meter = field(default=None)  # type: ignore[assignment]
    queue_stopped: bool = False  # set by the drain once queued jobs will not start before the restart
