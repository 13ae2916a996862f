"""One place the surfaces report what happened: usage (billing), metrics, per-key limits.

Surfaces call :meth:`Meter.request` when an HTTP request or queue job ends and hand each
realtime session a :class:`SessionMeter`; both feed :mod:`framewire.gateway.platform.usage` and
:mod:`framewire.gateway.platform.metrics`. Everything here is O(1) and runs on the event loop.

A realtime frame ends exactly once, as one of: an output (``ok``), an engine error for
it (its code), an error before it reached the engine (``validation_error``,
``rate_limited``, ...), or ``dropped`` (superseded by a newer frame, or pending when the
session closed). Usage counts each received frame once, so a session's usage requests
equal the frames it sent.

Sessions that hold resources while open (video sessions, raw sockets) are also charged
the seconds they stay open, through a :class:`SessionClock` that records them as they go
(every :data:`SESSION_TICK_S`, and the rest when the session ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from framewire.engine.api import FrameResult
from framewire.gateway.platform.auth import Principal
from framewire.gateway.platform.limits import Limiter
from framewire.gateway.platform.metrics import Metrics
from framewire.gateway.platform.usage import UsageMeter, count_outputs

#: How often an open session's seconds are recorded (so a crash loses at most this much).
SESSION_TICK_S = 10.0


def status_of(code: str | None) -> str:
    """The usage status of an outcome: ``ok`` or the error code in lower case."""
    return "ok" if code is None else code.lower()


class Meter:
    def __init__(self, usage: UsageMeter, metrics: Metrics, limiter: Limiter) -> None:
        self.usage = usage
        self.metrics = metrics
        self.limiter = limiter
        # Label children by label values: ``labels()`` costs microseconds, a dict lookup does not.
        self._counts: dict[tuple[str, str, str], Any] = {}
        self._durations: dict[tuple[str, str], Any] = {}

    def request(
        self,
        key_id: str,
        app: str,
        surface: str,
        *,
        error_code: str | None = None,
        outputs: int = 0,
        compute_ms: float = 0.0,
        duration_s: float | None = None,
    ) -> None:
        """One HTTP request or queue job finished (``error_code`` None when it succeeded)."""
        status = status_of(error_code)
        self.usage.record(key_id, app, surface, status, outputs=outputs, compute_ms=compute_ms)
        labels = (app, surface, "ok" if error_code is None else "error")
        counter = self._counts.get(labels)
        if counter is None:
            counter = self._counts[labels] = self.metrics.requests.labels(*labels)
        counter.inc()
        if duration_s is not None:
            histogram = self._durations.get(labels[:2])
            if histogram is None:
                histogram = self._durations[labels[:2]] = self.metrics.request_duration.labels(app, surface)
            histogram.observe(duration_s)

    def result(
        self, principal: Principal, app: str, surface: str, result: FrameResult, started_s: float | None = None
    ) -> None:
        """:meth:`request` for an engine result (compute shared by the batch; ``started_s`` is perf_counter)."""
        self.request(
            principal.key_id,
            app,
            surface,
            error_code=None if result.error is None else result.error.code,
            outputs=count_outputs(result.output),
            compute_ms=result.inference_ms / max(1, result.batch_size),
            duration_s=None if started_s is None else time.perf_counter() - started_s,
        )

    async def rate_limited(self, principal: Principal, app: str, surface: str) -> float | None:
        """Charge one request to the key; seconds to wait when over its limit (recorded), else None."""
        wait_s = await self.limiter.request(principal)
        if wait_s is not None:
            self.metrics.rate_limited.labels("requests").inc()
            self.request(principal.key_id, app, surface, error_code="RATE_LIMITED")
        return wait_s

    def session(self, principal: Principal, app: str, surface: str = "realtime") -> SessionMeter:
        return SessionMeter(self, principal, app, surface)


class SessionMeter:
    """What one session reports (a realtime WebSocket, a video session, a raw socket);
    label children are bound once per session."""

    def __init__(self, meter: Meter, principal: Principal, app: str, surface: str = "realtime") -> None:
        self.meter = meter
        self.principal = principal
        self.key_id = principal.key_id
        self.app = app
        self.surface = surface
        m = meter.metrics
        self._received = m.frames_received.labels(app)
        self._sent = m.frames_sent.labels(app)
        self._ok = m.requests.labels(app, surface, "ok")
        self._failed = m.requests.labels(app, surface, "error")
        self._latency = m.request_duration.labels(app, surface)
        self._limited = m.rate_limited.labels("frames")
        self._record = meter.usage.record
        self._children: dict[tuple[int, str], Any] = {}  # (metric, label) → child, bound on first use

    def received(self) -> None:
        self._received.inc()

    def admit(self) -> float | None:
        """Charge one frame to the key; seconds until the next is allowed when over its limit."""
        wait_s = self.meter.limiter.frame(self.principal)
        if wait_s is not None:
            self._limited.inc()
        return wait_s

    def result(self, result: FrameResult, latency_s: float) -> None:
        """The engine answered one frame (output or error)."""
        error = result.error
        self._record(
            self.key_id,
            self.app,
            self.surface,
            status_of(None if error is None else error.code),
            outputs=count_outputs(result.output),
            compute_ms=result.inference_ms / max(1, result.batch_size),
        )
        if error is None:
            self._ok.inc()
            self._sent.inc()
            if result.degraded:
                self._count(self.meter.metrics.degraded_frames, str(result.degraded))
            if result.skipped:
                self._count(self.meter.metrics.skipped_frames, result.skipped)
        else:
            self._failed.inc()
            self.meter.metrics.realtime_errors.labels(self.app, error.code).inc()
        met = result.target_met
        if met is not None:
            self._count(self.meter.metrics.target_frames, "met" if met else "missed")
        self._latency.observe(latency_s)

    def _count(self, counter: Any, label: str) -> None:
        """One more on ``counter`` for this app and ``label``."""
        child = self._children.get((id(counter), label))
        if child is None:
            child = self._children[(id(counter), label)] = counter.labels(self.app, label)
        child.inc()

    def frame_error(self, code: str) -> None:
        """A frame refused before it reached the engine (bad msgpack, validation, rate limit, ...)."""
        self._record(self.key_id, self.app, self.surface, status_of(code))
        self._failed.inc()
        self.meter.metrics.realtime_errors.labels(self.app, code).inc()

    def session_error(self, code: str) -> None:
        """An ``x-fal-error`` that is not one frame's outcome (``TIMEOUT``, a failed output store)."""
        self.meter.metrics.realtime_errors.labels(self.app, code).inc()

    def dropped(self, count: int, reason: str) -> None:
        """Frames that never ran: ``superseded`` by newer ones, or pending when the session ``closed``."""
        if count:
            self._record(self.key_id, self.app, self.surface, "dropped", count=count)
            self.meter.metrics.frames_dropped.labels(self.app, reason).inc(count)

    def output_dropped(self) -> None:
        """An output the client did not read in time (already metered as a result)."""
        self.meter.metrics.frames_dropped.labels(self.app, "outbox").inc()

    def message(self) -> None:
        """One message a raw socket's client sent (a request in usage, no outputs)."""
        self._received.inc()
        self._record(self.key_id, self.app, self.surface, "ok")

    def open_for(self, seconds: float) -> None:
        """The session was open ``seconds`` more (no request counted)."""
        if seconds > 0:
            self._record(self.key_id, self.app, self.surface, "ok", count=0, session_s=seconds)


class SessionClock:
    """Charges a session the seconds it is open: every ``tick_s`` while it runs, the rest at :meth:`stop`."""

    def __init__(self, meter: SessionMeter, tick_s: float = SESSION_TICK_S) -> None:
        self.meter = meter
        self.tick_s = tick_s
        self.opened_s = time.monotonic()
        self._charged_s = self.opened_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="session-clock")

    def _charge(self) -> None:
        now = time.monotonic()
        self.meter.open_for(now - self._charged_s)
        self._charged_s = now

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            self._charge()

    async def stop(self) -> float:
        """Stop the clock, charge what is left; returns the seconds the session was open."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._charge()
        return self._charged_s - self.opened_s


class NullSessionMeter(SessionMeter):
    """For sessions built outside the app (tests of the session alone): reports nothing."""

    def __init__(self) -> None:
        self.key_id = ""
        self.app = ""
        self.surface = ""

    def received(self) -> None:
        pass

    def admit(self) -> float | None:
        return None

    def result(self, result: FrameResult, latency_s: float) -> None:
        pass

    def frame_error(self, code: str) -> None:
        pass

    def session_error(self, code: str) -> None:
        pass

    def dropped(self, count: int, reason: str) -> None:
        pass

    def output_dropped(self) -> None:
        pass

    def message(self) -> None:
        pass

    def open_for(self, seconds: float) -> None:
        pass
