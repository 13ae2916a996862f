"""The in-process engine: one device thread per app, a small CPU pool beside it.

The event loop only appends frames to bounded buffers (under a short lock) and
receives results through ``loop.call_soon_threadsafe``, once per batch. Handlers run
on the app's device thread, never on the event loop. A handler that raises fails the
frames of its batch, not the worker; a worker thread that dies is restarted. What runs
next, at which degradation level, is the :class:`framewire.engine.planner.Planner`'s
decision; this module is its threads.

CPU and device overlap: an endpoint whose app splits its handler into
:class:`framewire.engine.api.Stages` has each frame *prepared* (decoded) on the pool
ahead of its batch (as it arrives, or when a batch is taken, with at most a few batches'
worth of frames held prepared), and each batch *finished* (encoded) on the pool while the
device thread runs the next one. The device thread still makes one host sync per batch.
Results leave in the order their batches were formed.

Unchanged frames: when the app gives an input an identity, its fingerprint is taken on
the pool too; a frame whose fingerprint matches the last frame its stream ran (at the
same degradation) is answered with that output and never runs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from framewire.engine.api import (
    SIMILARITY_RANGE,
    TARGET_LATENCY_RANGE_MS,
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
    Stages,
    StartTimeout,
    Stream,
    WeightsInfo,
)
from framewire.engine.fingerprint import Fingerprint, fingerprint
from framewire.engine.governor import GovernorSettings
from framewire.engine.planner import Planner
from framewire.engine.scheduler import BatchScheduler, Frame, FrameBuffer

log = logging.getLogger("framewire.engine")

_stream_ids = itertools.count(1)

#: Threads of each worker's CPU pool (decoding, fingerprints, encoding).
DEFAULT_CPU_WORKERS = 2


@dataclass(eq=False)
class LocalStream:
    """The engine side of one realtime session."""

    endpoint: Endpoint
    buffer: FrameBuffer
    on_result: ResultCallback
    id: int = field(default_factory=lambda: next(_stream_ids))
    closed: bool = False
    target_latency_ms: float | None = None
    similarity_threshold: float = 0.0

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


@dataclass(slots=True)
class _Prepared:
    """What the pool made of one frame ahead of its batch."""

    fingerprint: Fingerprint | None
    data: Any  # the stages' prepare(): anything, or an AppError for this input


#: A result, or (for a skipped frame) how to make it once earlier batches are delivered.
_Item = tuple[Frame, FrameResult | Callable[[], FrameResult]]


class _Sequencer:
    """Hands batches' results on in the order the batches were formed (each ticket once)."""

    def __init__(self, deliver: Callable[[list[_Item]], None]) -> None:
        self._deliver = deliver
        self._lock = threading.Lock()
        self._tickets = itertools.count()
        self._next = 0
        self._ready: dict[int, list[_Item]] = {}

    def ticket(self) -> int:
        return next(self._tickets)

    def done(self, ticket: int, items: list[_Item]) -> None:
        with self._lock:  # delivering under the lock keeps the order across threads
            self._ready[ticket] = items
            while self._next in self._ready:
                self._deliver(self._ready.pop(self._next))
                self._next += 1


class _Worker:
    """Runs one app: its setup, then its batches, one at a time, on its own device thread."""

    def __init__(
        self,
        app: App,
        endpoints: Iterable[Endpoint],
        loop: asyncio.AbstractEventLoop,
        on_batch: Callable[[BatchRecord], None] | None,
        queue_delay_override_ms: float | None,
        max_batch_size_cap: int | None = None,
        cpu_workers: int = DEFAULT_CPU_WORKERS,
        governor: GovernorSettings | None = None,
    ) -> None:
        self.app = app
        self.loop = loop
        self.on_batch = on_batch
        self.cond = threading.Condition()
        self.endpoints = list(endpoints)
        self.planner = Planner(
            self.endpoints,
            max_batch_size_cap=max_batch_size_cap,
            queue_delay_override_ms=queue_delay_override_ms,
            governor=governor,
        )
        self.pool = ThreadPoolExecutor(cpu_workers, thread_name_prefix=f"engine-cpu:{app.app_id}")
        self.stages: dict[Endpoint, Stages | None] = {}
        self._prepares: dict[Endpoint, bool] = {}
        # Frames holding prepared data (decoded pixels): a bound on that memory.
        self._held = 0
        self._max_held = 2 * max((s.max_batch_size for s in self.planner.schedulers.values()), default=1)
        self._finishing: set[Future[None]] = set()
        self._sequencer = _Sequencer(self._deliver)
        self.stopping = False
        self.restarting = False
        self.restarts = 0
        self.batches = 0
        self.skipped = 0
        self.thread: threading.Thread | None = None
        self._setup_done = threading.Event()
        self._setup_error: BaseException | None = None

    @property
    def schedulers(self) -> dict[Endpoint, BatchScheduler]:
        return self.planner.schedulers

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        self.thread = threading.Thread(target=self._main, name=f"engine:{self.app.app_id}", daemon=True)
        self.thread.start()

    async def wait_setup(self) -> None:
        await asyncio.to_thread(self._setup_done.wait)
        if self._setup_error is not None:
            raise RuntimeError(f"setup of app {self.app.app_id!r} failed: {self._setup_error}") from self._setup_error

    def _learn_endpoints(self) -> None:
        """After setup: which endpoints run in stages, which take their frames' fingerprints."""
        identities = type(self.app).frame_identity is not App.frame_identity
        for ep in self.endpoints:
            self.stages[ep] = self.app.stages(ep.spec.path)
            self._prepares[ep] = self.stages[ep] is not None or identities

    def _main(self) -> None:
        try:
            self.app.setup()
            self._learn_endpoints()
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
        self.wait_finishing(None)
        try:
            self.app.teardown()
        except Exception:
            log.exception("teardown of %s failed", self.app.app_id)

    def _next(self) -> tuple[Endpoint, list[Frame]] | None:
        """Wait for a due batch (None when stopping). Called with no lock held."""
        with self.cond:
            while not self.stopping:
                found = self.planner.next(time.perf_counter())
                if isinstance(found, tuple):
                    return found
                self.cond.wait(found)
        return None

    def _serve(self) -> None:
        while (item := self._next()) is not None:
            self._run_batch(*item)

    # -- preparing frames on the pool ----------------------------------------------

    def prepare_later(self, ep: Endpoint, frame: Frame, *, force: bool = False) -> None:
        """Start preparing ``frame`` on the pool, within the bound on frames held (lock held)."""
        if not self._prepares.get(ep) or frame.prepared is not None:
            return
        if self._held >= self._max_held and not force:
            return
        state = self.planner.streams.get(frame.stream) if frame.stream is not None else None
        thumbnail = state is not None and state.similarity > 0
        frame.prepared = self.pool.submit(self._prepare, ep, frame.submitted, thumbnail)
        self._held += 1

    def release(self, frame: Frame, *, cancel: bool = False) -> None:
        """``frame`` no longer needs its prepared data (lock held)."""
        prepared = frame.prepared
        if isinstance(prepared, Future):
            self._held -= 1
            if cancel:
                prepared.cancel()
        frame.prepared = None

    def _prepare(self, ep: Endpoint, inp: BaseModel, thumbnail: bool) -> _Prepared:
        """On the pool: the frame's fingerprint and its stages' ``prepare``. Never raises."""
        found = None
        try:
            identity = self.app.frame_identity(ep.spec.path, inp)
            if identity is not None:
                found = fingerprint(identity, thumbnail=thumbnail)
        except AppError:
            pass  # a bad input: its own error comes from preparing or running it
        except Exception:
            log.exception("%s: taking a frame's fingerprint failed; it runs unskipped", ep.key)
        stages = self.stages.get(ep)
        if stages is None:
            return _Prepared(found, None)
        try:
            return _Prepared(found, stages.prepare(inp))
        except AppError as exc:
            return _Prepared(found, exc)
        except Exception as exc:
            log.exception("%s failed to prepare an input", ep.key)
            return _Prepared(
                found, EngineError(f"{ep.key} failed on this input ({type(exc).__name__}); see the server log")
            )

    def _prepared_of(self, ep: Endpoint, batch: list[Frame]) -> list[_Prepared | None]:
        """Every frame of ``batch`` prepared (waiting for the pool if needed), then the next
        frames started, so they decode while this batch runs."""
        with self.cond:
            for frame in batch:
                self.prepare_later(ep, frame, force=True)
            held = [frame.prepared for frame in batch]
            if self._held < self._max_held:
                for pending_ep, frame in self.planner.pending_frames():
                    if self._held >= self._max_held:
                        break
                    self.prepare_later(pending_ep, frame)
        return [item.result() if isinstance(item, Future) else None for item in held]

    # -- running batches -------------------------------------------------------------

    def _run_batch(self, ep: Endpoint, batch: list[Frame]) -> None:
        started = time.perf_counter()
        ticket = self._sequencer.ticket()
        items: list[_Item] = []
        try:
            preps = self._prepared_of(ep, batch)
            run: list[Frame] = []
            run_preps: list[_Prepared | None] = []
            with self.cond:
                for frame, prep in zip(batch, preps, strict=True):
                    self.release(frame)
                    if prep is not None and isinstance(prep.data, AppError):
                        items.append((frame, self._result(frame, None, prep.data, started, 0.0, 0)))
                        continue
                    hit = None
                    if prep is not None and prep.fingerprint is not None:
                        hit = self.planner.likeness(frame, prep.fingerprint)
                    if hit is not None:
                        items.append((frame, self._skipped(frame, hit[0].output, hit[1], started)))
                        self.skipped += 1
                    else:
                        run.append(frame)
                        run_preps.append(prep)
            if run:
                self._run_frames(ep, run, run_preps, ticket, items)
                return
        except Exception as exc:  # a bug here must not stall the results of later batches
            log.exception("%s: a batch of %d failed outside its handler", ep.key, len(batch))
            crash = EngineError(f"{ep.key} failed on this input ({type(exc).__name__}); see the server log")
            done = {id(f) for f, _ in items}
            items += [(f, self._result(f, None, crash, started, 0.0, 0)) for f in batch if id(f) not in done]
        self._sequencer.done(ticket, items)

    def _run_frames(
        self,
        ep: Endpoint,
        run: list[Frame],
        preps: list[_Prepared | None],
        ticket: int,
        items: list[_Item],
    ) -> None:
        started = time.perf_counter()  # after its inputs were prepared: the device's time starts here
        stages = self.stages.get(ep)
        progress = _BatchProgress(self.loop, run) if (ep.takes_progress or stages is not None) else Progress()
        fault: EngineFault | None = None
        failed = False
        ran: Any = None
        outputs: list[BaseModel | AppError] | None = None
        try:
            if stages is not None:
                ran = stages.run([f.inp for f in run], [p.data if p is not None else None for p in preps], progress)
            else:
                outputs = ep.call([f.inp for f in run], progress)
        except EngineFault as exc:
            log.error("%s failed on a batch of %d and must restart: %s", ep.key, len(run), exc.reason)
            outputs, failed, fault = [exc] * len(run), True, exc
        except AppError as exc:
            outputs, failed = [exc] * len(run), True
        except Exception as exc:
            log.exception("%s failed on a batch of %d", ep.key, len(run))
            crash = EngineError(f"{ep.key} failed on this input ({type(exc).__name__}); see the server log")
            outputs, failed = [crash] * len(run), True
        finished = time.perf_counter()
        inference_ms = (finished - started) * 1000.0
        remembered: list[Future[BaseModel | AppError] | None] = []
        with self.cond:
            self.planner.ran(ep, run, started, finished)
            for frame, prep in zip(run, preps, strict=True):
                holder: Future[BaseModel | AppError] | None = None
                if not failed and prep is not None and prep.fingerprint is not None:
                    holder = Future()
                    self.planner.remember(frame, prep.fingerprint, holder)
                remembered.append(holder)
        self.batches += 1
        if self.on_batch is not None:
            mean_queue = sum(started - f.enqueued_s for f in run) * 1000.0 / len(run)
            self.on_batch(BatchRecord(ep.key, len(run), mean_queue, inference_ms, failed))

        def complete(outs: list[BaseModel | AppError]) -> None:
            for frame, out, holder in zip(run, outs, remembered, strict=True):
                error = out if isinstance(out, AppError) else None
                output = None if error is not None else out
                if output is not None and not isinstance(output, ep.output_model):
                    error, output = (
                        EngineError(f"{ep.key} returned {type(output).__name__}, not {ep.output_model.__name__}"),
                        None,
                    )
                if holder is not None:
                    holder.set_result(output if output is not None else error)  # type: ignore[arg-type]
                items.append((frame, self._result(frame, output, error, started, inference_ms, len(run))))
            self._sequencer.done(ticket, items)

        if outputs is not None:
            complete(outputs)
            if fault is not None:
                self._restart()
            return
        assert stages is not None
        finishing = self.pool.submit(self._finish, ep, stages, ran, progress, len(run), complete)
        with self.cond:
            self._finishing.add(finishing)
        finishing.add_done_callback(self._finished)

    def _finish(
        self,
        ep: Endpoint,
        stages: Stages,
        ran: Any,
        progress: Progress,
        count: int,
        complete: Callable[[list[BaseModel | AppError]], None],
    ) -> None:
        """On the pool: a batch's finish stage, then its results on their way. Never raises."""
        try:
            outs = list(stages.finish(ran, progress))
            if len(outs) != count:
                raise EngineError(f"{ep.key} returned {len(outs)} outputs for {count} inputs")
        except AppError as exc:
            outs = [exc] * count
        except Exception as exc:
            log.exception("%s failed to finish a batch of %d", ep.key, count)
            outs = [EngineError(f"{ep.key} failed on this input ({type(exc).__name__}); see the server log")] * count
        complete(outs)

    def _finished(self, future: Future[None]) -> None:
        with self.cond:
            self._finishing.discard(future)

    def wait_finishing(self, timeout_s: float | None) -> None:
        """Wait until every batch handed to the pool's finish stage is delivered."""
        with self.cond:
            pending = set(self._finishing)
        if pending:
            wait_futures(pending, timeout=timeout_s)

    def _result(
        self,
        frame: Frame,
        output: BaseModel | None,
        error: AppError | None,
        started: float,
        inference_ms: float,
        batch_size: int,
        skipped: str = "",
    ) -> FrameResult:
        now = time.perf_counter()
        return FrameResult(
            output,
            error,
            (started - frame.enqueued_s) * 1000.0,
            inference_ms,
            batch_size,
            frame.tag,
            latency_ms=(now - frame.enqueued_s) * 1000.0,
            target_latency_ms=None if frame.target_s is None else frame.target_s * 1000.0,
            degraded=frame.level,
            degradation=frame.degradation,
            skipped=skipped,
        )

    def _skipped(self, frame: Frame, held: Any, kind: str, started: float) -> Callable[[], FrameResult]:
        """The result of a frame answered with its stream's last output (made once that is out)."""

        def make() -> FrameResult:
            out = held.result() if isinstance(held, Future) else held
            if isinstance(out, AppError):
                return self._result(frame, None, out, started, 0.0, 0, kind)
            return self._result(frame, out, None, started, 0.0, 0, kind)

        return make

    def _deliver(self, items: list[_Item]) -> None:
        """Called in batch order: make the results, tell the planner, hand them to the loop."""
        results = [(frame, item if isinstance(item, FrameResult) else item()) for frame, item in items]
        now = time.perf_counter()
        with self.cond:
            for frame, _ in results:
                self.planner.answered(frame, now)
        _deliver_threadsafe(self.loop, results)

    def _restart(self) -> None:
        """Rebuild the app after a fault: teardown, then setup until it works or the engine stops.

        Frames arriving meanwhile wait in their (bounded) buffers; the engine reports not
        ready until the app is back.
        """
        self.restarting = True
        self.restarts += 1
        self.wait_finishing(None)
        try:
            self.app.teardown()
        except Exception:
            log.exception("teardown of %s failed during its restart", self.app.app_id)
        delay_s = 1.0
        while not self.stopping:
            try:
                self.app.setup()
                self._learn_endpoints()
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
            pending = self.planner.drain()
            for frame in pending:
                self.release(frame, cancel=True)
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
        cpu_workers: int = DEFAULT_CPU_WORKERS,
        governor: GovernorSettings | None = None,
    ) -> None:
        if max_batch_size_cap is not None and max_batch_size_cap < 1:
            raise ValueError(f"max_batch_size_cap must be >= 1, got {max_batch_size_cap}")
        if cpu_workers < 1:
            raise ValueError(f"cpu_workers must be >= 1, got {cpu_workers}")
        self.registry = registry
        self._queue_delay_override_ms = queue_delay_override_ms
        self._max_batch_size_cap = max_batch_size_cap
        self._cpu_workers = cpu_workers
        self._governor = governor
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
                self._cpu_workers,
                self._governor,
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
            await asyncio.to_thread(worker.wait_finishing, max(0.0, deadline - time.monotonic()))
            worker.pool.shutdown(wait=False, cancel_futures=True)

    def _worker(self, endpoint: Endpoint) -> _Worker:
        worker = self._workers.get(id(endpoint.app))
        if worker is None or not self._ready:
            raise EngineUnavailable("the engine is not running")
        return worker

    def open_stream(
        self,
        endpoint: Endpoint,
        capacity: int,
        on_result: ResultCallback,
        *,
        target_latency_ms: float | None = None,
        similarity_threshold: float = 0.0,
    ) -> LocalStream:
        low_ms, high_ms = TARGET_LATENCY_RANGE_MS
        if target_latency_ms is not None and not low_ms <= target_latency_ms <= high_ms:
            raise ValueError(f"target_latency_ms must be in {low_ms:g}..{high_ms:g}, got {target_latency_ms}")
        low, high = SIMILARITY_RANGE
        if not low <= similarity_threshold <= high:
            raise ValueError(f"similarity_threshold must be in {low:g}..{high:g}, got {similarity_threshold}")
        worker = self._worker(endpoint)
        stream_id = next(_stream_ids)
        with worker.cond:
            state = worker.planner.open(
                endpoint,
                stream_id,
                capacity,
                target_latency_ms=target_latency_ms,
                similarity_threshold=similarity_threshold,
            )
        target_s = state.target_s
        return LocalStream(
            endpoint,
            state.buffer,
            on_result,
            id=stream_id,
            target_latency_ms=None if target_s is None else target_s * 1000.0,
            similarity_threshold=similarity_threshold,
        )

    def submit(self, stream: Stream, inp: BaseModel, tag: Any) -> Any:
        assert isinstance(stream, LocalStream), "a stream of another engine"
        if tag is None:
            raise ValueError("tag must not be None")
        if stream.closed:
            raise EngineUnavailable("the stream is closed")
        endpoint = stream.endpoint
        worker = self._worker(endpoint)
        endpoint.admit(inp)  # an AppError refuses this frame before it is queued
        now = time.perf_counter()
        frame = Frame(inp, None, now, stream.on_result, tag)
        with worker.cond:
            dropped = worker.planner.push(stream.id, frame, now)
            if dropped is not None:
                worker.release(dropped, cancel=True)
            worker.prepare_later(endpoint, frame)
            worker.cond.notify()
        return None if dropped is None else dropped.tag

    def weights_of(self, app: App) -> WeightsInfo | None:
        return app.weights_info()

    def close_stream(self, stream: Stream) -> int:
        assert isinstance(stream, LocalStream), "a stream of another engine"
        if stream.closed:
            return 0
        stream.closed = True
        worker = self._workers.get(id(stream.endpoint.app))
        if worker is None:
            return 0
        with worker.cond:
            frames = worker.planner.close(stream.id)
            for frame in frames:
                worker.release(frame, cancel=True)
        return len(frames)

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
            endpoint.admit(inp)
        except AppError as exc:  # refused before queueing (e.g. over a limit): this request's error
            return FrameResult(None, exc, 0.0, 0.0, 0)
        frame = Frame(inp, None, time.perf_counter(), resolve, on_progress=on_progress)
        planner = worker.planner
        with worker.cond:
            planner.push_request(endpoint, frame, priority)
            worker.prepare_later(endpoint, frame)
            worker.cond.notify()
        try:
            if start_timeout_s is not None:
                await asyncio.wait((future,), timeout=start_timeout_s)
                if not future.done():
                    with worker.cond:
                        if planner.remove_request(endpoint, frame):
                            worker.release(frame, cancel=True)
                            raise StartTimeout(start_timeout_s)
            return await future
        except asyncio.CancelledError:
            with worker.cond:
                if planner.remove_request(endpoint, frame):
                    worker.release(frame, cancel=True)
                else:
                    frame.cancelled = True  # running: the handler may notice and stop early
            raise
