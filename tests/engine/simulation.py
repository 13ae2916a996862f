"""A discrete-event simulation of one engine worker: the real :class:`Planner`, a simulated
clock, sessions sending frames at fixed rates, and a device whose batch time follows the
cost model of :mod:`framewire.bench.fake_engine` (whose apps it runs, without calling
their handlers). No threads, no sleeps: a minute of load runs in well under a second."""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from framewire.bench.fake_engine import LadderSteps, StepsInput, batch_ms
from framewire.engine.api import App
from framewire.engine.governor import GovernorSettings
from framewire.engine.planner import Planner
from framewire.engine.scheduler import Frame


@dataclass
class Load:
    """``sessions`` sending at ``fps`` each from ``start_s`` to ``end_s``, with a target."""

    sessions: int
    fps: float
    start_s: float = 0.0
    end_s: float = 30.0
    target_ms: float | None = 100.0
    steps: int = 4
    first_session: int = 0


@dataclass
class Record:
    session: int
    sent_s: float
    target_ms: float | None
    answered_s: float | None = None
    level: int = 0
    steps: int = 0
    dropped: bool = False

    @property
    def latency_ms(self) -> float | None:
        return None if self.answered_s is None else (self.answered_s - self.sent_s) * 1000.0

    @property
    def met(self) -> bool:
        latency = self.latency_ms
        return latency is not None and self.target_ms is not None and latency <= self.target_ms


@dataclass
class Outcome:
    records: list[Record]
    levels: list[tuple[float, int]]  # (time, level) at every change
    batches: list[tuple[float, float, int, int]]  # (start, end, size, steps)
    planner: Planner = field(repr=False)

    def within(self, start_s: float, end_s: float, sessions: set[int] | None = None) -> list[Record]:
        return [
            r
            for r in self.records
            if start_s <= r.sent_s < end_s and (sessions is None or r.session in sessions) and r.target_ms is not None
        ]

    def met_share(self, start_s: float, end_s: float, sessions: set[int] | None = None) -> float:
        """Share of the frames sent in the interval answered within their target (drops count as misses)."""
        found = self.within(start_s, end_s, sessions)
        return sum(r.met for r in found) / len(found)

    def level_at(self, t_s: float) -> int:
        level = 0
        for when, value in self.levels:
            if when <= t_s:
                level = value
        return level

    def level_counts(self, start_s: float, end_s: float) -> Counter[int]:
        return Counter(r.level for r in self.within(start_s, end_s) if r.answered_s is not None)


def simulate(
    loads: list[Load],
    *,
    app: App | None = None,
    governor: GovernorSettings | None = None,
    seed: int = 0,
    capacity: int = 2,
    on_batch: Callable[[float, list[Frame]], None] | None = None,
) -> Outcome:
    """Run the loads through a planner and a simulated device; every frame is accounted for."""
    app = app or LadderSteps()
    (endpoint,) = app.endpoints().values()
    planner = Planner([endpoint], governor=governor)
    rng = random.Random(seed)
    records: list[Record] = []
    arrivals: list[tuple[float, int, int, Load]] = []  # (time, order, session, load)
    order = 0
    for load in loads:
        for i in range(load.sessions):
            session = load.first_session + i
            planner.open(endpoint, session, capacity, target_latency_ms=load.target_ms)
            t = load.start_s + rng.uniform(0, 1 / load.fps)
            heapq.heappush(arrivals, (t, order, session, load))
            order += 1
    by_frame: dict[int, Record] = {}
    levels: list[tuple[float, int]] = []
    batches: list[tuple[float, float, int, int]] = []
    now = 0.0
    busy_until = 0.0
    end_s = max(load.end_s for load in loads) + 2.0
    running: tuple[float, list[Frame]] | None = None

    def answer(frames: list[Frame], t_s: float) -> None:
        for frame in frames:
            rec = by_frame[frame.seq]
            rec.answered_s = t_s
            rec.level = frame.level
            rec.steps = frame.inp.num_inference_steps
            planner.answered(frame, t_s)

    while True:
        if running is None:
            before = planner.level
            found = planner.next(now)
            if planner.level != before:
                levels.append((now, planner.level))
            if isinstance(found, tuple):
                _, frames = found
                steps = frames[0].inp.num_inference_steps
                running = (now, frames)
                busy_until = now + batch_ms(steps, len(frames)) / 1000.0
                batches.append((now, busy_until, len(frames), steps))
                if on_batch is not None:
                    on_batch(now, frames)
                continue
            t_wake = math.inf if found is None else now + max(found, 1e-6)
        else:
            t_wake = math.inf
        t_done = busy_until if running is not None else math.inf
        t_arrival = arrivals[0][0] if arrivals else math.inf
        now = min(t_done, t_arrival, t_wake)
        if now > end_s:
            break
        if now == t_done and running is not None:
            started, frames = running
            running = None
            planner.ran(endpoint, frames, started, now)
            answer(frames, now)
        elif now == t_arrival:
            _, _, session, load = heapq.heappop(arrivals)
            frame = Frame(StepsInput(num_inference_steps=load.steps), None, now, lambda r: None, tag=session)
            rec = Record(session, now, load.target_ms)
            records.append(rec)
            by_frame[frame.seq] = rec
            dropped = planner.push(session, frame, now)
            if dropped is not None:
                by_frame[dropped.seq].dropped = True
            if now + 1 / load.fps < load.end_s:
                heapq.heappush(arrivals, (now + 1 / load.fps, order, session, load))
                order += 1
    return Outcome(records, levels, batches, planner)
