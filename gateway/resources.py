"""What the app's lifespan owns, created once and handed to every handler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.api import EngineClient
from gateway.auth import Authenticator
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.db import Database
    from gateway.dispatcher import Dispatcher
    from gateway.files import FileStore, UrlSigner
    from gateway.inputs import InputFetcher
    from gateway.jobs import JobStore
    from gateway.keys import KeyStore
    from gateway.limits import Limiter
    from gateway.metering import Meter
    from gateway.metrics import Metrics
    from gateway.outputs import OutputFinaliser
    from gateway.session import RealtimeSession
    from gateway.usage import UsageMeter
    from gateway.webhooks import WebhookDeliverer, WebhookSigner


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
