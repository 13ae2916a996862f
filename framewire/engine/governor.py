"""Load measurement and the degradation level: pure, driven by the caller's clock.

:class:`CostModel` learns how long a batch takes from the batches run: ``fixed + rate *
work``, where work is the sum of the app's relative frame costs, fitted by least squares
with exponential forgetting (recent batches weigh most).

:class:`Governor` picks the degradation level of one engine worker from what it measures:

* **Raise** one level when, among targeted frames that arrived since the last change and
  within ``window_s``, the ``quantile`` of latency / target is above ``raise_above``
  (a frame dropped unrun counts as infinitely late), with at least ``min_samples`` frames
  seen and ``settle_s`` passed since the last change (so the last step shows its effect).
* **Lower** one level when, over the last ``hold_s`` at the current level, the lower level
  is predicted to keep both the device time the arriving frames need under ``max_busy``
  and the latency quantile under ``lower_below``. A frame's need is its share of a full
  batch (from the cost model), so the demand measures the offered load whatever size the
  batches happen to be, and counts frames later dropped. The prediction scales demand by
  how much more a frame costs one level down, and latency by that and by the longer
  queue a busier device has (waiting grows as 1 / (1 - load)). The gap between
  ``raise_above`` and ``lower_below`` is the hysteresis that keeps the level from flapping.

With no frames at all the load is nil: the level falls one step per ``hold_s``. From the
top of an N-level ladder, a fall in load is followed within N * ``hold_s`` (plus the gap
to the next frame) by full quality.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


class CostModel:
    """Seconds per batch as ``fixed_s + rate_s * work``, learned online.

    ``half_life`` is how many batches it takes for an observation's weight to halve.
    :meth:`estimate` is None until ``min_batches`` batches were seen.
    """

    def __init__(self, half_life: float = 32.0, min_batches: int = 2) -> None:
        self.decay = 0.5 ** (1.0 / half_life)
        self.min_batches = min_batches
        self.batches = 0
        self._s0 = self._sx = self._sy = self._sxx = self._sxy = 0.0
        self.fixed_s = 0.0
        self.rate_s = 0.0

    def observe(self, work: float, duration_s: float) -> None:
        """One batch of total ``work`` took ``duration_s``."""
        if work <= 0 or duration_s < 0 or not math.isfinite(duration_s):
            return
        d = self.decay
        self._s0 = d * self._s0 + 1.0
        self._sx = d * self._sx + work
        self._sy = d * self._sy + duration_s
        self._sxx = d * self._sxx + work * work
        self._sxy = d * self._sxy + work * duration_s
        self.batches += 1
        self._solve()

    def _solve(self) -> None:
        mean_x, mean_y = self._sx / self._s0, self._sy / self._s0
        var = self._sxx / self._s0 - mean_x * mean_x
        cov = self._sxy / self._s0 - mean_x * mean_y
        if var > 1e-9 * mean_x * mean_x and cov > 0:
            rate = cov / var
            fixed = mean_y - rate * mean_x
            if fixed >= 0:
                self.fixed_s, self.rate_s = fixed, rate
                return
        # Too little spread in batch work to tell a fixed part, or a fit through zero is the
        # best non-negative one: all of the time is per unit of work.
        self.fixed_s, self.rate_s = 0.0, self._sxy / self._sxx

    def estimate(self, work: float) -> float | None:
        """Predicted seconds for a batch of total ``work``, or None while still learning."""
        if self.batches < self.min_batches:
            return None
        return self.fixed_s + self.rate_s * work


@dataclass(frozen=True)
class GovernorSettings:
    """The thresholds of :class:`Governor` (see the module's docstring)."""

    window_s: float = 2.0
    quantile: float = 0.9
    raise_above: float = 0.9
    lower_below: float = 0.7
    max_busy: float = 0.8
    settle_s: float = 0.25
    hold_s: float = 1.0
    min_samples: int = 8
    max_samples: int = 4096

    def __post_init__(self) -> None:
        if not 0 < self.quantile < 1:
            raise ValueError(f"quantile must be in (0, 1), got {self.quantile}")
        if not 0 < self.lower_below < self.raise_above:
            raise ValueError("lower_below must be above 0 and below raise_above (the hysteresis gap)")
        if not 0 < self.max_busy <= 1:
            raise ValueError(f"max_busy must be in (0, 1], got {self.max_busy}")
        if min(self.window_s, self.hold_s) <= 0 or self.settle_s < 0 or self.min_samples < 1:
            raise ValueError("window_s and hold_s must be > 0, settle_s >= 0, min_samples >= 1")


@dataclass(frozen=True, slots=True)
class _Outcome:
    enqueued_s: float
    answered_s: float
    ratio: float  # latency / target; inf for a frame dropped unrun
    level: int


class Governor:
    """The degradation level of one engine worker, 0 (none) to ``levels``."""

    def __init__(self, levels: int, settings: GovernorSettings | None = None) -> None:
        if levels < 1:
            raise ValueError(f"a governor needs at least one level, got {levels}")
        self.levels = levels
        self.settings = settings or GovernorSettings()
        self.level = 0
        self.changed_s = -math.inf
        self.changes = 0
        self._outcomes: deque[_Outcome] = deque(maxlen=self.settings.max_samples)
        self._needs: deque[tuple[float, float]] = deque(maxlen=self.settings.max_samples)

    # -- what happened -----------------------------------------------------------------

    def answered(self, enqueued_s: float, answered_s: float, target_s: float, level: int) -> None:
        """A frame with a latency target was answered."""
        self._outcomes.append(_Outcome(enqueued_s, answered_s, (answered_s - enqueued_s) / target_s, level))

    def dropped(self, enqueued_s: float, now_s: float, level: int) -> None:
        """A frame with a latency target was dropped unrun (superseded by a newer one)."""
        self._outcomes.append(_Outcome(enqueued_s, now_s, math.inf, level))

    def arrived(self, now_s: float, device_s: float) -> None:
        """A frame arrived that needs ``device_s`` of device time (its share of a full batch)."""
        self._needs.append((now_s, device_s))

    # -- deciding ----------------------------------------------------------------------

    def _ratios(self, since_s: float, now_s: float) -> list[float]:
        while self._outcomes and self._outcomes[0].answered_s < now_s - max(
            self.settings.window_s, self.settings.hold_s
        ):
            self._outcomes.popleft()
        return sorted(
            o.ratio
            for o in self._outcomes
            if o.level == self.level and o.enqueued_s >= self.changed_s and o.answered_s >= since_s
        )

    def _quantile(self, ratios: list[float]) -> float:
        if not ratios:
            return 0.0
        return ratios[min(len(ratios) - 1, int(self.settings.quantile * len(ratios)))]

    def demand(self, since_s: float, now_s: float) -> float:
        """Device seconds per second the frames arriving in ``[since_s, now_s]`` need (1: all of it)."""
        if now_s <= since_s:
            return 0.0
        needs = self._needs
        while needs and needs[0][0] < now_s - max(self.settings.window_s, self.settings.hold_s):
            needs.popleft()
        return sum(need for t, need in needs if t >= since_s) / (now_s - since_s)

    def update(self, now_s: float, lower_cost_ratio: Callable[[], float]) -> int:
        """Decide the level at ``now_s``; returns it.

        ``lower_cost_ratio()`` is how much more a frame costs one level down than at the
        current level (>= 1); it is asked only when lowering is considered.
        """
        s = self.settings
        since_change = now_s - self.changed_s
        if self.level < self.levels and since_change >= s.settle_s:
            recent = self._ratios(now_s - s.window_s, now_s)
            if len(recent) >= s.min_samples and self._quantile(recent) > s.raise_above:
                return self._change(self.level + 1, now_s)
        if self.level > 0 and since_change >= s.hold_s:
            scale = max(1.0, lower_cost_ratio())
            demand = min(self.demand(now_s - s.hold_s, now_s), 1.0)
            projected = demand * scale
            if projected < s.max_busy:
                # Waiting grows as 1 / (1 - load) (a single queue): the lower level's frames
                # cost ``scale`` times more and wait longer for the busier device.
                queueing = (1.0 - demand) / (1.0 - projected)
                held = self._ratios(now_s - s.hold_s, now_s)
                if self._quantile(held) * scale * queueing < s.lower_below:
                    return self._change(self.level - 1, now_s)
        return self.level

    def _change(self, level: int, now_s: float) -> int:
        self.level = level
        self.changed_s = now_s
        self.changes += 1
        return level
