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
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from framewire.engine.api import EngineClient
from framewire.gateway import http
from framewire.gateway.platform.auth import Principal
from framewire.gateway.platform.limits import retry_after_header
from framewire.gateway.platform.metering import Meter
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


def admit(
    engine: EngineClient, state: ServerState, meter: Meter, principal: Principal, app_id: str, surface: str
) -> None:
    """Let one request that starts work through, charging it to the key's rate; raises :class:`Refused`.

    A refusal for the rate is recorded in usage and metrics (``rate_limited``)."""
    if state.draining or not engine.ready:
        raise NotReady()
    wait_s = meter.rate_limited(principal, app_id, surface)
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
    """Any HTTP path not taken by a shared route: the queue surface or the run surface."""

    def __init__(self, settings: Settings, queue: QueueSurface, run: RunSurface, static: ASGIApp | None) -> None:
        self.settings = settings
        self.queue = queue
        self.run = run
        self.static = static

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        path = scope["path_params"].get("path", "")
        response: Response | None
        if is_queue(scope, self.settings):
            response = await self.queue.handle(request, path)
        else:
            response = None
            if request.method in ("GET", "POST"):
                response = await self.run.handle(request, path)
            if response is None:
                if self.static is not None and request.method in ("GET", "HEAD"):
                    await self.static(scope, receive, send)
                    return
                response = http.error(404, f"Path /{path.strip('/')} not found")
        await response(scope, receive, send)
