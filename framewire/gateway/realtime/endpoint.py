"""The realtime WebSocket endpoint: handshake checks, then a :class:`RealtimeSession`.

URL: ``/{owner}/{alias}[/{path}]/realtime`` (and the legacy ``/…/ws``), query
``fal_jwt_token`` and ``max_buffering``. The Origin check happens before the handshake
completes (HTTP 403). Every other refusal is an ``x-fal-error`` text frame followed by
a close whose code mirrors the HTTP status (4401, 4403, 4404, 4400, 4429 when the key
has its maximum of sessions open; 1013 while the engine is not ready or the server
drains, with ``retry_after_ms``), so browsers, which never see a refused handshake's
status, can show the reason too.
"""

from __future__ import annotations

import functools
import logging
import uuid

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from framewire.engine.api import DEFAULT_BUFFERING, Endpoint
from framewire.gateway.http import base_url
from framewire.gateway.platform import logs
from framewire.gateway.platform.auth import AuthError, Principal, origin_allowed
from framewire.gateway.realtime import protocol
from framewire.gateway.realtime.protocol import CloseCode, ErrorCode, ProtocolError
from framewire.gateway.realtime.session import RealtimeSession
from framewire.gateway.resources import Resources

log = logging.getLogger("framewire.realtime")


#: The reconnect hint sent with ENGINE_UNAVAILABLE (starting up or draining).
RETRY_AFTER_MS = 1000


async def _refuse(ws: WebSocket, code: str, reason: str, close_code: int, **extra: object) -> None:
    res: Resources = ws.app.state.framewire
    res.metrics.sessions_refused.labels(str(code)).inc()
    await ws.send_text(protocol.error_message(code, reason, **extra))
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
        reason = "the server is shutting down; reconnect" if res.draining else "the server is not ready; retry shortly"
        await _refuse(
            ws, ErrorCode.ENGINE_UNAVAILABLE, reason, CloseCode.TRY_AGAIN_LATER, retry_after_ms=RETRY_AFTER_MS
        )
        return
    if not res.limiter.open_session(principal):
        res.metrics.rate_limited.labels("sessions").inc()
        limit = principal.limits.max_sessions
        await _refuse(
            ws,
            ErrorCode.TOO_MANY_SESSIONS,
            f"this key may have {limit} realtime session{'s' if limit != 1 else ''} open at once; close one first",
            CloseCode.TOO_MANY_SESSIONS,
        )
        return
    try:
        await _run_session(ws, res, principal, endpoint, max_buffering)
    finally:
        res.limiter.close_session(principal)


async def _run_session(
    ws: WebSocket, res: Resources, principal: Principal, endpoint: Endpoint, max_buffering: int | None
) -> None:
    settings = res.settings
    app_id = endpoint.app.app_id
    session_id = uuid.uuid4().hex
    logs.session_id.set(session_id)
    capacity = max_buffering or endpoint.spec.buffering or DEFAULT_BUFFERING
    session = RealtimeSession(
        ws,
        endpoint,
        res.engine,
        capacity=capacity,
        session_timeout_s=endpoint.spec.session_timeout_s,
        max_frame_bytes=settings.max_frame_bytes,
        store_files=functools.partial(res.finaliser.for_realtime_blocking, base_url=base_url(ws)),
        meter=res.meter.session(principal, app_id),
    )
    res.sessions.add(session)
    open_gauge = res.metrics.sessions_open.labels(app_id)
    open_gauge.inc()
    res.metrics.sessions_opened.labels(app_id).inc()
    log.info("session opened: %s by key %s", endpoint.key, principal.key_id)
    try:
        stats = await session.run()
    finally:
        res.sessions.discard(session)
        open_gauge.dec()
    log.info(
        "session closed: %s in=%d out=%d dropped=%d errors=%d",
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
