"""Which surface a request is on, and the URL the client used to reach it.

fal clients send run and queue calls to the same paths (``POST /{id}``) on two hosts,
``fal.run`` and ``queue.fal.run``. FrameWire picks the queue surface when the Host
header starts with ``queue.`` or the request arrived on the ``--queue-port`` listener
(the ASGI ``server`` entry is the listening socket's address). URLs handed back use the
scheme and host the client used, so they work behind TLS terminators and proxies
(uvicorn applies ``X-Forwarded-Proto`` from trusted proxies to the scheme).
"""

from __future__ import annotations

from starlette.requests import HTTPConnection
from starlette.types import Scope

from gateway.settings import Settings


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
