"""Raw WebSocket app endpoints (fal's ``is_websocket=True``): ``/{owner}/{alias}[/{path}]``.

An app declares one with :func:`framewire.engine.api.websocket`; fal's Python client opens
it with ``ws_connect()`` unmodified, with a ``fal_jwt_token`` query parameter or an
``Authorization`` header. The caller is checked before the handshake completes: a refusal
is an HTTP answer with fal's error body (401, 403, 404 for an Origin outside the
allowlist is 403, 429 for a key with its maximum of sessions open, 503 while the engine is
not ready or the server drains), which fal's client raises as the handshake's status.
Servers without the ASGI denial extension close with the matching 44xx code instead.

Then the socket's messages pass through unchanged, both ways, to the app's handler (run by
the engine: in this process on its socket loop, or on a worker over the link), with
backpressure both ways: a side that sends faster than the other reads waits. A message
larger than ``--max-frame-bytes`` closes the socket with 1009; the key's frames/s limit
paces the client's messages (the server reads the next one when the key may send it).
Each socket counts as one of the key's realtime sessions; usage records its messages and
the seconds it was open (surface ``socket``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Router, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketState

from framewire.engine.api import App, EngineClient, EngineUnavailable, SocketClosed, SocketEndpoint, SocketLine
from framewire.gateway.platform.auth import Authenticator, AuthError, Principal
from framewire.gateway.platform.limits import Limiter, retry_after_header
from framewire.gateway.platform.metering import Meter, SessionClock, SessionMeter
from framewire.gateway.platform.metrics import Metrics
from framewire.gateway.platform.origins import origin_allowed
from framewire.gateway.realtime.protocol import CloseCode
from framewire.gateway.state import ServerState

log = logging.getLogger("framewire.sockets")

#: Query parameters the server reads itself; the app's socket does not see them.
RESERVED_QUERY = ("fal_jwt_token",)
_CLOSE_FOR_STATUS = {
    401: CloseCode.UNAUTHORIZED,
    403: CloseCode.FORBIDDEN,
    429: CloseCode.TOO_MANY_SESSIONS,
    503: CloseCode.TRY_AGAIN_LATER,
}


async def deny(ws: WebSocket, status: int, detail: str, *, error_type: str, retry_after_s: float | None = None) -> None:
    """Refuse a WebSocket before its handshake completes: an HTTP answer where the server
    supports it (clients see the status), else accept and close with the matching code."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        headers = {"x-fal-error-type": error_type}
        if retry_after_s is not None:
            headers["Retry-After"] = retry_after_header(retry_after_s)
        body = {"detail": detail, "error_type": error_type}
        await ws.send_denial_response(JSONResponse(body, status_code=status, headers=headers))
        return
    await ws.accept()
    await ws.close(_CLOSE_FOR_STATUS.get(status, CloseCode.BAD_REQUEST), detail[:120])


class _SocketSession:
    """One open app socket: the client's messages to the app, the app's to the client."""

    def __init__(
        self, ws: WebSocket, endpoint: SocketEndpoint, line: SocketLine, meter: SessionMeter, max_bytes: int
    ) -> None:
        self.ws = ws
        self.endpoint = endpoint
        self.line = line
        self.meter = meter
        self.max_bytes = max_bytes
        self.messages_in = 0
        self.messages_out = 0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def key_id(self) -> str:
        return self.meter.key_id

    @property
    def app(self) -> App:
        return self.endpoint.app

    async def _from_client(self) -> None:
        receive, line = self.ws.receive, self.line
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                line.close(int(message.get("code") or 1000), str(message.get("reason") or ""))
                return
            data: str | bytes | None = message.get("bytes")
            if data is None:
                data = message.get("text") or ""
            size = len(data) if isinstance(data, bytes) else len(data.encode())
            if size > self.max_bytes:
                reason = f"message of {size} bytes; the limit is {self.max_bytes}"
                line.close(CloseCode.MESSAGE_TOO_BIG, reason)
                await self.ws.close(CloseCode.MESSAGE_TOO_BIG, reason[:120])
                return
            while (wait_s := self.meter.admit()) is not None:  # the key's frames/s limit paces the reader
                await asyncio.sleep(wait_s)
            self.meter.message()
            self.messages_in += 1
            await line.send(data)

    async def _to_client(self) -> None:
        send = self.ws.send
        while True:
            try:
                message = await self.line.receive()
            except SocketClosed as closed:
                with contextlib.suppress(Exception):  # the client may have gone first
                    await self.ws.close(closed.code, closed.reason[:120])
                return
            if isinstance(message, bytes):
                await send({"type": "websocket.send", "bytes": message})
            else:
                await send({"type": "websocket.send", "text": message})
            self.messages_out += 1

    async def run(self) -> None:
        """Pass messages both ways until either side closes."""
        self._tasks = [asyncio.create_task(self._from_client()), asyncio.create_task(self._to_client())]
        try:
            done, pending = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            for task in done:
                exc = None if task.cancelled() else task.exception()
                if exc is not None and not isinstance(exc, SocketClosed | OSError):
                    log.error("%s: a socket pump failed", self.endpoint.key, exc_info=exc)
        finally:
            for task in self._tasks:
                task.cancel()
            self.line.close(CloseCode.GOING_AWAY, "the server ended the socket")

    async def close(self, code: int, reason: str = "") -> None:
        self.line.close(code, reason)
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason[:120])

    async def shutdown(
        self, code: int, reason: str, *, wait_s: float = 0.0, error: tuple[str, str] | None = None
    ) -> None:
        """The app's socket has no protocol of its own to announce a drain in: close with ``code``."""
        await self.close(code, reason)


class _Dispatch:
    """The ASGI app of :meth:`AppSocketRoutes.routes`."""

    def __init__(self, routes: AppSocketRoutes, fallback: ASGIApp) -> None:
        self.routes = routes
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.routes.engine.registry.resolve_socket(scope["path"].strip("/"))
        if endpoint is None:
            await self.fallback(scope, receive, send)
            return
        await self.routes.connect(WebSocket(scope, receive, send), endpoint)


class AppSocketRoutes:
    """Routes WebSocket paths that name an app's raw socket endpoint; others go to ``fallback``."""

    def __init__(
        self,
        engine: EngineClient,
        auth: Authenticator,
        limiter: Limiter,
        meter: Meter,
        metrics: Metrics,
        state: ServerState,
        *,
        allowed_origins: tuple[str, ...],
        allowed_hosts: tuple[str, ...],
        max_message_bytes: int,
    ) -> None:
        self.engine = engine
        self.auth = auth
        self.limiter = limiter
        self.meter = meter
        self.metrics = metrics
        self.state = state
        self.allowed_origins = allowed_origins
        self.allowed_hosts = allowed_hosts
        self.max_message_bytes = max_message_bytes

    def routes(self, fallback: Sequence[BaseRoute]) -> list[BaseRoute]:
        """One route for every WebSocket path: an app socket's path here, others to ``fallback``'s routes."""
        return [WebSocketRoute("/{path:path}", _Dispatch(self, Router(list(fallback))))]

    async def _refuse(self, ws: WebSocket, status: int, detail: str, error_type: str, **kw: float) -> None:
        self.metrics.sessions_refused.labels(error_type.upper()).inc()
        await deny(ws, status, detail, error_type=error_type, **kw)

    async def connect(self, ws: WebSocket, endpoint: SocketEndpoint) -> None:
        """Check the caller, then run the socket until either side closes."""
        origin, host = ws.headers.get("origin"), ws.headers.get("host")
        if not origin_allowed(origin, host, self.allowed_origins, allowed_hosts=self.allowed_hosts):
            await self._refuse(ws, 403, f"origin {ws.headers.get('origin')!r} is not allowed", "forbidden")
            return
        try:
            principal = self.auth.request(ws.headers, ws.query_params.get("fal_jwt_token"))
            self.auth.check_app(principal, self.engine.registry.names_of(endpoint.app))
        except AuthError as exc:
            await self._refuse(ws, exc.status, exc.reason, exc.code.lower())
            return
        if self.state.draining or not self.engine.ready:
            detail = "the server is shutting down; reconnect" if self.state.draining else "the server is not ready"
            await self._refuse(ws, 503, detail, "engine_unavailable", retry_after_s=1.0)
            return
        if not self.limiter.open_session(principal):
            self.metrics.rate_limited.labels("sessions").inc()
            limit = principal.limits.max_sessions
            detail = f"this key may have {limit} sessions open at once; close one first"
            await self._refuse(ws, 429, detail, "too_many_sessions")
            return
        try:
            await self._run(ws, principal, endpoint)
        finally:
            self.limiter.close_session(principal)

    async def _run(self, ws: WebSocket, principal: Principal, endpoint: SocketEndpoint) -> None:
        app_id = endpoint.app.app_id
        query = {k: v for k, v in ws.query_params.items() if k not in RESERVED_QUERY}
        try:
            line = await self.engine.open_socket(endpoint, query)
        except EngineUnavailable as exc:
            await self._refuse(ws, 503, exc.reason, "engine_unavailable", retry_after_s=1.0)
            return
        await ws.accept()
        meter = self.meter.session(principal, app_id, "socket")
        session = _SocketSession(ws, endpoint, line, meter, self.max_message_bytes)
        clock = SessionClock(meter)
        clock.start()
        self.state.sessions.add(session)
        gauge = self.metrics.sessions_open.labels(app_id)
        gauge.inc()
        self.metrics.sessions_opened.labels(app_id).inc()
        log.info("socket opened: %s by key %s", endpoint.key, principal.key_id)
        try:
            await session.run()
        finally:
            self.state.sessions.discard(session)
            gauge.dec()
            open_s = await clock.stop()
            if ws.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await ws.close(CloseCode.NORMAL)
            log.info(
                "socket closed: %s after %.1f s, in=%d out=%d",
                endpoint.key,
                open_s,
                session.messages_in,
                session.messages_out,
            )
