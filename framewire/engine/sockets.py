"""Raw WebSocket handlers (:func:`framewire.engine.api.websocket`) on an event loop of their own.

The in-process engine runs every app's socket handlers on one thread with its own event
loop, so an app's code never runs on the server's loop. Messages cross between the two
loops through a pair of :class:`Channel`\\s per socket, each bounded by a window of
messages: a side that sends faster than the other reads waits (backpressure both ways,
nothing is dropped and nothing grows without bound).

A socket ends when either side closes: the client (the server's side calls
:meth:`LocalSocketLine.close`) or the app (its handler returns, calls
:meth:`framewire.engine.api.Socket.close`, or raises: code 1011). A handler still running
:data:`CLOSE_GRACE_S` after its client left is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

from framewire.engine.api import EngineUnavailable, Socket, SocketClosed, SocketEndpoint

log = logging.getLogger("framewire.engine")

#: Messages one direction of a socket holds before its sender waits.
WINDOW = 16
#: Seconds a handler may run on after its client left before it is cancelled.
CLOSE_GRACE_S = 5.0
#: Close code of a socket whose handler failed (RFC 6455: internal error).
INTERNAL_ERROR = 1011
#: Close code when the engine stops (going away).
GOING_AWAY = 1001


def _wake(future: asyncio.Future[None] | None) -> None:
    """Resolve ``future`` from any thread (on its own loop); a closed loop has nobody waiting."""
    if future is None:
        return

    def done() -> None:
        if not future.done():
            future.set_result(None)

    try:
        future.get_loop().call_soon_threadsafe(done)
    except RuntimeError:
        pass


class Channel:
    """One direction of a socket: at most ``window`` messages, read on one loop, written on another.

    :meth:`put` waits while the channel is full; :meth:`get` while it is empty. After
    :meth:`close`, :meth:`get` returns what is left, then raises :class:`SocketClosed`;
    :meth:`put` raises it at once. Thread-safe.
    """

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self._items: deque[str | bytes] = deque()
        self._lock = threading.Lock()
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None
        self._closed: SocketClosed | None = None

    @property
    def closed(self) -> SocketClosed | None:
        return self._closed

    async def put(self, message: str | bytes) -> None:
        while True:
            with self._lock:
                if self._closed is not None:
                    raise SocketClosed(self._closed.code, self._closed.reason)
                if len(self._items) < self.window:
                    self._items.append(message)
                    reader, self._reader = self._reader, None
                    break
                waiter = self._writer = asyncio.get_running_loop().create_future()
            await waiter
        _wake(reader)

    async def get(self) -> str | bytes:
        while True:
            with self._lock:
                if self._items:
                    message = self._items.popleft()
                    writer, self._writer = self._writer, None
                    break
                if self._closed is not None:
                    raise SocketClosed(self._closed.code, self._closed.reason)
                waiter = self._reader = asyncio.get_running_loop().create_future()
            await waiter
        _wake(writer)
        return message

    def close(self, code: int, reason: str = "") -> None:
        """No more messages after those held; the first close's code and reason stand."""
        with self._lock:
            if self._closed is None:
                self._closed = SocketClosed(code, reason)
            reader, writer = self._reader, self._writer
            self._reader = self._writer = None
        _wake(reader)
        _wake(writer)


class _AppSocket(Socket):
    """What the handler is given."""

    def __init__(self, path: str, query: Mapping[str, str], inbox: Channel, outbox: Channel) -> None:
        self.path = path
        self.query = dict(query)
        self._inbox = inbox
        self._outbox = outbox

    async def receive(self) -> str | bytes:
        return await self._inbox.get()

    async def send(self, message: str | bytes) -> None:
        if not isinstance(message, str | bytes):
            raise TypeError(f"a socket message is str or bytes, not {type(message).__name__}")
        await self._outbox.put(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._outbox.close(code, reason)
        self._inbox.close(code, reason)


class LocalSocketLine:
    """The server's end of a socket whose handler runs on this process's socket loop."""

    def __init__(self, inbox: Channel, outbox: Channel, on_client_close: Any) -> None:
        self._to_app = inbox
        self._from_app = outbox
        self._on_client_close = on_client_close

    async def send(self, message: str | bytes) -> None:
        await self._to_app.put(message)

    async def receive(self) -> str | bytes:
        return await self._from_app.get()

    def close(self, code: int = 1000, reason: str = "") -> None:
        self._to_app.close(code, reason)
        self._from_app.close(code, reason)
        self._on_client_close()


class SocketHost:
    """The thread and event loop the socket handlers of one engine run on."""

    def __init__(self, name: str = "engine-sockets", window: int = WINDOW, close_grace_s: float = CLOSE_GRACE_S):
        self.name = name
        self.window = window
        self.close_grace_s = close_grace_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()
        self._stopping = False

    @property
    def open_sockets(self) -> int:
        return len(self._tasks)

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._stopping:
                raise EngineUnavailable("the engine is shutting down")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def main() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=main, name=self.name, daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def open(self, endpoint: SocketEndpoint, query: Mapping[str, str]) -> LocalSocketLine:
        """Start ``endpoint``'s handler on a new socket; returns the server's end of it."""
        loop = self._ensure()
        inbox, outbox = Channel(self.window), Channel(self.window)
        socket = _AppSocket(endpoint.spec.path, query, inbox, outbox)
        holder: list[asyncio.Task[None]] = []

        def start() -> None:
            task = loop.create_task(self._run(endpoint, socket, inbox, outbox), name=f"socket:{endpoint.key}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            holder.append(task)

        loop.call_soon_threadsafe(start)

        def client_closed() -> None:
            def later() -> None:
                if holder and not holder[0].done():
                    log.warning("%s: the socket handler ran on after its client left; cancelled", endpoint.key)
                    holder[0].cancel()

            try:
                loop.call_soon_threadsafe(lambda: loop.call_later(self.close_grace_s, later))
            except RuntimeError:  # the loop stopped: nothing runs any more
                pass

        return LocalSocketLine(inbox, outbox, client_closed)

    async def _run(self, endpoint: SocketEndpoint, socket: _AppSocket, inbox: Channel, outbox: Channel) -> None:
        code, reason = 1000, ""
        try:
            await endpoint.handler(socket)
        except SocketClosed:
            pass  # the client left while the handler sent or read: a normal end
        except asyncio.CancelledError:
            code, reason = GOING_AWAY, "the server is shutting down"
        except Exception as exc:
            log.exception("%s: the socket handler failed", endpoint.key)
            code, reason = INTERNAL_ERROR, f"the app failed ({type(exc).__name__})"
        outbox.close(code, reason)
        inbox.close(code, reason)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Cancel every handler (their clients get 1001), stop the loop and its thread."""
        with self._lock:
            self._stopping = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def finish() -> None:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=timeout_s)
            loop.stop()

        try:
            loop.call_soon_threadsafe(lambda: loop.create_task(finish()))
        except RuntimeError:
            return
        thread.join(timeout_s + 1.0)
        if not thread.is_alive():
            loop.close()
