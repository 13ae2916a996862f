"""Which surface a request is on, and the URL the client used to reach it.

fal clients send run and queue calls to the same paths (``POST /{id}``) on two hosts,
``fal.run`` and ``queue.fal.run``. FrameWire picks the queue surface when the Host
header starts with ``queue.`` or the request arrived on the ``--queue-port`` listener
(the ASGI ``server`` entry is the listening socket's address). URLs handed back use the
scheme and host the client used, so they work behind TLS terminators and proxies
(uvicorn applies ``X-Forwarded-Proto`` from trusted proxies to the scheme).
"""

from __future__ import annotations

import math

from starlette.requests import HTTPConnection
from starlette.types import Scope

from framewire.gateway.settings import Settings


def is_queue(scope: Scope, settings: Settings) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"host":
            if value.lower().startswith(b"queue."):
                return True
            break
    server = scope.get("server")
    return settings.queue_port is not None and server is not None and server[1] == settings.queue_port


def base_url(conn: HTTPConnection) -> str:
    """``scheme://host[:port]`` as the client addressed this server."""
    host = conn.headers.get("host")
    if not host:
        server = conn.scope.get("server") or ("localhost", None)
        host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
    scheme = conn.url.scheme
    if scheme in ("ws", "wss"):
        scheme = "https" if scheme == "wss" else "http"
    return f"{scheme}://{host}"


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
