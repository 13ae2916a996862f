"""The server's shared mutable state: draining, the queue stopped, the open realtime sessions.

One :class:`ServerState` per app, created by the composition (:mod:`framewire.gateway.app`)
and handed to the wings that read or change it. Everything else a wing holds is built
before the app exists and does not change identity afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from framewire.engine.api import App


class OpenSession(Protocol):
    """A session the server closes on a drain, a shutdown or a revoked key: a realtime
    WebSocket, a live video session, a raw app socket."""

    @property
    def key_id(self) -> str:
        """The key it was opened with ("" without auth)."""

    @property
    def app(self) -> App: ...

    async def close(self, code: int, reason: str = "") -> None:
        """End it now, with a WebSocket close ``code`` (or its equivalent)."""

    async def shutdown(
        self, code: int, reason: str, *, wait_s: float = 0.0, error: tuple[str, str] | None = None
    ) -> None:
        """End it gracefully: refuse new input, let ``wait_s`` seconds of work come back,
        send ``error`` (code, reason) last, then close with ``code``."""


@dataclass(eq=False)
class ServerState:
    #: Set on the first stop signal (and by the lifespan's shutdown): readiness turns off,
    #: new sessions, runs and queue submits are refused.
    draining: bool = False
    #: Set by the drain once queued jobs will not start before the restart: status streams
    #: of jobs still queued end.
    queue_stopped: bool = False
    #: Sessions open now (added and removed by the realtime, video and socket wings).
    sessions: set[OpenSession] = field(default_factory=set)
