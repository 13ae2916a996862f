"""Which surface answers an HTTP request, and what the run, queue and MCP surfaces share.

fal clients send run and queue calls to the same paths (``POST /{id}``) on two hosts,
``fal.run`` and ``queue.fal.run``. FrameWire picks the queue surface when the Host
header starts with ``queue.`` or the request arrived on the ``--queue-port`` listener
(the ASGI ``server`` entry is the listening socket's address). :class:`SurfaceRouter`
takes every HTTP path no shared route took; on the run surface, a path no app answers
falls through to the demo page's static files.

:func:`admit` is the one gate before work starts on any surface: the server must be ready
and not draining, and the key within its requests/s limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from framewire.engine.api import EngineClient
from framewire.gateway import http
from framewire.gateway.platform.auth import Principal
from framewire.gateway.platform.limits import retry_after_header
from framewire.gateway.platform.metering import Meter
from framewire.gateway.realtime.endpoint import websocket_endpoint
from framewire.gateway.settings import Settings
from framewire.gateway.state import ServerState

if TYPE_CHECKING:  # both import this module's helpers
    from framewire.gateway.requests.queue_surface import QueueSurface
    from framewire.gateway.requests.run_surface import RunSurface

#: Seconds between keep-alive comments on SSE streams.
PING_S = 10


def is_queue(scope: Scope, settings: Settings) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"host":
            if value.lower().startswith(b"queue."):
                return True
            break
    server = scope.get("server")
    return settings.queue_port is not None and server is not None and server[1] == settings.queue_port


class Refused(Exception):
    """Work refused before it started. ``str()`` is the reason; :meth:`response` the HTTP answer."""

    error_type = "refused"

    def response(self) -> Response:
        raise NotImplementedError


class NotReady(Refused):
    """The engine is starting or the server drains; clients retry."""

    error_type = "engine_unavailable"

    def __init__(self) -> None:
        super().__init__("the server is not ready; retry shortly")

    def response(self) -> Response:
        return http.error(503, str(self), error_type=self.error_type, headers={"Retry-After": "1"})


class RateLimited(Refused):
    """The key is over its requests/s limit; ``wait_s`` is when it may try again."""

    error_type = "rate_limited"

    def __init__(self, requests_per_s: float | None, wait_s: float) -> None:
        super().__init__(f"this key is over its limit of {requests_per_s:g} requests/s; retry in {wait_s:.2f} s")
        self.wait_s = wait_s

    def response(self) -> Response:
        """429 with a ``Retry-After`` a client can obey."""
        return http.error(
            429, str(self), error_type=self.error_type, headers={"Retry-After": retry_after_header(self.wait_s)}
        )


async def admit(
    engine: EngineClient, state: ServerState, meter: Meter, principal: Principal, app_id: str, surface: str
) -> None:
    """Let one request that starts work through, charging it to the key's rate; raises :class:`Refused`.

    A refusal for the rate is recorded in usage and metrics (``rate_limited``)."""
    if state.draining or not engine.ready:
        raise NotReady()
    wait_s = await meter.rate_limited(principal, app_id, surface)
    if wait_s is not None:
        raise RateLimited(principal.limits.requests_per_s, wait_s)


def start_timeout_s(conn: HTTPConnection) -> float | None:
    """``x-fal-request-timeout``: seconds a request may wait before it starts (None: no bound).

    It bounds the wait in line and for the app, not the processing (protocol §2.8).
    ValueError names a value that is not a positive number of seconds."""
    raw = conn.headers.get("x-fal-request-timeout")
    if raw is None:
        return None
    try:
        timeout_s = float(raw)
    except ValueError:
        raise ValueError(f"x-fal-request-timeout must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ValueError(f"x-fal-request-timeout must be > 0 seconds, got {raw!r}")
    return timeout_s


class SurfaceRouter:
    """Any HTTP path not taken by a shared route: the queue surface or the run surface.

    Methods are checked first, the same way on both surfaces: a path where an app answers
    but not to this method gets 405 with ``Allow``, and so does a shared route's path
    (``shared``) asked with a method it does not take. A WebSocket path (``…/realtime``,
    ``…/ws``) reached by plain HTTP gets 426: it takes only the upgrade.
    """

    def __init__(
        self,
        settings: Settings,
        queue: QueueSurface,
        run: RunSurface,
        static: ASGIApp | None,
        shared: Sequence[BaseRoute] = (),
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.run = run
        self.static = static
        self.shared = tuple(shared)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        path = scope["path_params"].get("path", "")
        method = request.method
        surface: QueueSurface | RunSurface = self.queue if is_queue(scope, self.settings) else self.run
        allowed = set(surface.methods(path))
        upgrade = websocket_endpoint(self.run.engine.registry, path) is not None
        if upgrade:
            allowed.add("GET")  # the WebSocket's: a GET run never happens where a session opens
        response: Response | None = None
        if not allowed:
            response = self._shared_methods(scope)
            if response is None and surface is self.run and self.static is not None and method in ("GET", "HEAD"):
                await self.static(scope, receive, send)
                return
            response = response or http.error(404, f"Path /{path.strip('/')} not found")
        elif method not in allowed:
            response = not_allowed(method, allowed)
        elif upgrade and method == "GET":
            response = http.error(
                426,
                f"/{path.strip('/')} is a WebSocket endpoint: open it with a WebSocket client (Upgrade: websocket)",
                error_type="upgrade_required",
                headers={"Upgrade": "websocket"},
            )
        else:
            response = await surface.handle(request, path)
        if response is None:  # the app went away since its methods were read
            response = http.error(404, f"Path /{path.strip('/')} not found")
        await response(scope, receive, send)

    def _shared_methods(self, scope: Scope) -> Response | None:
        """405 when a shared route has this path but not this method, else None."""
        for route in self.shared:
            match, _ = route.matches(scope)
            methods = getattr(route, "methods", None)
            if match == Match.PARTIAL and methods:
                return not_allowed(scope["method"], methods)
        return None


def not_allowed(method: str, allowed: Iterable[str]) -> Response:
    """405 with the ``Allow`` header RFC 9110 asks for."""
    methods = ", ".join(sorted(allowed))
    return http.error(
        405, f"{method} is not allowed here; use {methods}", error_type="method_not_allowed", headers={"Allow": methods}
    )
