"""Raw app sockets over the edge-worker link: one :class:`LinkSocket` at each end.

The edge opens a socket with ``SOCKET_OPEN sid, endpoint key, query``; then both ends send
``SOCKET_DATA sid, message`` (text or bytes, as the client or the app sent it) and end it
with ``SOCKET_CLOSE sid, code, reason``. Flow control is by credits, per direction: an end
may have at most :data:`WINDOW` messages unacknowledged, and the receiving end sends
``SOCKET_ACK sid, count`` as its reader takes them. So a socket holds at most a window of
messages at each end, a slow reader slows its sender down (back to the client's TCP
connection, or the app's ``send``), and one busy socket cannot fill the link for others.

Everything here runs on the link's event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from framewire.cluster.wire import Kind, Violation
from framewire.engine.api import SocketClosed

#: Messages one end may send on a socket before the other acknowledges them.
WINDOW = 16
#: Close code when the link carrying a socket is lost (RFC 6455: internal error).
LINK_LOST = 1011


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


class LinkSocket:
    """One end of an app socket carried by a link: the :class:`framewire.engine.api.SocketLine`
    the edge hands the gateway, and the worker's handle on the edge's client."""

    def __init__(
        self,
        sid: int,
        send: Callable[[list[Any]], None],
        *,
        window: int = WINDOW,
        on_closed: Callable[[LinkSocket], None] | None = None,
    ) -> None:
        self.sid = sid
        self.window = window
        self._send = send
        self._on_closed = on_closed
        self._inbox: deque[str | bytes] = deque()
        self._in_flight = 0
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None
        self.closed: SocketClosed | None = None

    # -- the local side ----------------------------------------------------------------------

    async def send(self, message: str | bytes) -> None:
        """Send one message to the other end, waiting for a credit."""
        while self.closed is None and self._in_flight >= self.window:
            self._writer = asyncio.get_running_loop().create_future()
            await self._writer
        if self.closed is not None:
            raise SocketClosed(self.closed.code, self.closed.reason)
        self._in_flight += 1
        self._send([Kind.SOCKET_DATA, self.sid, message])

    async def receive(self) -> str | bytes:
        """The other end's next message (acknowledged as it is taken)."""
        while not self._inbox:
            if self.closed is not None:
                raise SocketClosed(self.closed.code, self.closed.reason)
            self._reader = asyncio.get_running_loop().create_future()
            await self._reader
        message = self._inbox.popleft()
        if self.closed is None:
            self._send([Kind.SOCKET_ACK, self.sid, 1])
        return message

    def close(self, code: int = 1000, reason: str = "") -> None:
        """End the socket from this side: the other end is told, nothing more is sent."""
        if self.closed is not None:
            return
        self._send([Kind.SOCKET_CLOSE, self.sid, code, reason[:500]])
        self._closed(code, reason)

    # -- what the link delivers --------------------------------------------------------------

    def on_data(self, message: Any) -> None:
        if not isinstance(message, str | bytes):
            raise Violation("a socket message must be text or bytes")
        if self.closed is not None:
            return  # crossed our close
        if len(self._inbox) >= self.window:
            raise Violation(f"socket {self.sid}: more than {self.window} messages without credit")
        self._inbox.append(message)
        _wake(self._reader)

    def on_ack(self, count: Any) -> None:
        if type(count) is not int or not 0 < count <= self._in_flight:
            raise Violation(f"socket {self.sid}: acknowledges {count!r} of {self._in_flight} messages")
        self._in_flight -= count
        _wake(self._writer)

    def on_close(self, code: Any, reason: Any) -> None:
        """The other end closed (or the link went away)."""
        if type(code) is not int or not isinstance(reason, str):
            raise Violation("SOCKET_CLOSE needs a code and a reason")
        self._closed(code, reason)

    def _closed(self, code: int, reason: str) -> None:
        if self.closed is None:
            self.closed = SocketClosed(code, reason)
            if self._on_closed is not None:
                self._on_closed(self)
        _wake(self._reader)
        _wake(self._writer)


def parse_open(message: list[Any]) -> tuple[int, str, dict[str, str]]:
    """``SOCKET_OPEN``'s (sid, endpoint key, query); :class:`Violation` when malformed."""
    if len(message) != 4:
        raise Violation(f"SOCKET_OPEN needs 3 fields, got {len(message) - 1}")
    _, sid, key, query = message
    if type(sid) is not int or not isinstance(key, str) or not isinstance(query, dict):
        raise Violation("SOCKET_OPEN needs a socket id, an endpoint key and a query map")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in query.items()):
        raise Violation("SOCKET_OPEN's query must map text to text")
    return sid, key, query
