"""The ASGI app: routes and the lifespan that owns the engine, the store and the queue.

``create_app`` is the only constructor; everything a handler needs hangs off
``app.state.framewire`` (:class:`framewire.gateway.resources.Resources`).

Routing: shared routes (health, readiness, metrics, catalog, keys and usage admin,
tokens, storage, files, JWKS, WebSockets) answer on every surface; any other HTTP path
goes to the queue surface or the run surface, chosen per request
(:mod:`framewire.gateway.requests.surfaces`), since fal clients use the same paths on both. The shared
prefixes ``/models``, ``/v1``, ``/metrics``, ``/health`` and ``/ready`` are therefore not
available as app owners.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from framewire.engine.api import EngineClient
from framewire.gateway import http
from framewire.gateway.db import Database, DatabaseClosed, Migration
from framewire.gateway.platform import admin, catalog
from framewire.gateway.platform import keys as keys_mod
from framewire.gateway.platform import logs as logs_mod
from framewire.gateway.platform import usage as usage_mod
from framewire.gateway.platform.auth import Authenticator, KeyVerifier, StaticKeys, TokenIssuer
from framewire.gateway.platform.limits import Limiter
from framewire.gateway.platform.metering import Meter
from framewire.gateway.platform.metrics import CONTENT_TYPE, Metrics
from framewire.gateway.platform.tokens import create_token
from framewire.gateway.realtime.endpoint import realtime_endpoint, unknown_websocket
from framewire.gateway.realtime.protocol import CloseCode, ErrorCode
from framewire.gateway.requests import job_store as jobs_mod
from framewire.gateway.requests import queue_surface as queue
from framewire.gateway.requests import run_surface as run
from framewire.gateway.requests import webhooks
from framewire.gateway.requests.dispatcher import Dispatcher
from framewire.gateway.requests.finaliser import OutputFinaliser
from framewire.gateway.requests.inputs import InputFetcher
from framewire.gateway.requests.surfaces import is_queue
from framewire.gateway.resources import Resources
from framewire.gateway.settings import Settings
from framewire.gateway.storage import routes as storage
from framewire.gateway.storage.store import FileStore, UrlSigner, load_secret

log = logging.getLogger("framewire")

DEMO_DIR = Path(__file__).resolve().parents[2] / "demo_web"

#: Every table of the embedded store, in order. Other areas append their own lists.
MIGRATIONS: tuple[Migration, ...] = (*jobs_mod.MIGRATIONS, *keys_mod.MIGRATIONS, *usage_mod.MIGRATIONS)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Unhandled errors: fal's shape, with a request id (the traceback goes to the server log)."""
    return JSONResponse(
        {"detail": "Internal Server Error"},
        status_code=500,
        headers={http.REQUEST_ID: str(uuid.uuid4()), "x-fal-error-type": "internal_error"},
    )


async def health(request: Request) -> JSONResponse:
    """Liveness: the process answers (the event loop is not stuck). Never needs a key."""
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> JSONResponse:
    """Readiness: every app is set up and warm, and the server is not draining. Never needs a key."""
    res: Resources = request.app.state.framewire
    if res.engine.ready and not res.draining:
        return JSONResponse({"ready": True})
    reason = "draining" if res.draining else "engine_starting"
    return JSONResponse({"ready": False, "reason": reason}, status_code=503, headers={"Retry-After": "1"})


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text format; needs no key (see :mod:`framewire.gateway.platform.metrics`)."""
    res: Resources = request.app.state.framewire
    m = res.metrics
    m.ready.set(1 if res.engine.ready and not res.draining else 0)
    m.draining.set(1 if res.draining else 0)
    m.usage_pending.set(res.usage.pending)
    try:
        lengths = await res.jobs.queue_lengths()
    except DatabaseClosed:
        lengths = {}
    m.set_queue_depths(lengths, [app.app_id for app in res.engine.registry])
    return Response(await asyncio.to_thread(m.render), media_type=CONTENT_TYPE)


class SurfaceRouter:
    """Any HTTP path not taken by a shared route: the queue surface or the run surface."""

    def __init__(self, static: ASGIApp | None) -> None:
        self.static: ASGIApp | None = static

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        res: Resources = request.app.state.framewire
        path = scope["path_params"].get("path", "")
        response: Response | None
        if is_queue(scope, res.settings):
            response = await queue.handle(request, path)
        else:
            response = None
            if request.method in ("GET", "POST"):
                response = await run.handle(request, path)
            if response is None:
                static = self.static
                if static is not None and request.method in ("GET", "HEAD"):
                    await static(scope, receive, send)
                    return
                response = http.error(404, f"Path /{path.strip('/')} not found")
        await response(scope, receive, send)


def routes(settings: Settings) -> list[BaseRoute]:
    demo = Path(settings.demo_dir) if settings.demo_dir else DEMO_DIR
    static = StaticFiles(directory=demo, html=True) if (demo / "index.html").is_file() else None
    return [
        Route("/health", health),
        Route("/ready", ready),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *catalog.routes(),
        *admin.routes(),
        Route("/tokens/", create_token, methods=["POST"]),
        Route("/tokens", create_token, methods=["POST"]),
        Route("/.well-known/jwks.json", webhooks.jwks, methods=["GET"]),
        *storage.routes(),
        WebSocketRoute("/{app_path:path}/realtime", realtime_endpoint),
        WebSocketRoute("/{app_path:path}/ws", realtime_endpoint),
        WebSocketRoute("/{path:path}", unknown_websocket),
        Route("/{path:path}", SurfaceRouter(static)),
    ]


def create_app(
    settings: Settings,
    engine: EngineClient,
    *,
    keys: KeyVerifier | None = None,
    metrics: Metrics | None = None,
) -> Starlette:
    """Build the ASGI app around an engine (started and stopped by the lifespan).

    ``keys`` replaces the default verifier (``--api-key`` keys, then the key store);
    ``metrics`` is the instance whose ``on_batch`` the engine was built with, if any.
    """
    data_dir = Path(settings.data_dir)
    db = Database(data_dir / "framewire.db", MIGRATIONS)
    key_store = keys_mod.KeyStore(db)
    auth = Authenticator(
        settings.auth,
        keys if keys is not None else keys_mod.KeyChain(StaticKeys(settings.api_keys), key_store),
        TokenIssuer(settings.token_secret, settings.max_token_expiration_s),
    )
    res = Resources(settings, engine, auth)
    res.db = db
    res.keys = key_store
    res.metrics = metrics if metrics is not None else Metrics()
    res.usage = usage_mod.UsageMeter(
        db, flush_interval_s=settings.usage_flush_interval_s, retention_s=settings.usage_retention_s
    )
    res.limiter = Limiter()
    res.meter = Meter(res.usage, res.metrics, res.limiter)
    res.files = FileStore(data_dir / "files", max_bytes=settings.max_upload_bytes, default_ttl_s=settings.file_ttl_s)
    res.finaliser = OutputFinaliser(res.files)
    res.jobs = jobs_mod.SqliteJobStore(res.db)

    closing: set[asyncio.Future[None]] = set()

    def close_revoked_sessions() -> None:
        """Key changes reach open realtime sessions too: a revoked key's close with 4401, and
        sessions of apps its key may no longer use with 4403."""
        if not res.auth.enabled:
            return
        for session in list(res.sessions):
            key_id = session.meter.key_id
            if not key_id:
                continue
            key = res.auth.subject(key_id)
            if key is None:
                close, error, reason = CloseCode.UNAUTHORIZED, ErrorCode.UNAUTHORIZED, "API key revoked"
            elif not key.may_use(res.engine.registry.names_of(session.endpoint.app)):
                close, error, reason = (
                    CloseCode.FORBIDDEN,
                    ErrorCode.FORBIDDEN,
                    "the API key may no longer use this app",
                )
            else:
                continue
            log.info("closing a realtime session of key %s: %s", key_id, reason)
            task = asyncio.ensure_future(session.shutdown(close, reason, error=(error, reason)))
            closing.add(task)
            task.add_done_callback(closing.discard)

    key_store.on_change(close_revoked_sessions)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        assert res.db is not None
        await res.db.open()
        await res.keys.reload()
        if settings.auth and keys is None and not settings.api_keys and not res.keys.active_count():
            await res.db.close()
            raise RuntimeError(
                "--auth is on but there is no API key: pass --api-key id:secret, "
                "or create one first with `framewire keys create --admin`"
            )
        keys_watch = asyncio.create_task(res.keys.watch(), name="keys-watch")
        res.usage.start()
        await asyncio.to_thread(res.files.ensure)
        res.storage_secret = await asyncio.to_thread(load_secret, data_dir / "storage.key")
        res.signer = UrlSigner(res.storage_secret)
        key = await asyncio.to_thread(webhooks.load_signing_key, data_dir / "webhook_ed25519.pem")
        res.webhook_signer = webhooks.WebhookSigner(key, settings.webhook_secret)
        res.fetcher = InputFetcher(
            res.files,
            timeout_s=settings.fetch_timeout_s,
            max_bytes=settings.max_fetch_bytes,
            private_networks=settings.private_networks,
        )
        res.webhooks = webhooks.WebhookDeliverer(
            res.jobs,
            res.webhook_signer,
            timeout_s=settings.webhook_timeout_s,
            max_attempts=settings.webhook_max_attempts,
            retry_base_s=settings.webhook_retry_base_s,
            private_networks=settings.private_networks,
        )
        res.dispatcher = Dispatcher(
            res.jobs,
            engine,
            res.finaliser,
            res.fetcher,
            res.files,
            in_flight=settings.queue_jobs_in_flight,
            max_attempts=settings.max_job_attempts,
            retention_s=settings.job_retention_s,
            on_webhook=res.webhooks.wake,
            on_finished=lambda job, outcome, compute_ms, outputs: res.meter.request(
                job.owner,
                job.app_key,
                "queue",
                error_code=outcome.error_type,
                outputs=outputs,
                compute_ms=compute_ms,
                duration_s=max(0.0, time.time() - job.created_at),
            ),
        )
        await engine.start()
        log.info("engine ready: %s", ", ".join(a.app_id for a in engine.registry))
        await res.dispatcher.start()
        res.webhooks.start()
        try:
            yield
        finally:
            res.draining = True
            for session in list(res.sessions):
                await session.close(CloseCode.GOING_AWAY, "server shutting down")
            await res.dispatcher.stop()
            await res.webhooks.stop()
            await engine.stop()
            await res.fetcher.aclose()
            keys_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keys_watch
            try:
                await res.usage.close()  # after the engine: the last results are counted
            except Exception:
                log.exception("could not write the last usage tallies")
            await res.db.close()

    app = Starlette(
        routes=routes(settings),
        lifespan=lifespan,
        # AccessLog also sets x-fal-request-id on every response that lacks one.
        middleware=[Middleware(logs_mod.AccessLog, on_status=res.metrics.count_response)],
        exception_handlers={Exception: internal_error},
    )
    app.state.framewire = res
    return app
