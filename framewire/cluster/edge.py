"""The edge side of the link: an :class:`~framewire.engine.api.EngineClient` made of workers.

:class:`RemoteEngine` keeps one link to every worker its directory lists (reconnecting
with a short back-off), and routes:

- **Realtime streams**: a new stream goes to the least-loaded ready worker serving its
  app and stays there (sticky). Per stream the edge has a window of ``capacity + 1``
  frames at the worker (the session's buffering plus the frame running); a frame beyond
  the window, or sent while the link is backed up, waits at the edge in a single slot
  where a newer frame replaces it (counted as dropped). So latest-frame-wins holds end
  to end and a slow link never queues stale frames.
- **Requests** (sync runs, queue jobs) go to the least-loaded ready worker serving the app.

Faults. A worker whose link drops, or that sends nothing for ``timeout_s`` (heartbeats
every ``heartbeat_s``), is *lost*: each of its streams moves to another ready worker at
once; each frame it was running gets one ``ENGINE_RESTARTING`` error (never re-sent: a
frame that crashed one worker must not crash the next); the waiting frame goes to the
new worker. Its requests run again elsewhere, at most ``call_retries`` times. With no
other worker for the app, frames get ``ENGINE_UNAVAILABLE`` until one is ready. A worker
that drains is left gracefully: each stream waits for its frames there to come back,
then moves; requests there finish.

Results and errors are delivered on the event loop that called :meth:`RemoteEngine.start`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from framewire.cluster import placement, wire
from framewire.cluster.directory import Directory, WorkerAddress
from framewire.cluster.link import Link
from framewire.cluster.wire import Kind, Violation, WorkerInfo, WorkerLoad, WorkerState
from framewire.engine.api import (
    App,
    AppError,
    AppRegistry,
    Endpoint,
    EngineError,
    EngineFault,
    EngineUnavailable,
    FrameResult,
    ProgressCallback,
    ResultCallback,
    StartTimeout,
    WeightsInfo,
    WorkerStatus,
)

log = logging.getLogger("framewire.edge")

#: Edge-side states of a worker besides the ones it reports itself.
CONNECTING = "connecting"
LOST = "lost"
REFUSED = "refused"

_LOST = object()  # a request's outcome when its worker went away before answering
#: A connected worker that has not completed the handshake in this time is dropped.
HANDSHAKE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class LinkOptions:
    """How an edge talks to its workers."""

    secret: bytes
    edge_id: str = ""
    heartbeat_s: float = 0.5
    timeout_s: float = 1.5  # silence after which a worker is lost
    connect_timeout_s: float = 2.0
    reconnect_min_s: float = 0.1
    reconnect_max_s: float = 1.0
    refused_retry_s: float = 5.0  # a worker that refused the secret is asked again this often
    call_retries: int = 2  # runs of a request lost with its worker before it fails
    wait_for_worker_s: float = 5.0  # a request waits this long for a worker serving its app
    ssl_context: ssl.SSLContext | None = None  # for addresses marked tls (default: the system's CAs)
    max_message_bytes: int = wire.MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if len(self.secret) < wire.MIN_SECRET_BYTES:
            raise ValueError(f"the worker secret must be at least {wire.MIN_SECRET_BYTES} bytes")
        if not 0 < self.heartbeat_s < self.timeout_s:
            raise ValueError("the heartbeat interval must be > 0 and below the worker timeout")


class Partial(BaseModel):
    """A handler's partial output as received from a worker (any fields, kept as sent)."""

    model_config = ConfigDict(extra="allow")


class RemoteStream:
    """The edge side of one realtime session; see the module docstring for its window."""

    def __init__(
        self,
        engine: RemoteEngine,
        endpoint: Endpoint,
        capacity: int,
        on_result: ResultCallback,
        options: dict[str, Any],
    ) -> None:
        self.engine = engine
        self.endpoint = endpoint
        self.options = options  # target latency and similarity threshold, sent with each OPEN
        self.app_id = endpoint.app.app_id
        self._capacity = capacity
        self.window = capacity + 1
        self.on_result = on_result
        self.worker: _Worker | None = None
        self.sid = 0
        self.in_flight: dict[int, tuple[BaseModel, Any]] = {}  # seq -> (input, tag), sent to the current worker
        self.waiting: tuple[BaseModel, Any] | None = None  # (input, tag) held at the edge
        self.moving = False  # its worker drains: send nothing more there, move when empty
        self.closed = False
        self._dropped = 0
        self._seq = itertools.count(1)

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def capacity(self) -> int:
        return self._capacity

    def send(self, inp: BaseModel, tag: Any) -> None:
        worker = self.worker
        assert worker is not None and worker.link is not None
        seq = next(self._seq)
        self.in_flight[seq] = (inp, tag)
        worker.link.send([Kind.FRAME, self.sid, seq, wire.dump(inp)])

    def can_send(self) -> bool:
        worker = self.worker
        return (
            worker is not None
            and not self.moving
            and len(self.in_flight) < self.window
            and worker.link is not None
            and worker.link.writable
        )

    def pump(self) -> None:
        """Send the waiting frame if the window and the link allow; finish a move when empty."""
        if self.closed:
            return
        if self.moving and not self.in_flight:
            self.engine._move(self)
        if self.waiting is not None and self.can_send():
            inp, tag = self.waiting
            self.waiting = None
            self.send(inp, tag)

    def fail(self, tags: list[Any], error: AppError) -> None:
        for tag in tags:
            self.on_result(FrameResult(None, error, 0.0, 0.0, 0, tag))


@dataclass(eq=False)
class _Call:
    cid: int
    endpoint: Endpoint
    on_progress: ProgressCallback | None
    future: asyncio.Future[Any]


class _Worker:
    """The edge's view of one worker address: its link, state, load, and what it holds."""

    def __init__(self, engine: RemoteEngine, address: WorkerAddress) -> None:
        self.engine = engine
        self.address = address
        self.name = str(address)
        self.state = CONNECTING
        self.worker_id: str | None = None
        self.device: str | None = None
        self.apps: frozenset[str] = frozenset()
        self.error: str | None = None  # why the link is down or refused
        self.problems: str | None = None  # apps it serves that this edge does not route there
        self.load = WorkerLoad()
        # The worker answers a PING after every message sent before it, so its PONG counts the
        # streams this edge had open when the PING left: remembered here per PING.
        self.streams_at_ping: dict[float, int] = {}
        self.streams_at_report = 0
        self.rtt_ms: float | None = None
        self.failovers = 0
        self.link: Link | None = None
        self.opened_s = 0.0  # when the current link connected (loop time)
        self.streams: dict[int, RemoteStream] = {}
        self.calls: dict[int, _Call] = {}
        self.removed = False
        self.task: asyncio.Task[None] | None = None
        self._nonce = wire.new_nonce()
        self._worker_nonce = b""
        self._lost: asyncio.Future[bool] | None = None

    @property
    def label(self) -> str:
        return self.address.label or self.worker_id or self.name

    def sessions_estimate(self) -> float:
        """Streams there from every edge: the last report plus what this edge changed since."""
        return self.load.sessions + len(self.streams) - self.streams_at_report

    def status(self) -> WorkerStatus:
        endpoints = self.load.endpoints
        return WorkerStatus(
            name=self.name,
            label=self.label,
            device=self.device,
            state=self.state,
            apps=tuple(sorted(self.apps)),
            sessions=len(self.streams),
            sessions_total=self.load.sessions if self.state != CONNECTING else 0,
            requests=len(self.calls),
            batch_fill={k: v.batch_fill for k, v in endpoints.items()},
            batch_size={k: v.batch_size for k, v in endpoints.items()},
            queue_ms={k: v.queue_ms for k, v in endpoints.items()},
            rtt_ms=self.rtt_ms,
            failovers=self.failovers,
            error=self.error or self.problems,
        )

    # -- connection ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, and connect again whenever the link ends, until removed."""
        opts = self.engine.options
        loop = asyncio.get_running_loop()
        delay_s = opts.reconnect_min_s
        tls = (opts.ssl_context or ssl.create_default_context()) if self.address.tls else None
        while not self.removed:
            if self.state not in (REFUSED, LOST):
                self.state = CONNECTING
            try:
                async with asyncio.timeout(opts.connect_timeout_s):
                    await loop.create_connection(
                        self._protocol,
                        self.address.host,
                        self.address.port,
                        ssl=tls,
                        server_hostname=self.address.host if tls is not None else None,
                    )
            except (OSError, TimeoutError) as exc:
                if self.state != REFUSED:
                    error = f"cannot connect to {self.name}: {exc or type(exc).__name__}"
                    if error != self.error:  # once per kind of failure, not once per retry
                        log.warning("worker %s: %s; retrying", self.label, error)
                    self.error = error
                await asyncio.sleep(delay_s)
                delay_s = min(2 * delay_s, opts.reconnect_max_s)
                continue
            assert self._lost is not None
            authenticated = await self._lost
            if self.state == REFUSED:
                delay_s = opts.refused_retry_s
            elif authenticated:
                delay_s = opts.reconnect_min_s
            await asyncio.sleep(delay_s)
            if not authenticated:
                delay_s = min(2 * delay_s, opts.reconnect_max_s)

    def _protocol(self) -> Link:
        self._lost = asyncio.get_running_loop().create_future()
        return Link(self, max_message_bytes=self.engine.options.max_message_bytes)

    # -- Handler ------------------------------------------------------------------------------

    def on_open(self, link: Link) -> None:
        self.link = link
        self.opened_s = asyncio.get_running_loop().time()
        self._nonce = wire.new_nonce()

    def on_writable(self, link: Link) -> None:
        for stream in list(self.streams.values()):
            stream.pump()

    def on_lost(self, link: Link, reason: str) -> None:
        authenticated = link.authenticated
        self.link = None
        if authenticated:
            self.state = LOST
            self.error = reason
            self.engine._lost(self, reason)
        elif self.state != REFUSED:
            error = f"no handshake: {reason}"
            if error != self.error:
                log.warning("worker %s: %s", self.label, error)
            self.error = error
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(authenticated)

    def on_message(self, link: Link, message: list[Any]) -> None:
        kind = message[0]
        if not link.authenticated:
            self._handshake(link, message)
            return
        handler = self._HANDLERS.get(kind)
        if handler is None:
            raise Violation(f"unknown message type {kind}")
        handler(self, link, message)

    def _handshake(self, link: Link, message: list[Any]) -> None:
        kind = message[0]
        opts = self.engine.options
        if kind == Kind.HELLO:
            wire.field_count(message, 3)
            _, version, worker_id, worker_nonce = message
            if version != wire.PROTOCOL_VERSION:
                self._refused(link, f"link protocol {version!r} differs from this edge's {wire.PROTOCOL_VERSION}")
                return
            if not wire.nonce_ok(worker_nonce):
                raise Violation("HELLO: bad nonce")
            self.worker_id = str(worker_id)[:200]
            self._worker_nonce = worker_nonce
            proof = wire.edge_proof(opts.secret, worker_nonce, self._nonce)
            hints = {"heartbeat_s": opts.heartbeat_s}
            link.send([Kind.AUTH, wire.PROTOCOL_VERSION, opts.edge_id, self._nonce, proof, hints])
        elif kind == Kind.WELCOME:
            wire.field_count(message, 2)
            _, proof, info_map = message
            if not self._worker_nonce or not wire.proof_ok(
                wire.worker_proof(opts.secret, self._nonce, self._worker_nonce), proof
            ):
                reason = "the worker did not prove the secret: give edge and worker the same --worker-secret"
                self._refused(link, reason)
                return
            info = WorkerInfo.from_wire(info_map)
            same, problems = wire.compare_apps(self.engine.registry, info.apps)
            self.worker_id, self.device = info.worker_id, info.device
            self.apps = frozenset(same)
            self.problems = "; ".join(problems) or None
            self.error = None
            if problems:
                log.error("worker %s (%s): %s", self.label, self.name, self.problems)
            link.authenticated = True
            self.streams_at_ping.clear()
            self.streams_at_report = 0  # a new link: the worker has none of this edge's streams
            served = ", ".join(sorted(same)) or "no app"
            log.info("worker %s (%s, %s) connected: %s", self.label, self.name, info.device, served)
            self._report(info.load)
        elif kind == Kind.REFUSED:
            wire.field_count(message, 2)
            self._refused(link, f"{message[1]}: {message[2]}")
        else:
            raise Violation(f"message type {kind} before the handshake")

    def _refused(self, link: Link, reason: str) -> None:
        if self.state != REFUSED or self.error != reason:
            log.error("worker at %s refused: %s", self.name, reason)
        self.state = REFUSED
        self.error = reason
        link.abort(reason)

    # -- messages after the handshake ---------------------------------------------------------

    def _report(self, load: WorkerLoad, streams_then: int | None = None) -> None:
        self.load = load
        if streams_then is not None:
            self.streams_at_report = streams_then
        old, new = self.state, str(load.state)
        if old == new:
            return
        self.state = new
        self.engine._state_changed(self, old)

    def _result(self, link: Link, message: list[Any]) -> None:
        wire.field_count(message, 8)
        _, sid, seq, output, error, queue_ms, inference_ms, batch_size, details = message
        stream = self.streams.get(wire.ident(sid, "a stream id"))
        wire.ident(seq, "a frame id")
        if stream is None:
            return  # closed or moved meanwhile
        sent = stream.in_flight.pop(seq, None)
        if sent is None:
            raise Violation(f"a result for frame {seq!r} of stream {sid}, which is not in flight")
        result = _frame_result(stream.endpoint, output, error, (queue_ms, inference_ms, batch_size), details, sent[1])
        stream.on_result(result)
        stream.pump()

    def _stream_error(self, link: Link, message: list[Any]) -> None:
        wire.field_count(message, 2)
        stream = self.streams.pop(wire.ident(message[1], "a stream id"), None)
        if stream is None:
            return
        error = wire.decode_error(message[2])
        log.warning("worker %s could not open a stream of %s: %s", self.label, stream.app_id, error)
        self.engine._replace(stream, self, error if isinstance(error, AppError) else EngineError(str(error)))

    def _reply(self, link: Link, message: list[Any]) -> None:
        wire.field_count(message, 7)
        _, cid, output, error, queue_ms, inference_ms, batch_size, details = message
        call = self.calls.pop(wire.ident(cid, "a call id"), None)
        if call is None:
            return  # cancelled meanwhile
        if error is not None:
            decoded = wire.decode_error(error)
            if isinstance(decoded, StartTimeout):
                if not call.future.done():
                    call.future.set_result(decoded)
                return
        result = _frame_result(call.endpoint, output, error, (queue_ms, inference_ms, batch_size), details, None)
        if not call.future.done():
            call.future.set_result(result)

    def _progress(self, link: Link, message: list[Any]) -> None:
        wire.field_count(message, 2)
        call = self.calls.get(wire.ident(message[1], "a call id"))
        if call is None or call.on_progress is None or not isinstance(message[2], dict):
            return
        try:
            call.on_progress(Partial.model_validate(message[2]))
        except Exception:
            log.exception("a progress callback failed")

    def _pong(self, link: Link, message: list[Any]) -> None:
        wire.field_count(message, 2)
        sent = message[1]
        streams_then = self.streams_at_ping.pop(sent, None) if isinstance(sent, float) else None
        if streams_then is not None:
            self.rtt_ms = (asyncio.get_running_loop().time() - sent) * 1000.0
        self._report(WorkerLoad.from_wire(message[2]), streams_then)

    def _state(self, link: Link, message: list[Any]) -> None:
        wire.field_count(message, 2)
        load = WorkerLoad.from_wire(message[2])
        load.sessions = self.load.sessions  # counted only from PONGs, which pair with a local count
        self._report(load)

    def _error(self, link: Link, message: list[Any]) -> None:
        log.warning("worker %s reported a protocol error: %s", self.label, message[1:3])

    _HANDLERS: ClassVar[dict[int, Callable[[_Worker, Link, list[Any]], None]]] = {
        Kind.RESULT: _result,
        Kind.STREAM_ERROR: _stream_error,
        Kind.REPLY: _reply,
        Kind.PROGRESS: _progress,
        Kind.PONG: _pong,
        Kind.STATE: _state,
        Kind.ERROR: _error,
    }


def _frame_result(
    endpoint: Endpoint,
    output: Any,
    error: Any,
    timings: tuple[Any, Any, Any],
    details: Any,
    tag: Any,
) -> FrameResult:
    """A result as the gateway expects it; a malformed one becomes an engine error for that input.

    ``timings`` is (queue_ms, inference_ms, batch_size); ``details`` what
    :func:`framewire.cluster.wire.result_details` sent.
    """
    queue_ms, inference_ms, batch_size = timings
    out: BaseModel | None = None
    err: AppError | None = None
    if error is not None:
        decoded = wire.decode_error(error)
        err = decoded if isinstance(decoded, AppError) else EngineError(str(decoded))
    elif isinstance(output, dict):
        try:
            out = endpoint.output_model.model_validate(output)
        except ValidationError as exc:
            err = EngineError(f"{endpoint.key}: the worker's output does not fit {endpoint.output_model.__name__}")
            log.error("%s: invalid output from a worker: %s", endpoint.key, exc)
    else:
        raise Violation("a result needs an output map or an error")
    if not (isinstance(queue_ms, int | float) and isinstance(inference_ms, int | float) and type(batch_size) is int):
        raise Violation("a result's timings must be numbers")
    extra = wire.parse_result_details(details)
    return FrameResult(out, err, float(queue_ms), float(inference_ms), batch_size, tag, **extra)


class RemoteEngine:
    """An :class:`~framewire.engine.api.EngineClient` whose apps run in worker processes."""

    def __init__(self, registry: AppRegistry, directory: Directory, options: LinkOptions) -> None:
        self.registry = registry
        self.options = options if options.edge_id else _with_edge_id(options)
        self._directory = directory
        self._workers: dict[WorkerAddress, _Worker] = {}
        self._homeless: set[RemoteStream] = set()
        self._ids = itertools.count(1)
        self._started = False
        self._stopping = False
        self._warm = False  # every app had a ready worker at once
        self._changed = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None
        self.sessions_moved = 0
        self.requests_retried = 0

    # -- EngineClient: lifecycle ---------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Every app has a ready worker; or, once that was so, at least one app still has.

        So an edge stays in service (for the apps it can serve) while all workers of one
        app restart; :meth:`unserved_apps` says which apps are missing.
        """
        if not self._started or self._stopping:
            return False
        unserved = self.unserved_apps()
        return not unserved or (self._warm and len(unserved) < len(self.registry))

    def unserved_apps(self) -> list[str]:
        served = {app for w in self._workers.values() if w.state == WorkerState.READY for app in w.apps}
        return [app.app_id for app in self.registry if app.app_id not in served]

    def worker_status(self) -> list[WorkerStatus]:
        return [w.status() for w in self._workers.values()]

    async def start(self) -> None:
        """Start the directory (and local workers) and connect; returns without waiting for them."""
        self._directory.watch(self._sync)
        await self._directory.start()
        self._started = True
        self._sync()
        self._ticker = asyncio.create_task(self._heartbeats(), name="edge-heartbeats")

    async def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        gone = EngineUnavailable("the engine is shutting down")
        for worker in self._workers.values():
            worker.removed = True
            for call in worker.calls.values():
                if not call.future.done():
                    call.future.set_result(FrameResult(None, gone, 0.0, 0.0, 0))
            worker.calls.clear()
            if worker.link is not None:
                worker.link.close("the edge is stopping")
            if worker.task is not None:
                worker.task.cancel()
        tasks = [w.task for w in self._workers.values() if w.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        await self._directory.stop(timeout_s)
        self._started = False

    def _sync(self) -> None:
        """Follow the directory: connect to new addresses, leave vanished ones."""
        if self._stopping:
            return
        wanted = {address: None for address in self._directory.addresses()}
        for address in list(self._workers):
            if address not in wanted:
                worker = self._workers.pop(address)
                worker.removed = True
                if worker.link is not None:
                    worker.link.abort("the worker left the directory")
                if worker.task is not None:
                    worker.task.cancel()
        for address in wanted:
            if address not in self._workers:
                worker = self._workers[address] = _Worker(self, address)
                worker.task = asyncio.create_task(worker.run(), name=f"link-{address}")

    async def _heartbeats(self) -> None:
        opts = self.options
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(opts.heartbeat_s)
            now = loop.time()
            for worker in list(self._workers.values()):
                link = worker.link
                if link is None or link.closed:
                    continue
                if not link.authenticated:
                    if now - worker.opened_s > HANDSHAKE_TIMEOUT_S:
                        link.abort(
                            f"no handshake within {HANDSHAKE_TIMEOUT_S:g} s: is {worker.name} a FrameWire worker,"
                            " and does it expect TLS (--worker-cafile)?"
                        )
                    continue
                silent_s = now - link.last_received_s
                if silent_s > opts.timeout_s:
                    link.abort(f"worker silent for {silent_s:.1f} s (timeout {opts.timeout_s:g} s)")
                else:
                    if len(worker.streams_at_ping) > 100:  # unanswered pings of a slow worker
                        worker.streams_at_ping.clear()
                    worker.streams_at_ping[now] = len(worker.streams)
                    link.send([Kind.PING, now])

    # -- placement ----------------------------------------------------------------------------

    def _choose(self, app_id: str, exclude: _Worker | None = None) -> _Worker | None:
        candidates = {
            w.name: w
            for w in self._workers.values()
            if w.state == WorkerState.READY and w.link is not None and app_id in w.apps and w is not exclude
        }
        key = placement.least_loaded(
            placement.Candidate(
                name,
                w.sessions_estimate(),
                len(w.calls) + w.load.calls,
                max((e.queue_ms for e in w.load.endpoints.values()), default=0.0),
            )
            for name, w in candidates.items()
        )
        return None if key is None else candidates[key]

    def _place(self, stream: RemoteStream, exclude: _Worker | None = None) -> bool:
        worker = self._choose(stream.app_id, exclude)
        if worker is None:
            stream.worker = None
            self._homeless.add(stream)
            if stream.waiting is not None:
                _, tag = stream.waiting
                stream.waiting = None
                stream.fail([tag], EngineUnavailable(f"no worker serves {stream.app_id} right now; retry shortly"))
            return False
        assert worker.link is not None
        self._homeless.discard(stream)
        stream.worker = worker
        stream.sid = next(self._ids)
        stream.moving = False
        worker.streams[stream.sid] = stream
        worker.link.send([Kind.OPEN, stream.sid, stream.endpoint.key, stream.window, stream.options])
        return True

    def _detach(self, stream: RemoteStream) -> None:
        worker = stream.worker
        if worker is not None:
            worker.streams.pop(stream.sid, None)
            if worker.link is not None and not worker.link.closed:
                worker.link.send([Kind.CLOSE, stream.sid])
        stream.worker = None

    def _move(self, stream: RemoteStream) -> None:
        """A moving stream has nothing left at its draining worker: reopen it elsewhere."""
        old = stream.worker
        self._detach(stream)
        if self._place(stream, exclude=old):
            self.sessions_moved += 1

    def _replace(self, stream: RemoteStream, refused_by: _Worker, error: AppError) -> None:
        """A worker refused to open ``stream``: its frames never ran, so the newest is sent
        elsewhere and older ones are answered with the refusal."""
        stream.worker = None
        sent = list(stream.in_flight.values())
        stream.in_flight.clear()
        if sent and stream.waiting is None:
            stream.waiting = sent.pop()
        stream.fail([tag for _, tag in sent], error)
        if self._place(stream, exclude=refused_by):
            stream.pump()

    def _lost(self, worker: _Worker, reason: str) -> None:
        streams, calls = list(worker.streams.values()), list(worker.calls.values())
        worker.streams.clear()
        worker.calls.clear()
        if self._stopping:  # the edge closes its links itself: nothing moves, nothing runs again
            return
        if streams or calls:
            worker.failovers += 1
            log.warning(
                "worker %s (%s) lost (%s): moving %d sessions, retrying %d requests",
                worker.label,
                worker.name,
                reason,
                len(streams),
                len(calls),
            )
        for stream in streams:
            tags = [tag for _, tag in stream.in_flight.values()]
            stream.in_flight.clear()
            stream.worker = None
            moved = self._place(stream, exclude=worker)
            if moved:
                self.sessions_moved += 1
            where = "the session goes on on another worker" if moved else "no other worker serves this app yet"
            stream.fail(tags, EngineFault(f"the worker running this frame went away ({reason}); {where}"))
            stream.pump()
        for call in calls:
            if not call.future.done():
                call.future.set_result(_LOST)
        self._pulse()

    def _state_changed(self, worker: _Worker, old: str) -> None:
        if not self._warm and not self.unserved_apps():
            self._warm = True
        if worker.state == WorkerState.READY:
            for stream in list(self._homeless):
                if stream.app_id in worker.apps and not stream.closed:
                    self._place(stream)
        elif worker.state == WorkerState.DRAINING:
            log.info("worker %s (%s) drains: moving its %d sessions", worker.label, worker.name, len(worker.streams))
            for stream in list(worker.streams.values()):
                if self._choose(stream.app_id, exclude=worker) is not None:
                    stream.moving = True
                    stream.pump()
        self._pulse()

    def _pulse(self) -> None:
        """Wake requests waiting for a worker."""
        self._changed.set()
        self._changed = asyncio.Event()

    # -- EngineClient: streams ------------------------------------------------------------------

    def open_stream(
        self,
        endpoint: Endpoint,
        capacity: int,
        on_result: ResultCallback,
        *,
        target_latency_ms: float | None = None,
        similarity_threshold: float = 0.0,
    ) -> RemoteStream:
        options = wire.stream_options(target_latency_ms, similarity_threshold)
        try:
            wire.parse_stream_options(options)
        except Violation as exc:
            raise ValueError(str(exc)) from None
        if not self._started or self._stopping:
            raise EngineUnavailable("the engine is not running")
        stream = RemoteStream(self, endpoint, capacity, on_result, options)
        if not self._place(stream):
            self._homeless.discard(stream)
            raise EngineUnavailable(f"no worker serves {endpoint.app.app_id} right now; retry shortly")
        return stream

    def submit(self, stream: Any, inp: BaseModel, tag: Any) -> Any:
        assert isinstance(stream, RemoteStream), "a stream of another engine"
        if tag is None:
            raise ValueError("tag must not be None")
        if stream.closed:
            raise EngineUnavailable("the stream is closed")
        stream.endpoint.admit(inp)  # over a limit: refused here, before it travels to a worker
        if stream.worker is None and not self._place(stream):
            raise EngineUnavailable(f"no worker serves {stream.app_id} right now; retry shortly")
        if stream.can_send():
            stream.send(inp, tag)
            return None
        old = stream.waiting
        stream.waiting = (inp, tag)
        if old is None:
            return None
        stream._dropped += 1
        return old[1]

    def weights_of(self, app: App) -> WeightsInfo | None:
        """As the workers that serve ``app`` last reported (a ready one's word first)."""
        serving = [w for w in self._workers.values() if app.app_id in w.apps and app.app_id in w.load.weights]
        serving.sort(key=lambda w: w.state != WorkerState.READY)
        return serving[0].load.weights[app.app_id] if serving else None

    def close_stream(self, stream: Any) -> int:
        assert isinstance(stream, RemoteStream), "a stream of another engine"
        if stream.closed:
            return 0
        stream.closed = True
        discarded = len(stream.in_flight) + (stream.waiting is not None)
        stream.in_flight.clear()
        stream.waiting = None
        self._homeless.discard(stream)
        self._detach(stream)
        return discarded

    # -- EngineClient: requests -----------------------------------------------------------------

    async def _worker_for(self, app_id: str, deadline: float | None) -> _Worker | None:
        """A ready worker serving ``app_id``, waiting for one until ``deadline`` (loop time)
        or, without one, for ``wait_for_worker_s``."""
        loop = asyncio.get_running_loop()
        until = deadline if deadline is not None else loop.time() + self.options.wait_for_worker_s
        while True:
            worker = self._choose(app_id)
            if worker is not None or self._stopping:
                return worker
            left = until - loop.time()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._changed.wait()

    async def call(
        self,
        endpoint: Endpoint,
        inp: BaseModel,
        *,
        priority: int = 0,
        on_progress: ProgressCallback | None = None,
        start_timeout_s: float | None = None,
    ) -> FrameResult:
        if not self._started or self._stopping:
            raise EngineUnavailable("the engine is not running")
        loop = asyncio.get_running_loop()
        app_id = endpoint.app.app_id
        try:
            endpoint.admit(inp)  # over a limit: refused here, before it travels to a worker
        except AppError as exc:
            return FrameResult(None, exc, 0.0, 0.0, 0)
        deadline = None if start_timeout_s is None else loop.time() + start_timeout_s
        fields = wire.dump(inp)
        lost = 0
        while True:
            worker = await self._worker_for(app_id, deadline)
            if worker is None or worker.link is None:
                if deadline is not None and start_timeout_s is not None and not self._stopping:
                    raise StartTimeout(start_timeout_s)
                return FrameResult(
                    None, EngineUnavailable(f"no worker serves {app_id} right now; retry shortly"), 0.0, 0.0, 0
                )
            cid = next(self._ids)
            call = _Call(cid, endpoint, on_progress, loop.create_future())
            worker.calls[cid] = call
            timeout_s = None if deadline is None else max(0.001, deadline - loop.time())
            worker.link.send([Kind.CALL, cid, endpoint.key, priority, timeout_s, on_progress is not None, fields])
            try:
                outcome = await call.future
            except asyncio.CancelledError:
                if worker.calls.pop(cid, None) is not None and worker.link is not None:
                    worker.link.send([Kind.CANCEL, cid])
                raise
            if outcome is _LOST:
                lost += 1
                if lost > self.options.call_retries:
                    reason = f"the worker running this request went away {lost} times; it is not run again"
                    return FrameResult(None, EngineFault(reason), 0.0, 0.0, 0)
                self.requests_retried += 1
                log.info("a request to %s runs again: its worker %s went away", app_id, worker.label)
                continue
            if isinstance(outcome, StartTimeout):
                raise outcome
            assert isinstance(outcome, FrameResult)
            return outcome


def _with_edge_id(options: LinkOptions) -> LinkOptions:
    import dataclasses

    return dataclasses.replace(options, edge_id=f"{socket.gethostname()}:{os.getpid()}")
