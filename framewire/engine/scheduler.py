"""Batch formation: pure data structures, no threads, no clocks of their own.

A :class:`BatchScheduler` serves one endpoint. Realtime sessions each own a bounded
:class:`FrameBuffer` (latest frame wins: when full, the oldest pending frame is dropped
and counted). One-off requests (sync runs, queue jobs) wait in a priority lane behind
the sessions. A batch is due when ``max_batch_size`` frames are pending or the oldest
pending frame has waited ``max_queue_delay_s``; it takes frames round-robin across
sessions (one per session per round, oldest first, so each session's order is kept),
then fills free slots from the request lane. Frames with different batch keys never
share a batch.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

_seq = itertools.count()


@dataclass(eq=False)
class Frame:
    """One pending input and where its result goes."""

    inp: Any
    batch_key: Hashable
    enqueued_s: float
    on_result: Callable[[Any], None]
    tag: Any = None
    on_progress: Callable[[Any], None] | None = None
    cancelled: bool = False
    seq: int = field(default_factory=lambda: next(_seq))


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

    def __init__(self, max_batch_size: int, max_queue_delay_s: float = 0.0) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self._buffers: dict[Hashable, FrameBuffer] = {}
        # Rotation order: a session's rank is when it opened or was last served; lower
        # ranks are served first, so sessions served in a batch move to the back.
        self._rank: dict[Hashable, int] = {}
        self._ranks = itertools.count()
        # Sessions with pending frames: batch formation looks only at these, so its
        # cost follows the frames waiting, not the sessions open.
        self._ready: dict[Hashable, FrameBuffer] = {}
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

    def drain(self) -> list[Frame]:
        """Remove and return every pending frame (for shutdown)."""
        frames = [f for buffer in self._buffers.values() for f in buffer.clear()]
        self._ready.clear()
        frames += [f for _, _, f in self._requests]
        self._requests.clear()
        self._pending = 0
        return frames

    def _oldest_s(self) -> float | None:
        heads = [buffer.head().enqueued_s for buffer in self._ready.values()]
        heads += [f.enqueued_s for _, _, f in self._requests]
        return min(heads) if heads else None

    def due_in(self, now_s: float) -> float | None:
        """Seconds until a batch is due (0 when due now); None when nothing is pending."""
        if self._pending == 0:
            return None
        if self._pending >= self.max_batch_size or self.max_queue_delay_s <= 0:
            return 0.0
        oldest = self._oldest_s()
        assert oldest is not None
        return max(0.0, oldest + self.max_queue_delay_s - now_s)

    def oldest_s(self) -> float | None:
        """Enqueue time of the oldest pending frame (to choose between schedulers)."""
        return self._oldest_s()

    def next_batch(self, now_s: float) -> list[Frame]:
        """The next batch if one is due, else an empty list."""
        due = self.due_in(now_s)
        if due is None or due > 0:
            return []
        batch: list[Frame] = []
        key_box: list[Hashable] = []
        served: dict[Hashable, None] = {}  # in order of first service

        def fits(frame: Frame) -> bool:
            if not key_box:
                key_box.append(frame.batch_key)
                return True
            return frame.batch_key == key_box[0]

        rank = self._rank
        ready = sorted(self._ready.items(), key=lambda item: rank[item[0]])
        progressed = True
        while progressed and len(batch) < self.max_batch_size:
            progressed = False
            for stream_id, buffer in ready:
                if len(batch) >= self.max_batch_size:
                    break
                if len(buffer) and fits(buffer.head()):
                    batch.append(buffer.pop())
                    progressed = True
                    served[stream_id] = None
        for stream_id in served:
            rank[stream_id] = next(self._ranks)
            if not len(self._buffers[stream_id]):
                del self._ready[stream_id]

        skipped: list[tuple[int, int, Frame]] = []
        while self._requests and len(batch) < self.max_batch_size:
            item = heapq.heappop(self._requests)
            if fits(item[2]):
                batch.append(item[2])
            else:
                skipped.append(item)
        for item in skipped:
            heapq.heappush(self._requests, item)

        self._pending -= len(batch)
        return batch
