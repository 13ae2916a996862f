"""Pure bookkeeping for the load generator: percentiles, the measurement window, and
a per-session ledger that classifies every frame it sent.

Nothing here does I/O or reads a clock; times are plain floats (seconds) handed in by
the caller, so every rule can be tested with lists of numbers.

How a frame is classified (each frame sent lands in exactly one class):

- ``ok``: its output came back (latency = receive time - send time).
- ``error``: an ``x-fal-error`` naming its ``request_id`` came back.
- ``dropped``: never answered, but a *later* frame of the same session was. A session's
  outputs come back in order, so the server must have discarded it (latest frame wins
  in its input buffer, or oldest result first in its outbox).
- ``lost``: still unanswered when the run ended, with nothing later answered.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Percentiles reported for every latency distribution.
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of already sorted values, interpolating linearly
    between closest ranks (numpy's default). Raises ``ValueError`` on an empty input."""
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    pos = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    frac = pos - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * frac


def pkey(q: float) -> str:
    """The summary key of a percentile: 50 → ``p50``, 99.9 → ``p99.9``."""
    return f"p{q:g}"


def summarize(values: Iterable[float]) -> dict[str, float]:
    """Count, mean, min, max and :data:`PERCENTILES` of ``values`` (empty → count 0 only)."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0}
    out: dict[str, float] = {
        "count": len(ordered),
        "mean": math.fsum(ordered) / len(ordered),
        "min": ordered[0],
        "max": ordered[-1],
    }
    for q in PERCENTILES:
        out[pkey(q)] = percentile(ordered, q)
    return out


def cdf_points(values: Iterable[float], max_points: int = 400) -> list[tuple[float, float]]:
    """(value, fraction ≤ value) pairs for plotting, thinned to at most ``max_points``
    but always keeping the first and the last (the tail is what a CDF is read for)."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return []
    if n <= max_points:
        indices: Iterable[int] = range(n)
    else:
        step = (n - 1) / (max_points - 1)
        indices = sorted({round(i * step) for i in range(max_points)})
    return [(ordered[i], (i + 1) / n) for i in indices]


@dataclass(frozen=True)
class Window:
    """The phases of one run on the generator's clock: warm-up, then the measured window.

    Frames sent before ``start_s`` warm the server up and are not reported; frames sent
    in ``[start_s, end_s)`` are; nothing is sent after ``end_s``.
    """

    warmup_start_s: float
    start_s: float
    end_s: float

    @classmethod
    def after(cls, t0_s: float, warmup_s: float, window_s: float) -> Window:
        if warmup_s < 0 or window_s <= 0:
            raise ValueError(f"need warmup_s >= 0 and window_s > 0, got {warmup_s} and {window_s}")
        return cls(t0_s, t0_s + warmup_s, t0_s + warmup_s + window_s)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def measured(self, t_s: float) -> bool:
        return self.start_s <= t_s < self.end_s

    def sending(self, t_s: float) -> bool:
        return t_s < self.end_s


@dataclass(slots=True)
class _Sent:
    rid: int
    sent_s: float
    measured: bool


@dataclass
class Tally:
    """What happened to the measured frames of one or more sessions."""

    sent: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    dropped: int = 0
    lost: int = 0
    bad_outputs: int = 0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def add(self, other: Tally) -> None:
        self.sent += other.sent
        self.ok += other.ok
        self.errors.update(other.errors)
        self.dropped += other.dropped
        self.lost += other.lost
        self.bad_outputs += other.bad_outputs

    def balanced(self) -> bool:
        """Every measured frame sent is in exactly one class."""
        return self.sent == self.ok + self.error_count + self.dropped + self.lost + self.bad_outputs

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "ok": self.ok,
            "errors": dict(self.errors),
            "dropped": self.dropped,
            "lost": self.lost,
            "bad_outputs": self.bad_outputs,
        }


@dataclass(frozen=True)
class Answer:
    """The outcome of one reply for the frame it answers."""

    latency_s: float
    measured: bool
    dropped_before: int  # earlier frames of the session the server discarded


class SessionLedger:
    """The frames one session has in flight, oldest first, and the tally of their fates.

    ``request_id`` values must increase within a session (the generator numbers its
    frames 1, 2, 3, ...): an answer for frame *k* proves every earlier frame still
    pending was dropped by the server.
    """

    def __init__(self, window: Window) -> None:
        self.window = window
        self.tally = Tally()
        self._pending: deque[_Sent] = deque()
        self._last_rid = 0

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def sent(self, rid: int, t_s: float) -> None:
        if rid <= self._last_rid:
            raise ValueError(f"request ids must increase within a session: {rid} after {self._last_rid}")
        self._last_rid = rid
        measured = self.window.measured(t_s)
        if measured:
            self.tally.sent += 1
        self._pending.append(_Sent(rid, t_s, measured))

    def _settle_earlier(self, rid: int) -> int:
        dropped = 0
        while self._pending and self._pending[0].rid < rid:
            earlier = self._pending.popleft()
            dropped += 1
            if earlier.measured:
                self.tally.dropped += 1
        return dropped

    def answered(self, rid: int, t_s: float, *, valid: bool = True) -> Answer | None:
        """Record the output for ``rid`` (received at ``t_s``); None if it was not pending
        (a duplicate, or an id this session never sent)."""
        if not self._pending or rid < self._pending[0].rid or rid > self._last_rid:
            return None
        dropped = self._settle_earlier(rid)
        if not self._pending or self._pending[0].rid != rid:
            return None
        frame = self._pending.popleft()
        if frame.measured:
            if valid:
                self.tally.ok += 1
            else:
                self.tally.bad_outputs += 1
        return Answer(t_s - frame.sent_s, frame.measured, dropped)

    def failed(self, rid: int, code: str) -> bool:
        """Record an ``x-fal-error`` for ``rid``. Errors may overtake outputs of earlier
        frames still in the engine, so nothing earlier is settled. False if not pending."""
        for i, frame in enumerate(self._pending):
            if frame.rid == rid:
                del self._pending[i]
                if frame.measured:
                    self.tally.errors[code] += 1
                return True
        return False

    def finish(self) -> Tally:
        """End of run: whatever is still pending was lost."""
        while self._pending:
            frame = self._pending.popleft()
            if frame.measured:
                self.tally.lost += 1
        return self.tally


def numeric_timings(output: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of an output's ``timings`` map (server-side, milliseconds by
    the ``_ms`` convention; ``batch_size`` is a count)."""
    timings = output.get("timings")
    if not isinstance(timings, Mapping):
        return {}
    return {str(k): float(v) for k, v in timings.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator
