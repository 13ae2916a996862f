"""The ASGI app: routes and the lifespan that owns the engine.

``create_app`` is the only constructor; everything a handler needs hangs off
``app.state.framewire`` (:class:`gateway.resources.Resources`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from engine.api import EngineClient
from gateway.auth import Authenticator, KeyVerifier, StaticKeys, TokenIssuer
from gateway.protocol import CloseCode
from gateway.realtime import realtime_endpoint, unknown_websocket
from gateway.resources import Resources
from gateway.settings import Settings
from gateway.tokens import create_token

log = logging.getLogger("framewire")

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo_web"


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> JSONResponse:
    res: Resources = request.app.state.framewire
    is_ready = res.engine.ready and not res.draining
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


def routes(settings: Settings) -> list[BaseRoute]:
    table: list[BaseRoute] = [
        Route("/health", health),
        Route("/ready", ready),
        Route("/tokens/", create_token, methods=["POST"]),
        Route("/tokens", create_token, methods=["POST"]),
        WebSocketRoute("/{app_path:path}/realtime", realtime_endpoint),
        WebSocketRoute("/{app_path:path}/ws", realtime_endpoint),
        WebSocketRoute("/{path:path}", unknown_websocket),
    ]
    demo = Path(settings.demo_dir) if settings.demo_dir else DEMO_DIR
    if (demo / "index.html").is_file():
        table.append(Mount("/", StaticFiles(directory=demo, html=True), name="demo"))
    return table


def create_app(settings: Settings, engine: EngineClient, *, keys: KeyVerifier | None = None) -> Starlette:
    """Build the ASGI app around an engine (started and stopped by the lifespan)."""
    auth = Authenticator(
        settings.auth,
        keys if keys is not None else StaticKeys(settings.api_keys),
        TokenIssuer(settings.token_secret, settings.max_token_expiration_s),
    )
    resources = Resources(settings, engine, auth)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await engine.start()
        log.info("engine ready: %s", ", ".join(a.app_id for a in engine.registry))
        try:
            yield
        finally:
            resources.draining = True
            for session in list(resources.sessions):
                await session.close(CloseCode.GOING_AWAY, "server shutting down")
            await engine.stop()

    app = Starlette(routes=routes(settings), lifespan=lifespan)
    app.state.framewire = resources
    return app
