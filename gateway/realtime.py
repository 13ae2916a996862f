"""The realtime WebSocket endpoint: handshake checks, then a :class:`RealtimeSession`.

URL: ``/{owner}/{alias}[/{path}]/realtime`` (and the legacy ``/…/ws``), query
``fal_jwt_token`` and ``max_buffering``. The Origin check happens before the handshake
completes (HTTP 403). Every other refusal is an ``x-fal-error`` text frame followed by
a close whose code mirrors the HTTP status (4401, 4403, 4404, 4400; 1013 while the
engine is not ready), so browsers, which never see a refused handshake's status, can
show the reason too.
"""

from __future__ import annotations

import functools
import logging

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from engine.api import DEFAULT_BUFFERING
from gateway import protocol
from gateway.auth import AuthError, origin_allowed
from gateway.protocol import CloseCode, ErrorCode, ProtocolError
from gateway.resources import Resources
from gateway.session import RealtimeSession
from gateway.surface import base_url

log = logging.getLogger("framewire.realtime")


async def _refuse(ws: WebSocket, code: str, reason: str, close_code: int) -> None:
    await ws.send_text(protocol.error_message(code, reason))
    await ws.close(close_code, reason[:120])


async def realtime_endpoint(ws: WebSocket) -> None:
    res: Resources = ws.app.state.framewire
    settings = res.settings
    if not origin_allowed(ws.headers.get("origin"), ws.headers.get("host"), settings.allowed_origins):
        detail = f"origin {ws.headers.get('origin')!r} is not allowed"
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            await ws.send_denial_response(JSONResponse({"detail": detail}, status_code=403))
        else:
            await ws.close(1008, detail)
        return
    await ws.accept()
    app_path = ws.path_params.get("app_path", "")
    try:
        principal = res.auth.request(ws.headers, ws.query_params.get("fal_jwt_token"))
        try:
            endpoint = res.engine.registry.resolve(app_path, realtime=True)
        except (LookupError, ValueError) as exc:
            raise ProtocolError(ErrorCode.NOT_FOUND, exc.args[0] if exc.args else str(exc)) from None
        res.auth.check_app(principal, res.engine.registry.names_of(endpoint.app))
        max_buffering = protocol.parse_max_buffering(ws.query_params.get("max_buffering"))
    except AuthError as exc:
        close = CloseCode.UNAUTHORIZED if exc.status == 401 else CloseCode.FORBIDDEN
        await _refuse(ws, exc.code, exc.reason, close)
        return
    except ProtocolError as exc:
        close = CloseCode.NOT_FOUND if exc.code == ErrorCode.NOT_FOUND else CloseCode.BAD_REQUEST
        await _refuse(ws, exc.code, exc.reason, close)
        return
    if not res.engine.ready or res.draining:
        await _refuse(
            ws, ErrorCode.ENGINE_UNAVAILABLE, "the server is not ready; retry shortly", CloseCode.TRY_AGAIN_LATER
        )
        return

    capacity = max_buffering or endpoint.spec.buffering or DEFAULT_BUFFERING
    session = RealtimeSession(
        ws,
        endpoint,
        res.engine,
        capacity=capacity,
        session_timeout_s=endpoint.spec.session_timeout_s,
        max_frame_bytes=settings.max_frame_bytes,
        store_files=functools.partial(res.finaliser.for_realtime_blocking, base_url=base_url(ws)),
    )
    res.sessions.add(session)
    try:
        stats = await session.run()
    finally:
        res.sessions.discard(session)
    log.info(
        "session %s closed: in=%d out=%d dropped=%d errors=%d",
        endpoint.key,
        stats.frames_in,
        stats.frames_out,
        stats.frames_dropped,
        stats.errors,
    )


async def unknown_websocket(ws: WebSocket) -> None:
    """Any other WebSocket path: say which paths exist."""
    await ws.accept()
    await _refuse(
        ws,
        ErrorCode.NOT_FOUND,
        f"no WebSocket endpoint at {ws.url.path!r}; use /{{owner}}/{{alias}}/realtime",
        CloseCode.NOT_FOUND,
    )
