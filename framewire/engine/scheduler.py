"""Batch formation: pure data structures, no threads, no clocks of their own.

A :class:`BatchScheduler` serves one endpoint. Realtime sessions each own a bounded
:class:`FrameBuffer` (latest frame wins: when full, the oldest pending frame is dropped
and counted). One-off requests (sync runs, queue jobs) wait in a priority lane behind
the sessions. Frames with different batch keys never share a batch.

Order: earliest deadline first. A frame's deadline is its enqueue time plus its
session's latency target. A session without a target is ordered as if due
:data:`BEST_EFFORT_S` after it started waiting (its oldest frame not yet served or
dropped arrived), so sessions with tight targets go first while they can, and sessions
without one still get a turn at least that often. Equal deadlines go round-robin (a
session served moves to the back). A batch takes frames round by round, one per
session per round (so each session's order is kept), then fills free slots from the
request lane.

When: a batch is due when ``max_batch_size`` frames are pending, when the oldest has
waited ``max_queue_delay_s``, or, given an ``estimate`` of batch durations, when waiting
longer would make the tightest target pending miss.

Size: given an ``estimate``, a batch is cut to the largest size whose predicted end
still meets the deadline of every frame in it that can meet it at all (a frame already
past saving does not shrink the batch).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

_seq = itertools.count()

#: How a session without a latency target is ordered against sessions with one (seconds).
BEST_EFFORT_S = 1.0

#: Predicted seconds to run these frames as one batch, or None when not known yet.
Estimate = Callable[[Sequence["Frame"]], float | None]


@dataclass(eq=False)
class Frame:
    """One pending input and where its result goes.

    ``inp`` and ``batch_key`` are what the frame runs as; ``original`` is the input as
    submitted when a degradation ``level`` replaced it (None otherwise). ``cost`` is the
    app's relative cost of ``inp``. ``prepared`` holds whatever the host made of the
    input ahead of the batch (a future of decoded pixels, a fingerprint).
    """

    inp: Any
    batch_key: Hashable
    enqueued_s: float
    on_result: Callable[[Any], None]
    tag: Any = None
    on_progress: Callable[[Any], None] | None = None
    cancelled: bool = False
    seq: int = field(default_factory=lambda: next(_seq))
    stream: Hashable | None = None
    target_s: float | None = None
    cost: float = 1.0
    original: Any = None
    level: int = 0
    degradation: str = ""
    prepared: Any = None

    @property
    def submitted(self) -> Any:
        """The input as the caller sent it."""
        return self.inp if self.original is None else self.original

    @property
    def deadline_s(self) -> float | None:
        return None if self.target_s is None else self.enqueued_s + self.target_s

    @property
    def order_s(self) -> float:
        """This frame's deadline, or a best-effort one (for ordering, not for reporting)."""
        return self.enqueued_s + (BEST_EFFORT_S if self.target_s is None else self.target_s)


class FrameBuffer:
    """A session's pending frames: at most ``capacity``; a push when full drops the oldest."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.dropped = 0
        self._frames: deque[Frame] = deque()

    def __len__(self) -> int:
        return len(self._frames)

    def __iter__(self) -> Iterator[Frame]:
        return iter(self._frames)

    def __getitem__(self, index: int) -> Frame:
        return self._frames[index]

    def push(self, frame: Frame) -> Frame | None:
        """Append ``frame``; return the frame dropped to make room, if any."""
        dropped = None
        if len(self._frames) >= self.capacity:
            dropped = self._frames.popleft()
            self.dropped += 1
        self._frames.append(frame)
        return dropped

    def head(self) -> Frame:
        return self._frames[0]

    def pop(self) -> Frame:
        return self._frames.popleft()

    def clear(self) -> list[Frame]:
        frames = list(self._frames)
        self._frames.clear()
        return frames


class BatchScheduler:
    """Forms batches for one endpoint from session buffers and a request lane."""

    def __init__(self, max_batch_size: int, max_queue_delay_s: float = 0.0, estimate: Estimate | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.estimate = estimate
        self._buffers: dict[Hashable, FrameBuffer] = {}
        # Rotation order: a session's rank is when it opened or was last served; among equal
        # deadlines lower ranks are served first, so sessions served in a batch move to the back.
        self._rank: dict[Hashable, int] = {}
        self._ranks = itertools.count()
        # Sessions with pending frames: batch formation looks only at these, so its
        # cost follows the frames waiting, not the sessions open.
        self._ready: dict[Hashable, FrameBuffer] = {}
        # When each ready session started waiting (drops do not restart the clock).
        self._waiting: dict[Hashable, float] = {}
        self._requests: list[tuple[int, int, Frame]] = []  # heap of (priority, seq, frame)
        self._pending = 0

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def sessions(self) -> int:
        return len(self._buffers)

    def open(self, stream_id: Hashable, capacity: int) -> FrameBuffer:
        if stream_id in self._buffers:
            raise KeyError(f"stream {stream_id!r} is already open")
        buffer = self._buffers[stream_id] = FrameBuffer(capacity)
        self._rank[stream_id] = next(self._ranks)
        return buffer

    def close(self, stream_id: Hashable) -> list[Frame]:
        """Forget a session; returns its pending frames (never run)."""
        buffer = self._buffers.pop(stream_id, None)
        if buffer is None:
            return []
        del self._rank[stream_id]
        self._ready.pop(stream_id, None)
        self._waiting.pop(stream_id, None)
        frames = buffer.clear()
        self._pending -= len(frames)
        return frames

    def push(self, stream_id: Hashable, frame: Frame) -> Frame | None:
        """Queue a session frame; returns the older frame it displaced, if any."""
        buffer = self._buffers[stream_id]
        dropped = buffer.push(frame)
        if dropped is None:
            self._pending += 1
        self._ready[stream_id] = buffer
        self._waiting.setdefault(stream_id, frame.enqueued_s)
        return dropped

    def push_request(self, frame: Frame, priority: int = 0) -> None:
        """Queue a one-off request; lower ``priority`` values run first."""
        heapq.heappush(self._requests, (priority, frame.seq, frame))
        self._pending += 1

    def remove_request(self, frame: Frame) -> bool:
        """Take a still-queued request out of the lane; False if it already left."""
        for i, item in enumerate(self._requests):
            if item[2] is frame:
                self._requests[i] = self._requests[-1]
                self._requests.pop()
                heapq.heapify(self._requests)
                self._pending -= 1
                return True
        return False

    def session_frames(self) -> Iterator[Frame]:
        """Every pending session frame (not the request lane), e.g. to re-degrade them."""
        for buffer in self._ready.values():
            yield from buffer

    def request_frames(self) -> Iterator[Frame]:
        """Every pending one-off request."""
        for _, _, frame in self._requests:
            yield frame

    def drain(self) -> list[Frame]:
        """Remove and return every pending frame (for shutdown)."""
        frames = [f for buffer in self._buffers.values() for f in buffer.clear()]
        self._ready.clear()
        self._waiting.clear()
        frames += [f for _, _, f in self._requests]
        self._requests.clear()
        self._pending = 0
        return frames

    def _oldest_s(self) -> float | None:
        heads = [buffer.head().enqueued_s for buffer in self._ready.values()]
        heads += [f.enqueued_s for _, _, f in self._requests]
        return min(heads) if heads else None

    def _tightest(self) -> Frame | None:
        """The pending session head with the earliest latency deadline (None: no targets)."""
        best: Frame | None = None
        best_s = math.inf
        for buffer in self._ready.values():
            head = buffer.head()
            deadline = head.deadline_s
            if deadline is not None and deadline < best_s:
                best, best_s = head, deadline
        return best

    def due_in(self, now_s: float) -> float | None:
        """Seconds until a batch is due (0 when due now); None when nothing is pending."""
        if self._pending == 0:
            return None
        if self._pending >= self.max_batch_size or self.max_queue_delay_s <= 0:
            return 0.0
        oldest = self._oldest_s()
        assert oldest is not None
        wait_s = oldest + self.max_queue_delay_s - now_s
        tightest = self._tightest() if self.estimate is not None else None
        if tightest is not None:
            assert self.estimate is not None and tightest.deadline_s is not None
            run_s = self.estimate([tightest] * min(self._pending, self.max_batch_size))
            if run_s is not None:
                wait_s = min(wait_s, tightest.deadline_s - run_s - now_s)
        return max(0.0, wait_s)

    def oldest_s(self) -> float | None:
        """Enqueue time of the oldest pending frame (to choose between schedulers)."""
        return self._oldest_s()

    def _order_s(self, stream_id: Hashable, buffer: FrameBuffer) -> float:
        """The deadline a ready session is ordered by."""
        head = buffer.head()
        deadline = head.deadline_s
        return self._waiting[stream_id] + BEST_EFFORT_S if deadline is None else deadline

    def urgency_s(self) -> float | None:
        """The earliest order deadline among pending frames (to choose between schedulers)."""
        heads = [self._order_s(sid, buffer) for sid, buffer in self._ready.items()]
        if self._requests:
            heads.append(min(f.order_s for _, _, f in self._requests))
        return min(heads) if heads else None

    def next_batch(self, now_s: float) -> list[Frame]:
        """The next batch if one is due, else an empty list."""
        due = self.due_in(now_s)
        if due is None or due > 0:
            return []
        rank = self._rank
        ready = sorted(self._ready.items(), key=lambda item: (self._order_s(*item), rank[item[0]]))
        key: list[Hashable] = []

        def fits(frame: Frame) -> bool:
            if not key:
                key.append(frame.batch_key)
                return True
            return frame.batch_key == key[0]

        # Candidates round by round, looking without taking: each session's share is a
        # prefix of its buffer, so cutting the list's tail keeps every session's order.
        picks: list[tuple[Hashable | None, Frame]] = []
        taken = dict.fromkeys(self._ready, 0)
        active = ready
        while active and len(picks) < self.max_batch_size:
            still = []
            for stream_id, buffer in active:
                if len(picks) >= self.max_batch_size:
                    break
                index = taken[stream_id]
                if index < len(buffer) and fits(buffer[index]):
                    picks.append((stream_id, buffer[index]))
                    taken[stream_id] = index + 1
                    still.append((stream_id, buffer))
            active = still
        skipped: list[tuple[int, int, Frame]] = []
        requests: list[tuple[int, int, Frame]] = []
        while self._requests and len(picks) < self.max_batch_size:
            item = heapq.heappop(self._requests)
            if fits(item[2]):
                picks.append((None, item[2]))
                requests.append(item)
            else:
                skipped.append(item)

        size = self._fit([f for _, f in picks], now_s)
        for item in requests[max(0, size - (len(picks) - len(requests))) :]:
            skipped.append(item)  # cut off by the fit: back into the lane
        for item in skipped:
            heapq.heappush(self._requests, item)

        batch: list[Frame] = []
        served: dict[Hashable, None] = {}  # in order of first service
        for stream_id, frame in picks[:size]:
            if stream_id is not None:
                popped = self._buffers[stream_id].pop()
                assert popped is frame
                served[stream_id] = None
            batch.append(frame)
        for stream_id in served:
            rank[stream_id] = next(self._ranks)
            buffer = self._buffers[stream_id]
            if len(buffer):
                self._waiting[stream_id] = buffer.head().enqueued_s
            else:
                del self._ready[stream_id]
                del self._waiting[stream_id]
        self._pending -= len(batch)
        return batch

    def _fit(self, picks: list[Frame], now_s: float) -> int:
        """How many of ``picks`` (in order) to run so the batch meets the deadlines it can."""
        if self.estimate is None or len(picks) <= 1:
            return len(picks)
        savable: list[float] = []  # deadline of each pick that can still be met alone, else inf
        for frame in picks:
            deadline = frame.deadline_s
            alone = None if deadline is None else self.estimate([frame])
            can = deadline is not None and alone is not None and now_s + alone <= deadline
            savable.append(deadline if can and deadline is not None else math.inf)
        for size in range(len(picks), 1, -1):
            tightest = min(savable[:size])
            if tightest == math.inf:
                return size
            run_s = self.estimate(picks[:size])
            if run_s is None or now_s + run_s <= tightest:
                return size
        return 1
