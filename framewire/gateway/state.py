"""The server's shared mutable state: draining, the queue stopped, the open realtime sessions.

One :class:`ServerState` per app, created by the composition (:mod:`framewire.gateway.app`)
and handed to the wings that read or change it. Everything else a wing holds is built
before the app exists and does not change identity afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from framewire.gateway.realtime.session import RealtimeSession


@dataclass(eq=False)
class ServerState:
    #: Set on the first stop signal (and by the lifespan's shutdown): readiness turns off,
    #: new sessions, runs and queue submits are refused.
    draining: bool = False
    #: Set by the drain once queued jobs will not start before the restart: status streams
    #: of jobs still queued end.
    queue_stopped: bool = False
    #: Realtime sessions open now (added and removed by the realtime endpoint).
    sessions: set[RealtimeSession] = field(default_factory=set)
