"""The in-process engine: one worker thread per app, fed by the batch schedulers.

The event loop only appends frames to bounded buffers (under a short lock) and
receives results through ``loop.call_soon_threadsafe``, once per batch. Handlers run
on the app's worker thread, never on the event loop. A handler that raises fails the
frames of its batch, not the worker; a worker thread that dies is restarted.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from framewire.engine.api import (
    App,
    AppError,
    AppRegistry,
    Endpoint,
    EngineError,
    EngineFault,
    EngineUnavailable,
    FrameResult,
    Progress,
    ProgressCallback,
    ResultCallback,
    StartTimeout,
    Stream,
)
from framewire.engine.scheduler import BatchScheduler, Frame, FrameBuffer

log = logging.getLogger("framewire.engine")

_stream_ids = itertools.count(1)


@dataclass(eq=False)
class LocalStream:
    """The engine side of one realtime session."""

    endpoint: Endpoint
    buffer: FrameBuffer
    on_result: ResultCallback
    id: int = field(default_factory=lambda: next(_stream_ids))
    closed: bool = False

    @property
    def dropped(self) -> int:
        return self.buffer.dropped

    @property
    def capacity(self) -> int:
        return self.buffer.capacity


@dataclass
class BatchRecord:
    """One executed batch, for metrics observers."""

    endpoint_key: str
    size: int
    queue_ms: float
    inference_ms: float
    failed: bool


class _Worker:
    """Runs one app: its setup, then its batches, one at a time, on its own thread."""

    def __init__(
        self,
        app: App,
        endpoints: Iterable[Endpoint],
        loop: asyncio.AbstractEventLoop,
        on_batch: Callable[[BatchRecord], None] | None,
        queue_delay_override_ms: float | None,
        max_batch_size_cap: int | None = None,
    ) -> None:
        self.app = app
        self.loop = loop
        self.on_batch = on_batch
        self.cond = threading.Condition()
        self.schedulers: dict[Endpoint, BatchScheduler] = {}
        for ep in endpoints:
            delay_ms = ep.spec.max_queue_delay_ms if queue_delay_override_ms is None else queue_delay_override_ms
            batch = ep.max_batch_size if max_batch_size_cap is None else min(ep.max_batch_size, max_batch_size_cap)
            self.schedulers[ep] = BatchScheduler(batch, delay_ms / 1000.0)
        self.stopping = False
        self.restarting = False
        self.restarts = 0
        self.batches = 0
        self.thread: threading.Thread | None = None
        self._setup_done = threading.Event()
        self._setup_error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        self.thread = threading.Thread(target=self._main, name=f"engine:{self.app.app_id}", daemon=True)
        self.thread.start()

    async def wait_setup(self) -> None:
        await asyncio.to_thread(self._setup_done.wait)
        if self._setup_error is not None:
            raise RuntimeError(f"setup of app {self.app.app_id!r} failed: {self._setup_error}") from self._setup_error

    def _main(self) -> None:
        try:
            self.app.setup()
        except BaseException as exc:  # reported to start(); the server does not come up
            log.exception("setup of %s failed", self.app.app_id)
            self._setup_error = exc
            self._setup_done.set()
            return
        self._setup_done.set()
        while True:
            try:
                self._serve()
                break
            except Exception:  # a bug in the loop itself: report, restart, keep serving
                self.restarts += 1
                log.exception("engine worker for %s crashed; restarting (%d)", self.app.app_id, self.restarts)
        try:
            self.app.teardown()
        except Exception:
            log.exception("teardown of %s failed", self.app.app_id)

    def _next(self) -> tuple[Endpoint, list[Frame]] | None:
        """Wait for a due batch (None when stopping). Called with no lock held."""
        with self.cond:
            while not self.stopping:
                now = time.perf_counter()
                best: tuple[float, Endpoint] | None = None
                wait_s: float | None = None
                for ep, sched in self.schedulers.items():
                    due = sched.due_in(now)
                    if due is None:
                        continue
                    if due == 0:
                        oldest = sched.oldest_s() or now
                        if best is None or oldest < best[0]:
                            best = (oldest, ep)
                    elif wait_s is None or due < wait_s:
                        wait_s = due
                if best is not None:
                    ep = best[1]
                    return ep, self.schedulers[ep].next_batch(now)
                self.cond.wait(wait_s)
        return None

    def _serve(self) -> None:
        while (item := self._next()) is not None:
            self._run_batch(*item)

    def _run_batch(self, ep: Endpoint, batch: list[Frame]) -> None:
        started = time.perf_counter()
        failed = False
        progress = _BatchProgress(self.loop, batch) if ep.takes_progress else Progress()
        fault: EngineFault | None = None
        try:
            outputs: list[BaseModel | AppError] = ep.call([f.inp for f in batch], progress)
        except EngineFault as exc:
            log.error("%s failed on a batch of %d and must restart: %s", ep.key, len(batch), exc.reason)
            outputs, failed, fault = [exc] * len(batch), True, exc
        except AppError as exc:
            outputs, failed = [exc] * len(batch), True
        except Exception as exc:
            log.exception("%s failed on a batch of %d", ep.key, len(batch))
            crash = EngineError(f"{ep.key} failed on this input ({type(exc).__name__}); see the server log")
            outputs, failed = [crash] * len(batch), True
        finished = time.perf_counter()
        inference_ms = (finished - started) * 1000.0
        results = []
        for frame, out in zip(batch, outputs, strict=True):
            error = out if isinstance(out, AppError) else None
            output = None if error is not None else out
            if output is not None and not isinstance(output, ep.output_model):
                error, output = (
                    EngineError(f"{ep.key} returned {type(output).__name__}, not {ep.output_model.__name__}"),
                    None,
                )
            queue_ms = (started - frame.enqueued_s) * 1000.0
            results.append((frame, FrameResult(output, error, queue_ms, inference_ms, len(batch), frame.tag)))
        self.batches += 1
        _deliver_threadsafe(self.loop, results)
        if self.on_batch is not None:
            mean_queue = sum(r.queue_ms for _, r in results) / len(results)
            self.on_batch(BatchRecord(ep.key, len(batch), mean_queue, inference_ms, failed))
        if fault is not None:
            self._restart()

    def _restart(self) -> None:
        """Rebuild the app after a fault: teardown, then setup until it works or the engine stops.

        Frames arriving meanwhile wait in their (bounded) buffers; the engine reports not
        ready until the app is back.
        """
        self.restarting = True
        self.restarts += 1
        try:
            self.app.teardown()
        except Exception:
            log.exception("teardown of %s failed during its restart", self.app.app_id)
        delay_s = 1.0
        while not self.stopping:
            try:
                self.app.setup()
            except Exception:
                log.exception("restart of %s failed; retrying in %.0f s", self.app.app_id, delay_s)
                with self.cond:
                    self.cond.wait_for(lambda: self.stopping, timeout=delay_s)
                delay_s = min(delay_s * 2, 30.0)
                continue
            log.warning("%s restarted (restart %d)", self.app.app_id, self.restarts)
            break
        self.restarting = False

    def stop(self) -> list[Frame]:
        """Ask the thread to stop after its current batch; returns frames never run."""
        with self.cond:
            self.stopping = True
            pending = [f for sched in self.schedulers.values() for f in sched.drain()]
            self.cond.notify_all()
        return pending


class _BatchProgress(Progress):
    """Routes a handler's partial outputs to the frames' progress callbacks, on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, batch: list[Frame]) -> None:
        self._loop = loop
        self._batch = batch

    def wanted(self, index: int) -> bool:
        frame = self._batch[index]
        return frame.on_progress is not None and not frame.cancelled

    def cancelled(self, index: int) -> bool:
        return self._batch[index].cancelled

    def __call__(self, index: int, partial: BaseModel) -> None:
        callback = self._batch[index].on_progress
        if callback is not None and not self._batch[index].cancelled:
            try:
                self._loop.call_soon_threadsafe(callback, partial)
            except RuntimeError:  # loop closed
                pass


def _deliver(results: list[tuple[Frame, FrameResult]]) -> None:
    for frame, result in results:
        try:
            frame.on_result(result)
        except Exception:
            log.exception("result callback failed")


def _deliver_threadsafe(loop: asyncio.AbstractEventLoop, results: list[tuple[Frame, FrameResult]]) -> None:
    try:
        loop.call_soon_threadsafe(_deliver, results)
    except RuntimeError:  # loop closed: nobody is waiting any more
        pass


class LocalEngine:
    """An :class:`framewire.engine.api.EngineClient` running apps on threads of this process."""

    def __init__(
        self,
        registry: AppRegistry,
        *,
        queue_delay_override_ms: float | None = None,
        on_batch: Callable[[BatchRecord], None] | None = None,
        max_batch_size_cap: int | None = None,
    ) -> None:
        if max_batch_size_cap is not None and max_batch_size_cap < 1:
            raise ValueError(f"max_batch_size_cap must be >= 1, got {max_batch_size_cap}")
        self.registry = registry
        self._queue_delay_override_ms = queue_delay_override_ms
        self._max_batch_size_cap = max_batch_size_cap
        self._on_batch = on_batch
        self._workers: dict[int, _Worker] = {}
        self._ready = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def ready(self) -> bool:
        """Started, and no app is restarting after a fault."""
        return self._ready and not any(w.restarting for w in self._workers.values())

    def workers(self) -> list[_Worker]:
        return list(self._workers.values())

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for app in self.registry:
            worker = _Worker(
                app,
                self.registry.endpoints_of(app).values(),
                self._loop,
                self._on_batch,
                self._queue_delay_override_ms,
                self._max_batch_size_cap,
            )
            self._workers[id(app)] = worker
            worker.start()
        for worker in self._workers.values():
            await worker.wait_setup()
        self._ready = True

    async def stop(self, timeout_s: float = 10.0) -> None:
        self._ready = False
        for worker in self._workers.values():
            pending = worker.stop()
            unavailable = EngineUnavailable("the engine is shutting down")
            _deliver([(f, FrameResult(None, unavailable, 0.0, 0.0, 0, f.tag)) for f in pending])
        deadline = time.monotonic() + timeout_s
        for worker in self._workers.values():
            if worker.thread is not None:
                await asyncio.to_thread(worker.thread.join, max(0.0, deadline - time.monotonic()))
                if worker.thread.is_alive():
                    log.warning("engine worker for %s did not stop within %.1f s", worker.app.app_id, timeout_s)

    def _worker(self, endpoint: Endpoint) -> _Worker:
        worker = self._workers.get(id(endpoint.app))
        if worker is None or not self._ready:
            raise EngineUnavailable("the engine is not running")
        return worker

    def open_stream(self, endpoint: Endpoint, capacity: int, on_result: ResultCallback) -> LocalStream:
        worker = self._worker(endpoint)
        stream_id = next(_stream_ids)
        with worker.cond:
            buffer = worker.schedulers[endpoint].open(stream_id, capacity)
        return LocalStream(endpoint, buffer, on_result, id=stream_id)

    def submit(self, stream: Stream, inp: BaseModel, tag: Any) -> Any:
        assert isinstance(stream, LocalStream), "a stream of another engine"
        if tag is None:
            raise ValueError("tag must not be None")
        if stream.closed:
            raise EngineUnavailable("the stream is closed")
        endpoint = stream.endpoint
        worker = self._worker(endpoint)
        key = endpoint.app.batch_key(endpoint.spec.path, inp)
        frame = Frame(inp, key, time.perf_counter(), stream.on_result, tag)
        with worker.cond:
            dropped = worker.schedulers[endpoint].push(stream.id, frame)
            worker.cond.notify()
        return None if dropped is None else dropped.tag

    def close_stream(self, stream: Stream) -> int:
        assert isinstance(stream, LocalStream), "a stream of another engine"
        if stream.closed:
            return 0
        stream.closed = True
        worker = self._workers.get(id(stream.endpoint.app))
        if worker is None:
            return 0
        with worker.cond:
            return len(worker.schedulers[stream.endpoint].close(stream.id))

    async def call(
        self,
        endpoint: Endpoint,
        inp: BaseModel,
        *,
        priority: int = 0,
        on_progress: ProgressCallback | None = None,
        start_timeout_s: float | None = None,
    ) -> FrameResult:
        worker = self._worker(endpoint)
        future: asyncio.Future[FrameResult] = asyncio.get_running_loop().create_future()

        def resolve(result: FrameResult) -> None:
            if not future.done():
                future.set_result(result)

        try:
            key = endpoint.app.batch_key(endpoint.spec.path, inp)
        except AppError as exc:  # refused before queueing (e.g. over a limit): this request's error
            return FrameResult(None, exc, 0.0, 0.0, 0)
        frame = Frame(inp, key, time.perf_counter(), resolve, on_progress=on_progress)
        scheduler = worker.schedulers[endpoint]
        with worker.cond:
            scheduler.push_request(frame, priority)
            worker.cond.notify()
        try:
            if start_timeout_s is not None:
                await asyncio.wait((future,), timeout=start_timeout_s)
                if not future.done():
                    with worker.cond:
                        if scheduler.remove_request(frame):
                            raise StartTimeout(start_timeout_s)
            return await future
        except asyncio.CancelledError:
            with worker.cond:
                if not scheduler.remove_request(frame):
                    frame.cancelled = True  # running: the handler may notice and stop early
            raise
