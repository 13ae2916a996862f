"""The worker side of the link: an engine served to every edge that proves the secret.

One :class:`WorkerServer` owns one engine (one device, a set of apps) and accepts links
from any number of edges. Realtime streams and requests from all of them meet in the
engine's batch schedulers, so a batch mixes frames from different edges. Per link it
keeps the streams and requests that edge opened; when the link ends (the edge went away
or went silent past the heartbeat timeout) they are closed and cancelled.

States: ``starting`` while the apps set up (links are accepted, nothing is routed),
``ready``, ``restarting`` while an app rebuilds after a fault, ``draining`` after
:meth:`WorkerServer.drain` began: new streams and requests are refused, edges move their
sessions elsewhere, what was taken finishes, then the links close.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from framewire.cluster import wire
from framewire.cluster.link import Link
from framewire.cluster.registry import Announcer
from framewire.cluster.sockets import LinkSocket, parse_open
from framewire.cluster.wire import EndpointLoad, Kind, Violation, WorkerInfo, WorkerLoad, WorkerState
from framewire.engine.api import (
    MAX_BUFFERING_RANGE,
    AppError,
    Endpoint,
    EngineClient,
    EngineUnavailable,
    FrameResult,
    InputError,
    SocketClosed,
    SocketEndpoint,
    StartTimeout,
    Stream,
    WeightsInfo,
)

log = logging.getLogger("framewire.worker")

#: A link that has not completed the handshake in this time is dropped.
HANDSHAKE_TIMEOUT_S = 5.0
#: Weight of the newest batch in the reported moving averages.
EWMA_WEIGHT = 0.2
#: Largest per-stream window an edge may ask for: the largest buffering plus the frame running.
MAX_STREAM_CAPACITY = MAX_BUFFERING_RANGE[1] + 1


class BatchStats:
    """Moving averages of each endpoint's batches, fed by the engine's ``on_batch`` observer.

    ``on_batch`` runs on engine threads; reads take the same lock.
    """

    def __init__(self, max_batch_sizes: dict[str, int] | None = None, chain: Callable[[Any], None] | None = None):
        self.max_batch_sizes = dict(max_batch_sizes or {})
        self._chain = chain
        self._lock = threading.Lock()
        self._loads: dict[str, EndpointLoad] = {}

    def on_batch(self, record: Any) -> None:
        """``framewire.engine.host.BatchRecord``-shaped: endpoint_key, size, queue_ms."""
        key, size = str(record.endpoint_key), int(record.size)
        limit = max(1, self.max_batch_sizes.get(key, size))
        with self._lock:
            load = self._loads.get(key)
            if load is None:
                load = self._loads[key] = EndpointLoad(size / limit, float(size), float(record.queue_ms), 0)
            else:
                w = EWMA_WEIGHT
                load.batch_fill += w * (size / limit - load.batch_fill)
                load.batch_size += w * (size - load.batch_size)
                load.queue_ms += w * (float(record.queue_ms) - load.queue_ms)
            load.batches += 1
        if self._chain is not None:
            self._chain(record)

    def snapshot(self) -> dict[str, EndpointLoad]:
        with self._lock:
            return {k: EndpointLoad(v.batch_fill, v.batch_size, v.queue_ms, v.batches) for k, v in self._loads.items()}


@dataclass(eq=False)
class _Stream:
    endpoint: Endpoint
    stream: Stream


@dataclass(eq=False)
class _EdgeConnection:
    """One authenticated (or authenticating) edge: its streams and requests."""

    server: WorkerServer
    link: Link | None = None
    edge_id: str = "?"
    nonce: bytes = field(default_factory=wire.new_nonce)
    opened_s: float = field(default_factory=time.monotonic)
    streams: dict[int, _Stream] = field(default_factory=dict)
    calls: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    sockets: dict[int, _Socket] = field(default_factory=dict)
    timeout_s: float = 0.0  # silence after which the edge is dropped (set at the handshake)

    @property
    def sessions(self) -> int:
        """Realtime streams and raw sockets this edge has open here."""
        return len(self.streams) + len(self.sockets)

    # -- Handler ---------------------------------------------------------------------------

    def on_open(self, link: Link) -> None:
        self.link = link
        self.server._links.add(self)
        link.send([Kind.HELLO, wire.PROTOCOL_VERSION, self.server.worker_id, self.nonce])

    def on_writable(self, link: Link) -> None:
        return None

    def on_lost(self, link: Link, reason: str) -> None:
        server = self.server
        server._links.discard(self)
        if link.authenticated:
            log.info("edge %s (%s) left: %s", self.edge_id, link.peer, reason)
        for entry in self.streams.values():
            server.engine.close_stream(entry.stream)
        self.streams.clear()
        for task in self.calls.values():
            task.cancel()
        self.calls.clear()
        for sock in list(self.sockets.values()):
            sock.remote.on_close(1001, "the edge went away")
        server._changed()

    def on_message(self, link: Link, message: list[Any]) -> None:
        kind = message[0]
        if not link.authenticated:
            if kind != Kind.AUTH:
                raise Violation(f"expected AUTH, got message type {kind}")
            self._auth(link, message)
            return
        handler = self._HANDLERS.get(kind)
        if handler is None:
            raise Violation(f"unknown message type {kind}")
        handler(self, link, message)

    # -- handshake -------------------------------------------------------------------------

    def _auth(self, link: Link, message: list[Any]) -> None:
        wire.field_count(message, 5)
        _, version, edge_id, edge_nonce, proof, hints = message
        server = self.server
        if version != wire.PROTOCOL_VERSION:
            self._refuse(link, "VERSION", f"link protocol {version!r} is not {wire.PROTOCOL_VERSION}: upgrade")
            return
        if not wire.nonce_ok(edge_nonce) or not wire.proof_ok(
            wire.edge_proof(server.secret, self.nonce, edge_nonce), proof
        ):
            server.auth_failures += 1
            log.warning("edge at %s failed the handshake: wrong worker secret", link.peer)
            self._refuse(link, "AUTH_FAILED", "wrong worker secret: give edge and worker the same --worker-secret")
            return
        self.edge_id = str(edge_id)[:200]
        self.timeout_s = server.edge_timeout_s
        heartbeat_s = hints.get("heartbeat_s") if isinstance(hints, dict) else None
        if isinstance(heartbeat_s, int | float) and heartbeat_s > 0:  # never drop an edge between its beats
            self.timeout_s = max(server.edge_timeout_s, 3.0 * float(heartbeat_s))
        link.authenticated = True
        info = WorkerInfo(server.worker_id, server.device, os.getpid(), server.apps, server.load())
        link.send([Kind.WELCOME, wire.worker_proof(server.secret, edge_nonce, self.nonce), info.to_wire()])
        log.info("edge %s connected from %s", self.edge_id, link.peer)
        server._changed()

    def _refuse(self, link: Link, code: str, reason: str) -> None:
        link.send([Kind.REFUSED, code, reason])
        link.close(reason)

    # -- realtime streams ------------------------------------------------------------------

    def _open(self, link: Link, message: list[Any]) -> None:
        wire.field_count(message, 4)
        _, sid, key, capacity, options = message
        target_latency_ms, similarity_threshold = wire.parse_stream_options(options)
        if type(sid) is not int or not isinstance(key, str) or type(capacity) is not int:
            raise Violation("OPEN needs stream id, endpoint key, capacity")
        if sid in self.streams:
            raise Violation(f"stream {sid} is already open")
        if not 1 <= capacity <= MAX_STREAM_CAPACITY:
            raise Violation(f"capacity must be 1..{MAX_STREAM_CAPACITY}, got {capacity}")
        server = self.server
        try:
            endpoint = server.accepting(key)
            stream = server.engine.open_stream(
                endpoint,
                capacity,
                functools.partial(self._result, sid),
                target_latency_ms=target_latency_ms,
                similarity_threshold=similarity_threshold,
            )
        except AppError as exc:
            link.send([Kind.STREAM_ERROR, sid, wire.encode_error(exc)])
            return
        self.streams[sid] = _Stream(endpoint, stream)
        server._changed()

    def _frame(self, link: Link, message: list[Any]) -> None:
        wire.field_count(message, 3)
        _, sid, seq, fields = message
        entry = self.streams.get(wire.ident(sid, "a stream id"))
        wire.ident(seq, "a frame id")
        if entry is None:
            return  # closed, or refused with STREAM_ERROR: the edge already failed its frames
        if not isinstance(fields, dict):
            raise Violation("a frame's input must be a map")
        try:
            dropped = self.server.engine.submit(entry.stream, _validated(entry.endpoint, fields), seq)
        except AppError as exc:
            link.send([Kind.RESULT, sid, seq, None, wire.encode_error(exc), 0.0, 0.0, 0, None])
            return
        if dropped is not None:  # the edge sent more than its window: tell it, like any other answer
            superseded = EngineUnavailable("superseded by a newer frame at the worker", code="FRAME_SUPERSEDED")
            link.send([Kind.RESULT, sid, dropped, None, wire.encode_error(superseded), 0.0, 0.0, 0, None])

    def _result(self, sid: int, result: FrameResult) -> None:
        link = self.link
        if link is None or link.closed or sid not in self.streams:
            return
        output = None if result.output is None else wire.dump(result.output)
        error = None if result.error is None else wire.encode_error(result.error)
        timings = (result.queue_ms, result.inference_ms, result.batch_size)
        link.send([Kind.RESULT, sid, result.tag, output, error, *timings, wire.result_details(result)])

    def _close(self, link: Link, message: list[Any]) -> None:
        wire.field_count(message, 1)
        entry = self.streams.pop(wire.ident(message[1], "a stream id"), None)
        if entry is not None:
            self.server.engine.close_stream(entry.stream)
            self.server._changed()

    # -- requests --------------------------------------------------------------------------

    def _call(self, link: Link, message: list[Any]) -> None:
        wire.field_count(message, 6)
        _, cid, key, priority, start_timeout_s, wants_progress, fields = message
        if type(cid) is not int or not isinstance(key, str) or type(priority) is not int:
            raise Violation("CALL needs call id, endpoint key, priority")
        if start_timeout_s is not None and not isinstance(start_timeout_s, int | float):
            raise Violation("CALL: start_timeout_s must be a number or nil")
        if not isinstance(fields, dict):
            raise Violation("a request's input must be a map")
        if cid in self.calls:
            raise Violation(f"call {cid} is already running")
        server = self.server
        try:
            endpoint = server.accepting(key)
            inp = _validated(endpoint, fields)
        except AppError as exc:
            link.send([Kind.REPLY, cid, None, wire.encode_error(exc), 0.0, 0.0, 0, None])
            return
        progress = functools.partial(self._progress, cid) if wants_progress else None
        task = asyncio.create_task(self._run_call(link, cid, endpoint, inp, priority, progress, start_timeout_s))
        self.calls[cid] = task
        server._changed()

    async def _run_call(
        self,
        link: Link,
        cid: int,
        endpoint: Endpoint,
        inp: BaseModel,
        priority: int,
        progress: Callable[[BaseModel], None] | None,
        start_timeout_s: float | None,
    ) -> None:
        try:
            result = await self.server.engine.call(
                endpoint, inp, priority=priority, on_progress=progress, start_timeout_s=start_timeout_s
            )
        except (StartTimeout, AppError) as exc:
            link.send([Kind.REPLY, cid, None, wire.encode_error(exc), 0.0, 0.0, 0, None])
        else:
            output = None if result.output is None else wire.dump(result.output)
            error = None if result.error is None else wire.encode_error(result.error)
            timings = (result.queue_ms, result.inference_ms, result.batch_size)
            link.send([Kind.REPLY, cid, output, error, *timings, wire.result_details(result)])
        finally:
            if self.calls.get(cid) is asyncio.current_task():
                del self.calls[cid]
                self.server._changed()

    def _progress(self, cid: int, partial: BaseModel) -> None:
        link = self.link
        if link is not None and link.writable and cid in self.calls:  # previews: skip when the link is behind
            link.send([Kind.PROGRESS, cid, wire.dump(partial)])

    def _cancel(self, link: Link, message: list[Any]) -> None:
        wire.field_count(message, 1)
        task = self.calls.get(wire.ident(message[1], "a call id"))
        if task is not None:
            task.cancel()

    # -- liveness ----------------------------------------------------------------------------

    def _ping(self, link: Link, message: list[Any]) -> None:
        wire.field_count(message, 1)
        link.send([Kind.PONG, message[1], self.server.load().to_wire()])

    def _error(self, link: Link, message: list[Any]) -> None:
        log.warning("edge %s reported a protocol error: %s", self.edge_id, message[1:3])

    # -- raw app sockets ---------------------------------------------------------------------

    def _socket_open(self, link: Link, message: list[Any]) -> None:
        sid, key, query = parse_open(message)
        if sid in self.sockets:
            raise Violation(f"socket {sid} is already open")
        remote = LinkSocket(sid, link.send, on_closed=self._socket_gone)
        server = self.server
        endpoint = server.socket_endpoints.get(key)
        if endpoint is None or server.state is not WorkerState.READY:
            reason = f"this worker does not serve {key}" if endpoint is None else f"the worker is {server.state}"
            remote.close(1013, reason)
            return
        entry = self.sockets[sid] = _Socket(remote)
        entry.task = asyncio.create_task(self._run_socket(entry, endpoint, query), name=f"socket-{sid}")
        server._changed()

    async def _run_socket(self, entry: _Socket, endpoint: SocketEndpoint, query: dict[str, str]) -> None:
        """Carry one socket between the edge and the app's handler until either side closes."""
        remote = entry.remote
        try:
            line = await self.server.engine.open_socket(endpoint, query)
        except AppError as exc:
            remote.close(1013, exc.reason)
            return
        pumps = [
            asyncio.create_task(_pump(remote.receive, line.send)),
            asyncio.create_task(_pump(line.receive, remote.send)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            closed = remote.closed
            if closed is not None:  # the edge (its client) ended it
                line.close(closed.code, closed.reason)
            else:  # the app ended it: say how
                ended = _closed_by(pumps[1])
                remote.close(ended.code, ended.reason)
                line.close(ended.code, ended.reason)

    def _socket_gone(self, remote: LinkSocket) -> None:
        entry = self.sockets.pop(remote.sid, None)
        if entry is not None:
            self.server._changed()

    def _socket_message(self, message: list[Any], count: int) -> LinkSocket | None:
        wire.field_count(message, count)
        entry = self.sockets.get(wire.ident(message[1], "a socket id"))
        return None if entry is None else entry.remote

    def _socket_data(self, link: Link, message: list[Any]) -> None:
        remote = self._socket_message(message, 2)
        if remote is not None:
            remote.on_data(message[2])

    def _socket_ack(self, link: Link, message: list[Any]) -> None:
        remote = self._socket_message(message, 2)
        if remote is not None:
            remote.on_ack(message[2])

    def _socket_close(self, link: Link, message: list[Any]) -> None:
        remote = self._socket_message(message, 3)
        if remote is not None:
            remote.on_close(message[2], message[3])

    _HANDLERS: ClassVar[dict[int, Callable[[_EdgeConnection, Link, list[Any]], None]]] = {
        Kind.OPEN: _open,
        Kind.FRAME: _frame,
        Kind.CLOSE: _close,
        Kind.CALL: _call,
        Kind.CANCEL: _cancel,
        Kind.PING: _ping,
        Kind.ERROR: _error,
        Kind.SOCKET_OPEN: _socket_open,
        Kind.SOCKET_DATA: _socket_data,
        Kind.SOCKET_ACK: _socket_ack,
        Kind.SOCKET_CLOSE: _socket_close,
    }


@dataclass(eq=False)
class _Socket:
    """A raw app socket an edge opened here: the edge's end of it and the task carrying it."""

    remote: LinkSocket
    task: asyncio.Task[None] | None = None


async def _pump(receive: Callable[[], Any], send: Callable[[str | bytes], Any]) -> None:
    """Move messages from one end to the other until either ends (SocketClosed)."""
    while True:
        await send(await receive())


def _closed_by(pump: asyncio.Task[None]) -> SocketClosed:
    """How the app side ended, from the pump reading it (1011 when it failed otherwise)."""
    if pump.done() and not pump.cancelled() and isinstance(pump.exception(), SocketClosed):
        exc = pump.exception()
        assert isinstance(exc, SocketClosed)
        return exc
    return SocketClosed(1011, "the socket ended on the worker")


def _validated(endpoint: Endpoint, fields: dict[str, Any]) -> BaseModel:
    """The input as the endpoint's model; InputError when it does not fit (the edge
    validated it already, so this means the two run different app code)."""
    try:
        return endpoint.input_model.model_validate(fields)
    except ValidationError as exc:
        raise InputError(f"the worker refused the input: {exc.errors()[0].get('msg', exc)}") from None


class WorkerServer:
    """Serves ``engine`` to edges; see the module docstring."""

    def __init__(
        self,
        engine: EngineClient,
        *,
        secret: bytes,
        worker_id: str,
        device: str = "cpu",
        stats: BatchStats | None = None,
        edge_timeout_s: float = 3.0,
        max_message_bytes: int = wire.MAX_MESSAGE_BYTES,
    ) -> None:
        if len(secret) < wire.MIN_SECRET_BYTES:
            raise ValueError(f"the worker secret must be at least {wire.MIN_SECRET_BYTES} bytes")
        self.engine = engine
        self.secret = secret
        self.worker_id = worker_id
        self.device = device
        self.stats = stats if stats is not None else BatchStats()
        self.edge_timeout_s = edge_timeout_s
        self.max_message_bytes = max_message_bytes
        registry = engine.registry
        self.apps = wire.describe_apps(registry)
        self.endpoints: dict[str, Endpoint] = {
            ep.key: ep for app in registry for ep in registry.endpoints_of(app).values()
        }
        self.socket_endpoints: dict[str, SocketEndpoint] = {
            ep.key: ep for app in registry for ep in registry.sockets_of(app).values()
        }
        self.auth_failures = 0
        self._links: set[_EdgeConnection] = set()
        self._started = False
        self._weights: dict[str, WeightsInfo] = {}  # known once the apps are set up
        self._draining = False
        self._reported: WorkerState | None = None
        self._servers: list[asyncio.Server] = []
        self._watch: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        #: Called (on the event loop) after the worker's state changed, e.g. to announce it.
        self.state_listeners: list[Callable[[], None]] = []

    # -- state -------------------------------------------------------------------------------

    @property
    def state(self) -> WorkerState:
        if self._draining:
            return WorkerState.DRAINING
        if not self._started:
            return WorkerState.STARTING
        return WorkerState.READY if self.engine.ready else WorkerState.RESTARTING

    def accepting(self, key: str) -> Endpoint:
        """The endpoint ``key`` if this worker serves it and takes new work; else EngineUnavailable."""
        endpoint = self.endpoints.get(key)
        if endpoint is None:
            raise EngineUnavailable(f"this worker does not serve {key}")
        if self._draining:
            raise EngineUnavailable("the worker is draining")
        return endpoint

    def load(self) -> WorkerLoad:
        edges = [c for c in self._links if c.link is not None and c.link.authenticated]
        return WorkerLoad(
            self.state,
            sessions=sum(c.sessions for c in edges),
            calls=sum(len(c.calls) for c in edges),
            edges=len(edges),
            endpoints=self.stats.snapshot(),
            weights=self._weights,
        )

    def _changed(self) -> None:
        """Streams, requests or links changed: wake a drain waiting for the worker to empty."""
        if not any(c.streams or c.calls or c.sockets for c in self._links):
            self._idle.set()
        else:
            self._idle.clear()

    def _broadcast_state(self) -> None:
        state = self.state
        if state is self._reported:
            return
        self._reported = state
        load = self.load().to_wire()
        for conn in list(self._links):
            if conn.link is not None and conn.link.authenticated:
                conn.link.send([Kind.STATE, str(state), load])
        for listener in list(self.state_listeners):
            listener()

    # -- serving -----------------------------------------------------------------------------

    def protocol(self) -> Link:
        """A protocol instance for one accepted connection."""
        return Link(_EdgeConnection(self), max_message_bytes=self.max_message_bytes)

    async def listen(self, sock: Any, ssl_context: ssl.SSLContext | None = None) -> None:
        """Accept edges on an already bound, listening socket."""
        loop = asyncio.get_running_loop()
        self._servers.append(await loop.create_server(self.protocol, sock=sock, ssl=ssl_context))
        if self._watch is None:
            self._watch = asyncio.create_task(self._watchdog(), name="worker-watchdog")

    async def start_engine(self) -> None:
        """Set up the apps (edges may connect meanwhile; they see ``starting``)."""
        await self.engine.start()
        # What each app's weights are, for edges' catalogs and demo pages: fixed once set up,
        # so read once here rather than for every load report.
        infos = ((app.app_id, app.weights_info()) for app in self.engine.registry)
        self._weights = {app_id: info for app_id, info in infos if info is not None}
        self._started = True
        self._broadcast_state()

    async def _watchdog(self, period_s: float = 0.2) -> None:
        """Drops links past the handshake or heartbeat timeout; announces state changes."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period_s)
            now = loop.time()
            for conn in list(self._links):
                link = conn.link
                if link is None or link.closed:
                    continue
                if not link.authenticated and time.monotonic() - conn.opened_s > HANDSHAKE_TIMEOUT_S:
                    link.abort("no handshake within the timeout")
                elif link.authenticated and now - link.last_received_s > conn.timeout_s:
                    link.abort(f"edge {conn.edge_id} silent for {now - link.last_received_s:.1f} s")
            self._broadcast_state()

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Refuse new work, tell the edges, let streams move and requests finish (bounded), close."""
        self._draining = True
        self._broadcast_state()
        for server in self._servers:
            server.close()  # no new edges
        self._changed()
        busy = sum(c.sessions + len(c.calls) for c in self._links)
        log.info("draining: %d streams, sockets and requests still open", busy)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        await self.close()

    async def close(self) -> None:
        """Close every link and stop the engine."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for server in self._servers:
            server.close()
        for conn in list(self._links):
            if conn.link is not None:
                conn.link.close("the worker is stopping")
        await asyncio.sleep(0)  # let the closes go out
        await self.engine.stop()

    def connections(self) -> Iterable[_EdgeConnection]:
        return list(self._links)


async def run(
    server: WorkerServer,
    sockets: list[Any],
    *,
    ssl_context: ssl.SSLContext | None = None,
    drain_timeout_s: float = 30.0,
    on_ready: Callable[[], None] | None = None,
    parent_pid: int | None = None,
    announcer: Announcer | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (then drain, bounded by ``drain_timeout_s``); returns an exit status.

    A second signal stops waiting for the drain. With ``parent_pid`` (a worker an edge
    started), the worker also stops when that process is gone. With ``announcer``, the
    worker holds a lease in the worker registry from its first listen until it has
    drained (its state changes are announced at once).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            stop.set()
        else:
            log.warning("second signal: stopping without waiting")
            os._exit(1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    orphan_watch = None
    if parent_pid is not None:
        orphan_watch = asyncio.create_task(_watch_parent(parent_pid, stop))
    for sock in sockets:
        await server.listen(sock, ssl_context)
    if announcer is not None:
        server.state_listeners.append(announcer.poke)
        announcer.start()
    starting = asyncio.create_task(server.start_engine())
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
    if starting in done:
        exc = starting.exception()
        if exc is not None:
            log.error("the worker's apps did not start: %s", exc)
            await server.close()
            if announcer is not None:
                await announcer.stop()
            return 1
        if on_ready is not None:
            on_ready()
        await stopping
    else:
        starting.cancel()
    if orphan_watch is not None:
        orphan_watch.cancel()
    log.info("stopping: draining for up to %.0f s", drain_timeout_s)
    await server.drain(drain_timeout_s)
    if announcer is not None:
        await announcer.stop()
    return 0


async def _watch_parent(parent_pid: int, stop: asyncio.Event, period_s: float = 0.5) -> None:
    while os.getppid() == parent_pid:
        await asyncio.sleep(period_s)
    log.warning("the edge that started this worker (pid %d) is gone; stopping", parent_pid)
    stop.set()
