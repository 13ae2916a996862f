"""One end of an edge-worker connection, as an asyncio protocol.

It turns bytes into messages for a :class:`Handler` and messages into bytes, and keeps
the connection's costs and risks bounded:

- writes made during one event-loop iteration leave in one ``writelines`` (a batch of
  results, or frames from many sessions, costs one system call);
- when the kernel's send buffer and ours pass ``high_water_bytes``, :attr:`Link.writable`
  goes False and the handler is told when it is True again, so callers hold frames back
  (latest frame wins) instead of queueing stale ones;
- before the handshake completes at most ``pre_auth_bytes`` are accepted in all;
- a message the handler finds malformed gets an ERROR reply and the link goes on; bytes
  that do not decode end the link.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Protocol, cast

from framewire.cluster import wire
from framewire.cluster.wire import Kind, LinkCorrupt, Violation

log = logging.getLogger("framewire.cluster")

#: Bytes buffered for sending before the link reports itself not writable.
HIGH_WATER_BYTES = 4 * 1024 * 1024


class Handler(Protocol):
    """What a link tells its owner. Every call runs on the link's event loop."""

    def on_open(self, link: Link) -> None:
        """The connection is up (nothing received yet)."""

    def on_message(self, link: Link, message: list[Any]) -> None:
        """One decoded message; raise :class:`Violation` if it breaks the protocol."""

    def on_writable(self, link: Link) -> None:
        """The send buffer drained below the low-water mark."""

    def on_lost(self, link: Link, reason: str) -> None:
        """The connection ended (closed by either side, reset, or aborted by this link)."""


class Link(asyncio.Protocol):
    """Framing, coalesced writes, back-pressure and the pre-handshake limit of one connection."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_message_bytes: int = wire.MAX_MESSAGE_BYTES,
        pre_auth_bytes: int = wire.PRE_AUTH_MAX_BYTES,
        high_water_bytes: int = HIGH_WATER_BYTES,
    ) -> None:
        self.handler = handler
        self.authenticated = False
        self.writable = True
        self.closed = False
        self.peer = "?"
        self.last_received_s = 0.0
        self.messages_in = 0
        self.messages_out = 0
        self._decoder = wire.Decoder(max_message_bytes)
        self._encoder = wire.Encoder()
        self._pre_auth_left = pre_auth_bytes
        self._high_water = high_water_bytes
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._lost_reason = "connection closed"

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
        self._transport.set_write_buffer_limits(high=self._high_water)
        self.last_received_s = self._loop.time()
        self.handler.on_open(self)

    def data_received(self, data: bytes) -> None:
        self.last_received_s = self._loop.time()
        if not self.authenticated:
            self._pre_auth_left -= len(data)
            if self._pre_auth_left < 0:
                self.abort("more bytes than a handshake before it completed")
                return
        try:
            messages = self._decoder.feed(data)
        except LinkCorrupt as exc:
            self.abort(f"undecodable link data: {exc}")
            return
        handler = self.handler
        for message in messages:
            if self.closed:
                return
            self.messages_in += 1
            try:
                handler.on_message(self, message)
            except Violation as exc:
                if not self.authenticated:
                    self.abort(f"bad handshake message: {exc}")
                    return
                log.warning("link %s: bad message (%s)", self.peer, exc)
                self.send([Kind.ERROR, "PROTOCOL", str(exc)[:500]])
            except Exception:
                log.exception("link %s: handling a message of type %s failed", self.peer, message[0])
                self.send([Kind.ERROR, "INTERNAL", f"message of type {message[0]} could not be handled"])

    def eof_received(self) -> bool:
        self._lost_reason = "the peer closed the connection"
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.writable = False
        self._out.clear()
        reason = self._lost_reason if exc is None else f"connection lost ({exc})"
        self.handler.on_lost(self, reason)

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        if self.closed:
            return
        self.writable = True
        self.handler.on_writable(self)

    # -- sending -----------------------------------------------------------------------------

    def send(self, message: list[Any]) -> None:
        """Queue ``message``; it leaves with the others sent in this loop iteration."""
        if self.closed:
            return
        self._out.append(self._encoder.pack(message))
        self.messages_out += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._transport is not None and not self.closed:
            out, self._out = self._out, []
            self._transport.writelines(out)

    def buffered_bytes(self) -> int:
        """Bytes accepted for sending and not yet handed to the kernel."""
        pending = sum(len(b) for b in self._out)
        return pending + (self._transport.get_write_buffer_size() if self._transport is not None else 0)

    def close(self, reason: str = "closed") -> None:
        """Send what is queued, then close."""
        if self.closed or self._transport is None:
            return
        self._lost_reason = reason
        self._flush()
        self._transport.close()

    def abort(self, reason: str) -> None:
        """Drop the connection now (unsent data is lost)."""
        if self._transport is None or self.closed:
            return
        if not self._transport.is_closing():
            log.warning("link %s: closing: %s", self.peer, reason)
        self._lost_reason = reason
        self._transport.abort()
