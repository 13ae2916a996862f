"""Runs queue jobs: claims them from the :class:`JobStore`, calls the engine, stores outcomes.

Per app at most ``in_flight`` jobs are handed to the engine at once (default twice the
app's largest batch), so the engine always has a next batch ready while the store keeps
the rest in priority order. Jobs run with engine priority 1 (normal) or 2 (low), behind
sync runs (0) and realtime frames, and share their batches.

Recovery: at start, jobs the last process left ``IN_PROGRESS`` go back to the queue and
run again (each run is a new attempt; only the current attempt may complete a job, so a
result is recorded exactly once). A job that has used ``max_attempts`` runs fails with
``runner_disconnected`` instead of taking the server down forever. On a clean shutdown
running jobs are put back without using an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable

from pydantic import ValidationError

from framewire.engine.api import EngineClient
from framewire.gateway.platform.usage import count_outputs
from framewire.gateway.realtime import protocol
from framewire.gateway.requests.finaliser import OutputFinaliser
from framewire.gateway.requests.inputs import FetchError, InputFetcher
from framewire.gateway.requests.job_store import Job, JobStore, LogEntry
from framewire.gateway.requests.outcomes import (
    EngineGone,
    Outcome,
    cancelled_outcome,
    disconnected_outcome,
    run_outcome,
    timeout_outcome,
)
from framewire.gateway.requests.webhooks import webhook_body
from framewire.gateway.storage.store import FileStore

log = logging.getLogger("framewire.queue")

SWEEP_INTERVAL_S = 1.0
PURGE_INTERVAL_S = 600.0
MAX_IDLE_S = 1.0
#: First and longest wait before storing a finished job's outcome again (the store failed).
FINISH_RETRY_S = 0.25
FINISH_RETRY_MAX_S = 30.0


class JobEvents:
    """Wakes whoever streams a job's status when the job changes (bounded: one event per waiter)."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def notify(self, job_id: str) -> None:
        event = self._events.pop(job_id, None)
        if event is not None:
            event.set()

    async def wait(self, job_id: str, timeout_s: float) -> None:
        event = self._events.get(job_id)
        if event is None:
            event = self._events[job_id] = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await event.wait()


class Dispatcher:
    """The background side of the queue; see the module docstring."""

    def __init__(
        self,
        store: JobStore,
        engine: EngineClient,
        finaliser: OutputFinaliser,
        fetcher: InputFetcher,
        files: FileStore,
        *,
        in_flight: int = 0,
        max_attempts: int = 3,
        retention_s: float = 7 * 24 * 3600.0,
        on_webhook: Callable[[], None] = lambda: None,
        on_finished: Callable[[Job, Outcome, float, int], None] | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.finaliser = finaliser
        self.fetcher = fetcher
        self.files = files
        self.in_flight_setting = in_flight
        self.max_attempts = max_attempts
        self.retention_s = retention_s
        self.on_webhook = on_webhook
        # Usage: (job, outcome, engine ms charged to it, outputs), once per completed job.
        self.on_finished = on_finished
        self._charged: dict[str, tuple[float, int]] = {}
        self.events = JobEvents()
        self._wake = asyncio.Event()
        self._maybe_queued: set[str] = set()
        self._running: dict[str, set[str]] = defaultdict(set)  # app_key -> job ids
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancel: set[str] = set()
        self._interruptible: set[str] = set()  # jobs waiting on downloads or the engine
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._next_sweep = 0.0
        self._next_purge = 0.0
        self.completed = 0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        again, spent = await self.store.recover(self.max_attempts)
        if again:
            log.warning("%d queue jobs were running when the server stopped; they run again", len(again))
        for job_id in spent:
            job = await self.store.get(job_id)
            if job is not None:
                await self._finish(job, job.attempts, disconnected_outcome(job.attempts))
        self._maybe_queued.update((await self.store.queue_lengths()).keys())
        self._loop_task = asyncio.create_task(self._loop(), name="queue-dispatcher")

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop claiming, let running jobs finish (bounded), put the rest back in the queue."""
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    def limit(self, app_key: str) -> int:
        if self.in_flight_setting > 0:
            return self.in_flight_setting
        app = self.engine.registry.get(app_key)
        if app is None:
            return 1
        return max(2, 2 * max(ep.max_batch_size for ep in self.engine.registry.endpoints_of(app).values()))

    def submitted(self, app_key: str, start_deadline: float | None = None) -> None:
        self._maybe_queued.add(app_key)
        self._wake.set()
        if start_deadline is not None:  # look for expired jobs right when this one may expire
            asyncio.get_running_loop().call_later(max(0.0, start_deadline - time.time()) + 0.001, self._sweep_soon)

    def _sweep_soon(self) -> None:
        self._next_sweep = 0.0
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """Stop waiting for a running job; it completes as cancelled.

        Only the waiting (input downloads, the engine call) is interrupted; once the engine
        has answered, the job completes with its result.
        """
        self._cancel.add(job_id)
        task = self._tasks.get(job_id)
        if task is not None and job_id in self._interruptible:
            task.cancel()

    # -- the loop ---------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            now = time.time()
            try:
                for app_key in list(self._maybe_queued):
                    limit, running = self.limit(app_key), len(self._running[app_key])
                    free = limit - running
                    # Claim in chunks (one store write each), but never let the engine run dry.
                    if free <= 0 or (running and free < max(1, limit // 4)):
                        continue
                    jobs = await self.store.claim(app_key, free, now)
                    if len(jobs) < free:
                        self._maybe_queued.discard(app_key)
                    for job in jobs:
                        self._spawn(job)
                if now >= self._next_sweep:
                    self._next_sweep = now + SWEEP_INTERVAL_S
                    await self._sweep(now)
            except Exception:  # the store failed; keep the loop alive and try again shortly
                log.exception("queue dispatcher iteration failed")
                await asyncio.sleep(0.5)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(MAX_IDLE_S):
                    await self._wake.wait()

    def _spawn(self, job: Job) -> None:
        self._running[job.app_key].add(job.id)
        self.events.notify(job.id)
        task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
        self._tasks[job.id] = task

        def done(_: asyncio.Task[None]) -> None:
            self._tasks.pop(job.id, None)
            self._charged.pop(job.id, None)
            self._cancel.discard(job.id)
            self._free_slot(job)

        task.add_done_callback(done)

    def _free_slot(self, job: Job) -> None:
        """The engine is done with ``job``: let the loop hand it another one."""
        running = self._running[job.app_key]
        if job.id in running:
            running.discard(job.id)
            self._maybe_queued.add(job.app_key)
            self._wake.set()

    async def _sweep(self, now: float) -> None:
        for job in await self.store.expired(now):
            timeout_s = None if job.start_deadline is None else job.start_deadline - job.created_at
            await self._finish(job, None, timeout_outcome(timeout_s))
        if now >= self._next_purge:
            self._next_purge = now + PURGE_INTERVAL_S
            if self.retention_s > 0:
                purged = await self.store.purge(now - self.retention_s)
                if purged:
                    log.info("purged %d finished jobs older than %.0f s", purged, self.retention_s)
            removed = await asyncio.to_thread(self.files.sweep, now)
            if removed:
                log.info("deleted %d expired files", removed)

    # -- one job ------------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        logs: list[LogEntry] = []
        try:
            if job.cancel_requested or job.id in self._cancel:
                outcome = cancelled_outcome()
            else:
                outcome = await self._execute(job, logs)
        except asyncio.CancelledError:
            if self._stopping:
                with contextlib.suppress(Exception):
                    await self.store.release(job.id, job.attempts)
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            outcome = cancelled_outcome()
        except EngineGone as exc:
            log.info("job %s goes back to the queue: %s", job.id, exc)
            await self.store.release(job.id, job.attempts)
            self.events.notify(job.id)
            return
        except Exception as exc:
            log.exception("job %s failed in the gateway", job.id)
            self._free_slot(job)
            reason = f"Internal Server Error ({type(exc).__name__})"
            outcome = Outcome(
                {"detail": "Internal Server Error", "error_type": "internal_error"}, 500, reason, "internal_error"
            )
        await self._finish_durably(job, outcome, logs)

    async def _finish_durably(self, job: Job, outcome: Outcome, logs: list[LogEntry]) -> None:
        """:meth:`_finish`, retried with back-off while the store cannot be written (a full disk):
        the outcome waits in memory, not lost, and the job completes once the store recovers.
        A stop meanwhile leaves the job running in the store: the next start runs it again."""
        delay_s = FINISH_RETRY_S
        while True:
            try:
                await self._finish(job, job.attempts, outcome, logs)
                return
            except Exception as exc:
                log.warning(
                    "job %s finished but its outcome cannot be stored (%s); retrying in %.1f s", job.id, exc, delay_s
                )
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, FINISH_RETRY_MAX_S)

    async def _execute(self, job: Job, logs: list[LogEntry]) -> Outcome:
        try:
            endpoint = self.engine.registry.resolve(job.endpoint_path)
        except (LookupError, ValueError) as exc:
            reason = f"Path /{job.endpoint_path} not found ({exc})"
            return Outcome({"detail": reason}, 404, reason, "not_found")
        self._interruptible.add(job.id)
        try:
            try:
                data = await self.fetcher.resolve(job.input, endpoint.input_model, job.base_url)
            except FetchError as exc:
                return Outcome({"detail": exc.detail(), "error_type": exc.error_type}, 422, exc.reason, exc.error_type)
            try:
                inp = endpoint.input_model.model_validate(data)
            except ValidationError as exc:
                reason = protocol.validation_reason(exc)
                return Outcome({"detail": protocol.validation_detail(exc)}, 422, reason, "validation_error")
            if job.id in self._cancel:
                return cancelled_outcome()
            started = time.time()
            result = await self.engine.call(endpoint, inp, priority=int(job.priority))
            self._charged[job.id] = (result.inference_ms / max(1, result.batch_size), count_outputs(result.output))
        finally:
            # From here on the job only records its outcome: a cancel must not cut a store write.
            self._interruptible.discard(job.id)
        self._free_slot(job)  # the engine may take the next job while this one's outcome is stored
        outcome = await run_outcome(result, inp, self.finaliser, job.base_url)
        level = "INFO" if outcome.ok else "ERROR"
        logs.append(
            LogEntry(
                time.time(),
                level,
                f"Finished in {time.time() - started:.3f} s (inference {result.inference_ms:.1f} ms,"
                f" batch of {result.batch_size})" + ("" if outcome.ok else f": {outcome.error}"),
            )
        )
        return outcome

    async def _finish(
        self, job: Job, attempt: int | None, outcome: Outcome, logs: list[LogEntry] | None = None
    ) -> None:
        body = webhook_body(job.id, outcome) if job.webhook_url else None
        done = await self.store.complete(job.id, attempt, outcome, body, logs or ())
        if job.id not in self._tasks:
            self._cancel.discard(job.id)  # a cancel that raced with a completion elsewhere
        if done:
            self.completed += 1
            if body is not None:
                self.on_webhook()
            if self.on_finished is not None:
                compute_ms, outputs = self._charged.pop(job.id, (0.0, 0))
                try:
                    self.on_finished(job, outcome, compute_ms, outputs)
                except Exception:
                    log.exception("usage of job %s could not be recorded", job.id)
        self.events.notify(job.id)
