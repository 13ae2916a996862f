"""Graceful drain on SIGTERM/SIGINT, bounded by ``--shutdown-timeout-s``.

On the first signal, while the listeners stay open:

1. ``/ready`` answers 503 (``draining: true``) so load balancers stop sending work;
   new realtime sessions are refused (``ENGINE_UNAVAILABLE``, close 1013, with
   ``retry_after_ms``) and new runs and queue submits get 503 with ``Retry-After``.
2. Open realtime sessions stop taking frames, get the outputs of frames the engine
   already has, then close with **1001** (going away); the client reconnects elsewhere.
3. The queue stops claiming jobs; jobs already running finish and record their
   results; queued jobs stay in the store for the next start. Status streams of jobs
   still queued end (the job is not lost: poll it again after the restart).
4. Then uvicorn's own shutdown runs with what is left of the timeout: listeners close,
   in-flight HTTP requests (sync runs, streams) finish, and the lifespan stops the
   engine (finishing its current batch), flushes usage and closes the store.

A second signal skips the wait (uvicorn's force exit). Like uvicorn, the process then
re-raises the signal, so it ends as killed by SIGTERM (exit status 143 in a container).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn
from sse_starlette.sse import AppStatus

from framewire.gateway.realtime.protocol import CloseCode
from framewire.gateway.requests.dispatcher import Dispatcher
from framewire.gateway.state import ServerState

log = logging.getLogger("framewire.drain")

#: Part of the timeout left for uvicorn's shutdown and the lifespan (engine stop, usage flush).
RESERVE_S = 2.0


async def drain(state: ServerState, dispatcher: Dispatcher, timeout_s: float) -> None:
    """Steps 1-3 of the module docstring; returns within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    state.draining = True
    sessions = list(state.sessions)
    log.info("draining: %d realtime sessions open, readiness off", len(sessions))
    wait_s = max(0.0, timeout_s / 2)
    closing = [
        asyncio.create_task(s.shutdown(CloseCode.GOING_AWAY, "server shutting down; reconnect", wait_s=wait_s))
        for s in sessions
    ]
    stopping = asyncio.create_task(dispatcher.stop(max(0.1, timeout_s - RESERVE_S)))
    done, pending = await asyncio.wait([*closing, stopping], timeout=max(0.1, deadline - time.monotonic()))
    for task in pending:
        task.cancel()
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.error("drain step failed", exc_info=task.exception())
    state.queue_stopped = True  # status streams of jobs that stay queued end now
    log.info("drained in %.2f s", timeout_s - max(0.0, deadline - time.monotonic()))


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain between the first signal and the shutdown.

    ``drain(timeout_s)`` is the app's (:meth:`framewire.gateway.app.Gateway.drain`): it
    must return within ``timeout_s``.
    """

    def __init__(self, config: uvicorn.Config, drain: Callable[[float], Awaitable[None]], timeout_s: float) -> None:
        super().__init__(config)
        # sse-starlette ends every event stream as soon as uvicorn begins its shutdown, which
        # would cut streamed runs that step 4 lets finish: streams here end on their own
        # (queued jobs' status streams in step 3), or all at once on a second signal.
        AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]
        self.drain = drain
        self.timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None
        self._signalled = False

    async def startup(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._signalled or self._loop is None or not self.started:
            if self._signalled:  # a second signal: stop waiting
                self.force_exit = True
                AppStatus.should_exit = True  # and end the event streams still open
            super().handle_exit(sig, frame)
            return
        self._signalled = True
        self._captured_signals.append(sig)  # re-raised after shutdown, as uvicorn does
        self._loop.call_soon_threadsafe(self._begin)

    def _begin(self) -> None:
        self._drain = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        started = time.monotonic()
        try:
            await self.drain(max(0.1, self.timeout_s - RESERVE_S))
        finally:
            left = self.timeout_s - (time.monotonic() - started)
            self.config.timeout_graceful_shutdown = max(1, int(left))
            self.should_exit = True
