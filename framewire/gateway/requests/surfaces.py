"""Which surface answers an HTTP request, and what the run and queue surfaces share.

fal clients send run and queue calls to the same paths (``POST /{id}``) on two hosts,
``fal.run`` and ``queue.fal.run``. FrameWire picks the queue surface when the Host
header starts with ``queue.`` or the request arrived on the ``--queue-port`` listener
(the ASGI ``server`` entry is the listening socket's address).
"""

from __future__ import annotations

import math

from starlette.requests import HTTPConnection
from starlette.types import Scope

from framewire.gateway.settings import Settings

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
