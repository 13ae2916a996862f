"""What one engine worker runs next, and how: pure, driven by the caller's clock and lock.

A :class:`Planner` owns the batch schedulers of one app's endpoints, the state of its
realtime streams (latency target, similarity threshold, the last output's fingerprint),
a cost model per endpoint and, when an endpoint declares a degradation ladder, the
:class:`framewire.engine.governor.Governor` that sets the level.

Every realtime frame is *resolved* when pushed: the current level is applied to it
(:meth:`framewire.engine.api.App.degrade`), which sets what it runs as, its batch key and
its cost. When the level changes, the frames still pending are resolved again, so a
batch never mixes levels by accident. One-off requests (sync runs, queue jobs) always run
as sent: their callers asked for a result, not for a frame in time.

The host (:mod:`framewire.engine.host`) calls this under its lock; tests drive it with a
simulated clock and a cost model, without threads.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from framewire.engine.api import Endpoint
from framewire.engine.fingerprint import Fingerprint
from framewire.engine.governor import CostModel, Governor, GovernorSettings
from framewire.engine.scheduler import BatchScheduler, Frame, FrameBuffer

#: Recent inputs the governor's cost ratio between levels is estimated from.
RECENT_INPUTS = 32


@dataclass(eq=False)
class Remembered:
    """A stream's last output that ran, to answer unchanged frames with."""

    fingerprint: Fingerprint
    level: int
    degradation: str
    output: Any  # whatever the host keeps to answer with


@dataclass(eq=False)
class StreamState:
    """The planner's side of one realtime stream."""

    endpoint: Endpoint
    buffer: FrameBuffer
    target_s: float | None
    similarity: float
    last: Remembered | None = None


class Planner:
    """Batches, degradation and skips for the endpoints of one app (one engine worker)."""

    def __init__(
        self,
        endpoints: Iterable[Endpoint],
        *,
        max_batch_size_cap: int | None = None,
        queue_delay_override_ms: float | None = None,
        governor: GovernorSettings | None = None,
        update_interval_s: float = 0.05,
    ) -> None:
        self.schedulers: dict[Endpoint, BatchScheduler] = {}
        self.costs: dict[Endpoint, CostModel] = {}
        self.ladders: dict[Endpoint, int] = {}
        for ep in endpoints:
            delay_ms = ep.spec.max_queue_delay_ms if queue_delay_override_ms is None else queue_delay_override_ms
            batch = ep.max_batch_size if max_batch_size_cap is None else min(ep.max_batch_size, max_batch_size_cap)
            cost = self.costs[ep] = CostModel()
            self.schedulers[ep] = BatchScheduler(batch, delay_ms / 1000.0, _estimator(cost))
            self.ladders[ep] = len(ep.app.degradation(ep.spec.path)) if ep.spec.realtime else 0
        levels = max(self.ladders.values(), default=0)
        self.governor = Governor(levels, governor) if levels else None
        self.streams: dict[Hashable, StreamState] = {}
        self.update_interval_s = update_interval_s
        self._updated_s = -math.inf
        self._recent: deque[tuple[Endpoint, Any]] = deque(maxlen=RECENT_INPUTS)
        self._ratio: tuple[int, float, float] | None = None  # (level, computed at, ratio)

    @property
    def level(self) -> int:
        return 0 if self.governor is None else self.governor.level

    # -- streams -------------------------------------------------------------------------

    def open(
        self,
        endpoint: Endpoint,
        stream_id: Hashable,
        capacity: int,
        *,
        target_latency_ms: float | None = None,
        similarity_threshold: float = 0.0,
    ) -> StreamState:
        if target_latency_ms is None:
            target_latency_ms = endpoint.spec.target_latency_ms
        buffer = self.schedulers[endpoint].open(stream_id, capacity)
        state = StreamState(
            endpoint,
            buffer,
            None if target_latency_ms is None else target_latency_ms / 1000.0,
            similarity_threshold,
        )
        self.streams[stream_id] = state
        return state

    def close(self, stream_id: Hashable) -> list[Frame]:
        """Forget a stream; returns its pending frames (never run)."""
        state = self.streams.pop(stream_id, None)
        if state is None:
            return []
        return self.schedulers[state.endpoint].close(stream_id)

    # -- frames in -----------------------------------------------------------------------

    def push(self, stream_id: Hashable, frame: Frame, now_s: float) -> Frame | None:
        """Queue a stream's frame at the current level; returns the older frame it displaced."""
        state = self.streams[stream_id]
        frame.stream = stream_id
        frame.target_s = state.target_s
        self._resolve(state.endpoint, frame, self._level_for(state.endpoint))
        self._recent.append((state.endpoint, frame.submitted))
        if self.governor is not None:
            need = self._need(state.endpoint, frame)
            if need is not None:
                self.governor.arrived(now_s, need)
        dropped = self.schedulers[state.endpoint].push(stream_id, frame)
        if dropped is not None and dropped.target_s is not None and self.governor is not None:
            self.governor.dropped(dropped.enqueued_s, now_s, dropped.level)
        return dropped

    def push_request(self, endpoint: Endpoint, frame: Frame, priority: int = 0) -> None:
        """Queue a one-off request, as sent."""
        self._resolve(endpoint, frame, 0)
        self.schedulers[endpoint].push_request(frame, priority)

    def remove_request(self, endpoint: Endpoint, frame: Frame) -> bool:
        return self.schedulers[endpoint].remove_request(frame)

    def pending(self) -> int:
        return sum(s.pending for s in self.schedulers.values())

    def pending_frames(self) -> list[tuple[Endpoint, Frame]]:
        """Every pending frame with its endpoint, most urgent first."""
        found = [(ep, f) for ep, s in self.schedulers.items() for f in s.session_frames()]
        found += [(ep, f) for ep, s in self.schedulers.items() for f in s.request_frames()]
        found.sort(key=lambda item: item[1].order_s)
        return found

    def drain(self) -> list[Frame]:
        return [f for s in self.schedulers.values() for f in s.drain()]

    # -- batches out ---------------------------------------------------------------------

    def next(self, now_s: float) -> tuple[Endpoint, list[Frame]] | float | None:
        """The next batch if one is due; else seconds until one is (None: nothing pending)."""
        self._govern(now_s)
        best: tuple[float, Endpoint] | None = None
        wait_s: float | None = None
        for ep, sched in self.schedulers.items():
            due = sched.due_in(now_s)
            if due is None:
                continue
            if due == 0:
                urgency = sched.urgency_s()
                assert urgency is not None
                if best is None or urgency < best[0]:
                    best = (urgency, ep)
            elif wait_s is None or due < wait_s:
                wait_s = due
        if best is not None:
            return best[1], self.schedulers[best[1]].next_batch(now_s)
        return wait_s

    def ran(self, endpoint: Endpoint, frames: list[Frame], started_s: float, finished_s: float) -> None:
        """``frames`` of ``endpoint`` ran as one batch on the device from ``started_s`` to ``finished_s``."""
        if frames:
            self.costs[endpoint].observe(sum(f.cost for f in frames), finished_s - started_s)

    def answered(self, frame: Frame, now_s: float) -> None:
        """A frame's result is ready (for the governor's latency measure)."""
        if self.governor is not None and frame.stream is not None and frame.target_s is not None:
            self.governor.answered(frame.enqueued_s, now_s, frame.target_s, frame.level)

    # -- unchanged frames ----------------------------------------------------------------

    def likeness(self, frame: Frame, fingerprint: Fingerprint) -> tuple[Remembered, str] | None:
        """The stream's last output and ``"exact"`` / ``"similar"`` when ``frame`` may be answered with it."""
        state = self.streams.get(frame.stream) if frame.stream is not None else None
        last = None if state is None else state.last
        if state is None or last is None or (last.level, last.degradation) != (frame.level, frame.degradation):
            return None
        kind = fingerprint.likeness(last.fingerprint, state.similarity)
        return None if kind is None else (last, kind)

    def remember(self, frame: Frame, fingerprint: Fingerprint, output: Any) -> None:
        """``frame`` ran: later frames of its stream like it may be answered with ``output``."""
        state = self.streams.get(frame.stream) if frame.stream is not None else None
        if state is not None:
            state.last = Remembered(fingerprint, frame.level, frame.degradation, output)

    # -- degradation ---------------------------------------------------------------------

    def _need(self, endpoint: Endpoint, frame: Frame) -> float | None:
        """Device seconds ``frame`` needs as one of a full batch (None: the cost model is still learning)."""
        cost = self.costs[endpoint]
        if cost.estimate(frame.cost) is None:
            return None
        return cost.rate_s * frame.cost + cost.fixed_s / self.schedulers[endpoint].max_batch_size

    def _level_for(self, endpoint: Endpoint) -> int:
        return min(self.level, self.ladders[endpoint])

    def _resolve(self, endpoint: Endpoint, frame: Frame, level: int) -> None:
        app, path = endpoint.app, endpoint.spec.path
        original = frame.submitted
        degraded = app.degrade(path, original, level) if level > 0 else None
        if degraded is None:
            frame.inp, frame.original, frame.level, frame.degradation = original, None, 0, ""
        else:
            frame.inp, frame.original, frame.level, frame.degradation = degraded.input, original, level, degraded.note
        frame.batch_key = app.batch_key(path, frame.inp)
        frame.cost = app.frame_cost(path, frame.inp)

    def _govern(self, now_s: float) -> None:
        governor = self.governor
        if governor is None or now_s - self._updated_s < self.update_interval_s:
            return
        self._updated_s = now_s
        before = governor.level
        if governor.update(now_s, lambda: self._lower_cost_ratio(now_s)) != before:
            self._ratio = None
            for ep, sched in self.schedulers.items():
                level = self._level_for(ep)
                for frame in sched.session_frames():
                    self._resolve(ep, frame, level)

    def _lower_cost_ratio(self, now_s: float) -> float:
        """Cost of recent inputs one level below the current one over their cost at it."""
        level = self.level
        cached = self._ratio
        if cached is not None and cached[0] == level and now_s - cached[1] < 0.25:
            return cached[2]
        here = lower = 0.0
        for ep, inp in self._recent:
            cap = self.ladders[ep]
            here += self._cost_at(ep, inp, min(level, cap))
            lower += self._cost_at(ep, inp, min(level - 1, cap))
        ratio = lower / here if here > 0 else 1.0
        self._ratio = (level, now_s, ratio)
        return ratio

    @staticmethod
    def _cost_at(endpoint: Endpoint, inp: Any, level: int) -> float:
        app, path = endpoint.app, endpoint.spec.path
        degraded = app.degrade(path, inp, level) if level > 0 else None
        return app.frame_cost(path, inp if degraded is None else degraded.input)


def _estimator(cost: CostModel) -> Any:
    def estimate(frames: Any) -> float | None:
        return cost.estimate(sum(f.cost for f in frames))

    return estimate
