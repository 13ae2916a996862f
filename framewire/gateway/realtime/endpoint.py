"""The realtime WebSocket endpoint: handshake checks, then a :class:`RealtimeSession`.

URL: ``/{owner}/{alias}[/{path}]/realtime`` (and the legacy ``/…/ws``), query
``fal_jwt_token``, ``max_buffering``, ``target_latency_ms`` (the session's latency
target; default: the app's) and ``similarity_threshold`` (skip frames whose image barely
changed; default 0: exact repeats only). The Origin check happens before the handshake
completes (HTTP 403). Every other refusal is an ``x-fal-error`` text frame followed by
a close whose code mirrors the HTTP status (4401, 4403, 4404, 4400, 4429 when the key
has its maximum of sessions open; 1013 while the engine is not ready or the server
drains, with ``retry_after_ms``), so browsers, which never see a refused handshake's
status, can show the reason too.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from dataclasses import dataclass

from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket

from framewire.engine.api import DEFAULT_BUFFERING, AppRegistry, Endpoint, EngineClient, EngineUnavailable
from framewire.gateway.budget import StructureBudget
from framewire.gateway.http import base_url
from framewire.gateway.platform import logs
from framewire.gateway.platform.auth import Authenticator, AuthError, Principal
from framewire.gateway.platform.limits import Limiter
from framewire.gateway.platform.metering import Meter
from framewire.gateway.platform.metrics import Metrics
from framewire.gateway.platform.origins import origin_allowed
from framewire.gateway.realtime import protocol
from framewire.gateway.realtime.protocol import CloseCode, ErrorCode, ProtocolError
from framewire.gateway.realtime.session import RealtimeSession
from framewire.gateway.requests.finaliser import OutputFinaliser
from framewire.gateway.requests.inputs import InputFetcher
from framewire.gateway.state import ServerState

log = logging.getLogger("framewire.realtime")


#: The reconnect hint sent with ENGINE_UNAVAILABLE (starting up or draining).
RETRY_AFTER_MS = 1000
#: What a WebSocket path ends with: ``realtime``, or ``ws`` for older clients.
SUFFIXES = ("realtime", "ws")


def websocket_endpoint(registry: AppRegistry, path: str) -> Endpoint | None:
    """The endpoint a WebSocket opened at ``path`` runs, or None (no session opens there)."""
    app_path, _, suffix = path.strip("/").rpartition("/")
    if suffix not in SUFFIXES or not app_path:
        return None
    try:
        return registry.resolve(app_path, realtime=True)
    except (LookupError, ValueError):
        return None


@dataclass(frozen=True)
class _SessionOptions:
    """What the client's query string asks of its session."""

    max_buffering: int | None
    target_latency_ms: float | None
    similarity_threshold: float


class RealtimeEndpoint:
    """The realtime WebSocket routes; see the module docstring.

    Open sessions are kept in ``state.sessions`` so the drain and the lifespan can close
    them; :meth:`close_revoked_sessions` is the key store's change listener.
    """

    def __init__(
        self,
        engine: EngineClient,
        auth: Authenticator,
        limiter: Limiter,
        meter: Meter,
        metrics: Metrics,
        finaliser: OutputFinaliser,
        fetcher: InputFetcher,
        state: ServerState,
        *,
        allowed_origins: tuple[str, ...],
        allowed_hosts: tuple[str, ...],
        max_frame_bytes: int,
        budget: StructureBudget,
    ) -> None:
        self.engine = engine
        self.auth = auth
        self.limiter = limiter
        self.meter = meter
        self.metrics = metrics
        self.finaliser = finaliser
        self.fetcher = fetcher
        self.state = state
        self.allowed_origins = allowed_origins
        self.allowed_hosts = allowed_hosts  # ("*",) with auth on: the Host is not checked then
        self.max_frame_bytes = max_frame_bytes
        self.budget = budget
        self._closing: set[asyncio.Future[None]] = set()

    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [WebSocketRoute(f"/{{app_path:path}}/{s}", self.connect) for s in SUFFIXES]
        return [*routes, WebSocketRoute("/{path:path}", self.unknown)]

    async def _refuse(self, ws: WebSocket, code: str, reason: str, close_code: int, **extra: object) -> None:
        self.metrics.sessions_refused.labels(str(code)).inc()
        await ws.send_text(protocol.error_message(code, reason, **extra))
        await ws.close(close_code, reason[:120])

    async def connect(self, ws: WebSocket) -> None:
        """A client opens a session: check it, then run it until either side closes."""
        origin, host = ws.headers.get("origin"), ws.headers.get("host")
        if not origin_allowed(origin, host, self.allowed_origins, allowed_hosts=self.allowed_hosts):
            detail = f"origin {ws.headers.get('origin')!r} is not allowed"
            if "websocket.http.response" in ws.scope.get("extensions", {}):
                await ws.send_denial_response(JSONResponse({"detail": detail}, status_code=403))
            else:
                await ws.close(1008, detail)
            return
        await ws.accept()
        app_path = ws.path_params.get("app_path", "")
        registry = self.engine.registry
        try:
            principal = self.auth.request(ws.headers, ws.query_params.get("fal_jwt_token"))
            try:
                endpoint = registry.resolve(app_path, realtime=True)
            except (LookupError, ValueError) as exc:
                raise ProtocolError(ErrorCode.NOT_FOUND, exc.args[0] if exc.args else str(exc)) from None
            self.auth.check_app(principal, registry.names_of(endpoint.app))
            query = ws.query_params
            options = _SessionOptions(
                protocol.parse_max_buffering(query.get("max_buffering")),
                protocol.parse_target_latency_ms(query.get("target_latency_ms")),
                protocol.parse_similarity_threshold(query.get("similarity_threshold")),
            )
        except AuthError as exc:
            close = CloseCode.UNAUTHORIZED if exc.status == 401 else CloseCode.FORBIDDEN
            await self._refuse(ws, exc.code, exc.reason, close)
            return
        except ProtocolError as exc:
            close = CloseCode.NOT_FOUND if exc.code == ErrorCode.NOT_FOUND else CloseCode.BAD_REQUEST
            await self._refuse(ws, exc.code, exc.reason, close)
            return
        draining = self.state.draining
        if not self.engine.ready or draining:
            reason = "the server is shutting down; reconnect" if draining else "the server is not ready; retry shortly"
            await self._refuse(
                ws, ErrorCode.ENGINE_UNAVAILABLE, reason, CloseCode.TRY_AGAIN_LATER, retry_after_ms=RETRY_AFTER_MS
            )
            return
        slot = await self.limiter.enter_session(principal)
        if slot is None:
            self.metrics.rate_limited.labels("sessions").inc()
            limit = principal.limits.max_sessions
            await self._refuse(
                ws,
                ErrorCode.TOO_MANY_SESSIONS,
                f"this key may have {limit} realtime session{'s' if limit != 1 else ''} open at once; close one first",
                CloseCode.TOO_MANY_SESSIONS,
            )
            return
        try:
            await self._run_session(ws, principal, endpoint, options)
        finally:
            await self.limiter.leave_session(slot)

    async def _run_session(
        self, ws: WebSocket, principal: Principal, endpoint: Endpoint, options: _SessionOptions
    ) -> None:
        app_id = endpoint.app.app_id
        session_id = uuid.uuid4().hex
        logs.session_id.set(session_id)
        capacity = options.max_buffering or endpoint.spec.buffering or DEFAULT_BUFFERING
        base = base_url(ws)
        session = RealtimeSession(
            ws,
            endpoint,
            self.engine,
            capacity=capacity,
            target_latency_ms=options.target_latency_ms,
            similarity_threshold=options.similarity_threshold,
            session_timeout_s=endpoint.spec.session_timeout_s,
            max_frame_bytes=self.max_frame_bytes,
            budget=self.budget,
            store_files=functools.partial(self.finaliser.for_realtime_blocking, base_url=base),
            meter=self.meter.session(principal, app_id),
            fetcher=self.fetcher,
            base_url=base,
        )
        self.state.sessions.add(session)
        open_gauge = self.metrics.sessions_open.labels(app_id)
        open_gauge.inc()
        self.metrics.sessions_opened.labels(app_id).inc()
        log.info("session opened: %s by key %s", endpoint.key, principal.key_id)
        try:
            stats = await session.run()
        except EngineUnavailable as exc:  # no worker could take the session (its app's are all down)
            await self._refuse(
                ws, ErrorCode.ENGINE_UNAVAILABLE, exc.reason, CloseCode.TRY_AGAIN_LATER, retry_after_ms=RETRY_AFTER_MS
            )
            return
        finally:
            self.state.sessions.discard(session)
            open_gauge.dec()
        log.info(
            "session closed: %s in=%d out=%d dropped=%d errors=%d",
            endpoint.key,
            stats.frames_in,
            stats.frames_out,
            stats.frames_dropped,
            stats.errors,
        )

    async def unknown(self, ws: WebSocket) -> None:
        """Any other WebSocket path: say which paths exist."""
        await ws.accept()
        await self._refuse(
            ws,
            ErrorCode.NOT_FOUND,
            f"no WebSocket endpoint at {ws.url.path!r}; use /{{owner}}/{{alias}}/realtime",
            CloseCode.NOT_FOUND,
        )

    def close_revoked_sessions(self) -> None:
        """Key changes reach open sessions too (realtime, video and raw sockets): a revoked
        key's close with 4401, and sessions of apps its key may no longer use with 4403.
        Runs on the event loop after each reload of the key store."""
        if not self.auth.enabled:
            return
        registry = self.engine.registry
        for session in list(self.state.sessions):
            key_id = session.key_id
            if not key_id:
                continue
            key = self.auth.subject(key_id)
            if key is None:
                close, error, reason = CloseCode.UNAUTHORIZED, ErrorCode.UNAUTHORIZED, "API key revoked"
            elif not key.may_use(registry.names_of(session.app)):
                close, error, reason = (
                    CloseCode.FORBIDDEN,
                    ErrorCode.FORBIDDEN,
                    "the API key may no longer use this app",
                )
            else:
                continue
            log.info("closing a realtime session of key %s: %s", key_id, reason)
            task = asyncio.ensure_future(session.shutdown(close, reason, error=(error, reason)))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
