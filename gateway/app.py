"""The ASGI app: routes and the lifespan that owns the engine, the store and the queue.

``create_app`` is the only constructor; everything a handler needs hangs off
``app.state.framewire`` (:class:`gateway.resources.Resources`).

Routing: shared routes (health, tokens, storage, files, JWKS, WebSockets) answer on
every surface; any other HTTP path goes to the queue surface or the run surface, chosen
per request (:mod:`gateway.surface`), since fal clients use the same paths on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.api import EngineClient
from gateway import jobs as jobs_mod
from gateway import queue, responses, run, storage, webhooks
from gateway.auth import Authenticator, KeyVerifier, StaticKeys, TokenIssuer
from gateway.db import Database, Migration
from gateway.dispatcher import Dispatcher
from gateway.files import FileStore, UrlSigner, load_secret
from gateway.inputs import InputFetcher
from gateway.outputs import OutputFinaliser
from gateway.protocol import CloseCode
from gateway.realtime import realtime_endpoint, unknown_websocket
from gateway.resources import Resources
from gateway.settings import Settings
from gateway.surface import is_queue
from gateway.tokens import create_token

log = logging.getLogger("framewire")

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo_web"

#: Every table of the embedded store, in order. Other areas append their own lists.
MIGRATIONS: tuple[Migration, ...] = (*jobs_mod.MIGRATIONS,)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Unhandled errors: fal's shape, with a request id (the traceback goes to the server log)."""
    return JSONResponse(
        {"detail": "Internal Server Error"},
        status_code=500,
        headers={responses.REQUEST_ID: str(uuid.uuid4()), "x-fal-error-type": "internal_error"},
    )


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> JSONResponse:
    res: Resources = request.app.state.framewire
    is_ready = res.engine.ready and not res.draining
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


class SurfaceRouter:
    """Any HTTP path not taken by a shared route: the queue surface or the run surface."""

    def __init__(self, static: ASGIApp | None) -> None:
        self.static = static

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        res: Resources = request.app.state.framewire
        path = scope["path_params"].get("path", "")
        if is_queue(scope, res.settings):
            response = await queue.handle(request, path)
        else:
            response = None
            if request.method in ("GET", "POST"):
                response = await run.handle(request, path)
            if response is None:
                if self.static is not None and request.method in ("GET", "HEAD"):
                    await self.static(scope, receive, send)
                    return
                response = responses.error(404, f"Path /{path.strip('/')} not found")
        await response(scope, receive, send)


def routes(settings: Settings) -> list[BaseRoute]:
    demo = Path(settings.demo_dir) if settings.demo_dir else DEMO_DIR
    static = StaticFiles(directory=demo, html=True) if (demo / "index.html").is_file() else None
    return [
        Route("/health", health),
        Route("/ready", ready),
        Route("/tokens/", create_token, methods=["POST"]),
        Route("/tokens", create_token, methods=["POST"]),
        Route("/.well-known/jwks.json", webhooks.jwks, methods=["GET"]),
        *storage.routes(),
        WebSocketRoute("/{app_path:path}/realtime", realtime_endpoint),
        WebSocketRoute("/{app_path:path}/ws", realtime_endpoint),
        WebSocketRoute("/{path:path}", unknown_websocket),
        Route("/{path:path}", SurfaceRouter(static)),
    ]


def create_app(settings: Settings, engine: EngineClient, *, keys: KeyVerifier | None = None) -> Starlette:
    """Build the ASGI app around an engine (started and stopped by the lifespan)."""
    auth = Authenticator(
        settings.auth,
        keys if keys is not None else StaticKeys(settings.api_keys),
        TokenIssuer(settings.token_secret, settings.max_token_expiration_s),
    )
    data_dir = Path(settings.data_dir)
    res = Resources(settings, engine, auth)
    res.db = Database(data_dir / "framewire.db", MIGRATIONS)
    res.files = FileStore(data_dir / "files", max_bytes=settings.max_upload_bytes, default_ttl_s=settings.file_ttl_s)
    res.finaliser = OutputFinaliser(res.files)
    res.jobs = jobs_mod.SqliteJobStore(res.db)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        assert res.db is not None
        await res.db.open()
        await asyncio.to_thread(res.files.ensure)
        res.storage_secret = await asyncio.to_thread(load_secret, data_dir / "storage.key")
        res.signer = UrlSigner(res.storage_secret)
        key = await asyncio.to_thread(webhooks.load_signing_key, data_dir / "webhook_ed25519.pem")
        res.webhook_signer = webhooks.WebhookSigner(key, settings.webhook_secret)
        res.fetcher = InputFetcher(res.files, timeout_s=settings.fetch_timeout_s, max_bytes=settings.max_fetch_bytes)
        res.webhooks = webhooks.WebhookDeliverer(
            res.jobs,
            res.webhook_signer,
            timeout_s=settings.webhook_timeout_s,
            max_attempts=settings.webhook_max_attempts,
            retry_base_s=settings.webhook_retry_base_s,
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
            await res.db.close()

    app = Starlette(
        routes=routes(settings),
        lifespan=lifespan,
        middleware=[Middleware(responses.RequestIdMiddleware)],
        exception_handlers={Exception: internal_error},
    )
    app.state.framewire = res
    return app
