"""The HTTP listener: uvicorn with its connection-level limits enforced before any work.

uvicorn's fast HTTP protocol (httptools) buffers a request's URL and headers without
bound, waits forever for them, and accepts every connection the kernel hands it. One
unauthenticated client could therefore grow the process by gigabytes with header lines,
stall the event loop with one endless request line, or hold every file descriptor with
silent sockets. :class:`GuardedProtocol` keeps httptools (its WebSocket upgrade and
bodies are untouched) and adds, per connection:

- **head size**: request line plus headers at most ``max_header_bytes``; beyond it the
  connection gets ``431 Request Header Fields Too Large`` (``414 URI Too Long`` when the
  request line is what is long) naming the limit, and is closed. Bytes are counted as
  they arrive, before the parser buffers them; a head that arrives in the same read as the
  end of the previous request's body is counted as the parser hands it over.
- **head deadline**: a new connection, or a request whose first byte has arrived, must
  deliver its whole head within ``read_timeout_s``; otherwise it is closed (with ``408``
  when part of a head came). Silent and trickling sockets are freed.
- **connection cap**: at ``max_connections`` open connections (HTTP and WebSocket) a new
  one first displaces the connection idle longest without a request in progress (a
  silent socket, a trickling head, an idle keep-alive: what nginx drops first too); when
  every connection is busy, the new one gets ``503`` with ``Retry-After`` at once and is
  closed. The process keeps descriptors for its database, files and sessions, and idle
  sockets cannot lock real clients out.

Refusals are written, the write side is closed, and the rest of the client's bytes are
read and dropped for a moment (a *lingering close*, as nginx does) so that the client
reads the answer instead of a reset. Why not uvicorn's h11 protocol with
``h11_max_incomplete_event_size``: it caps the head too, but answers a bare 400 that does
not name the limit, has no head deadline or connection cap, and parses every request in
pure Python (see docs/security.md for the measured difference).
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from framewire.gateway.settings import Settings

#: Descriptors kept beyond ``max_connections`` for the database, stored files, logs and the engine.
FD_RESERVE = 256
#: How long a refused connection's remaining bytes are read and dropped before it is closed.
LINGER_S = 2.0
#: Most bytes read and dropped during a lingering close.
LINGER_BYTES = 1 << 20


@dataclass(frozen=True)
class ListenerLimits:
    """Per-connection limits; see the module docstring. ``on_refused(reason)`` counts refusals."""

    max_header_bytes: int
    read_timeout_s: float
    max_connections: int
    on_refused: Callable[[str], None] | None = None


def _response(status: int, phrase: str, detail: str, extra: str = "") -> bytes:
    body = ('{"detail":"' + detail.replace('"', "'") + '"}').encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"{extra}connection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of :class:`ListenerLimits`."""

    limits: ClassVar[ListenerLimits]
    #: This listener's connections without a request in progress, longest idle first.
    idle: ClassVar[dict[GuardedProtocol, None]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # waiting for (the rest of) a request head
        self._head_bytes = 0
        self._url_bytes = 0
        self._parsed_head = 0  # the head's URL and headers as the parser handed them over
        self._parsed_over = False
        self._deadline: asyncio.TimerHandle | None = None
        self._refused = False
        self._lingered = 0
        self._linger_timer: asyncio.TimerHandle | None = None

    # -- connection --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections and not self._displace_idle():
            self.transport = transport
            retry = "retry-after: 1\r\n"
            detail = f"the server has its maximum of {self.limits.max_connections} connections busy (--max-connections)"
            self._refuse("too_many_connections", _response(503, "Service Unavailable", detail, retry))
            return
        super().connection_made(transport)
        self.idle[self] = None
        self._arm_deadline()

    def _displace_idle(self) -> bool:
        """Close the connection idle longest (no request in progress); False when all are busy."""
        while self.idle:
            oldest = next(iter(self.idle))
            del self.idle[oldest]
            if not oldest.transport.is_closing():
                if self.limits.on_refused is not None:
                    self.limits.on_refused("displaced_idle")
                oldest.transport.close()
                return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.idle.pop(self, None)
        self._cancel_deadline()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        if self._refused and self.flow is None:
            return  # refused before uvicorn saw it: nothing of uvicorn's to clean up
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            self._linger(len(data))
            return
        if self._in_head:
            room = self.limits.max_header_bytes - self._head_bytes
            if len(data) > room:
                # Feed what the limit allows: the head may end within it, the rest is body.
                first, rest = data[: max(room, 0)], data[max(room, 0) :]
                if first:
                    self._head_bytes += len(first)
                    super().data_received(first)
                if self._in_head and not self._refused and not self.transport.is_closing():
                    self._head_too_large(self._head_bytes)
                    return
                if rest and not self._refused:
                    self.data_received(rest)
                return
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes and self._deadline is None and not self._refused:
            self._arm_deadline()  # part of a head came: the rest has until the deadline (a whole one costs no timer)

    # -- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url_bytes = 0
        self._parsed_head = 0

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        self._count_parsed(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_parsed(len(name) + len(value) + 4)  # with ": " and CRLF
        super().on_header(name, value)

    def _count_parsed(self, size: int) -> None:
        """Count head bytes as the parser hands them over. :meth:`data_received` counts them
        first, as they arrive, but not a head that came in one read with the end of the
        previous request's body; past the limit this stops the parser (uvicorn then calls
        :meth:`send_400_response`, which refuses the head instead)."""
        self._parsed_head += size
        if self._parsed_head > self.limits.max_header_bytes:
            self._parsed_over = True
            raise ValueError("request head over --max-header-bytes")

    def send_400_response(self, msg: str) -> None:
        if self._parsed_over and not self._refused:
            self._head_too_large(self._parsed_head)
            return
        super().send_400_response(msg)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self.idle.pop(self, None)
        self._cancel_deadline()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # what follows is the next request's head
        self._head_bytes = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._in_head and not self.pipeline and not self.transport.is_closing():
            self.idle[self] = None  # an idle keep-alive connection

    # -- refusals --------------------------------------------------------------------------

    def _head_too_large(self, head_bytes: int) -> None:
        limit = self.limits.max_header_bytes
        if head_bytes - self._url_bytes < 64:  # nearly all of it is the request line
            detail = f"the request line is longer than the limit of {limit} bytes (--max-header-bytes)"
            self._refuse("uri_too_long", _response(414, "URI Too Long", detail))
        else:
            detail = f"the request head is larger than the limit of {limit} bytes (--max-header-bytes)"
            self._refuse("header_too_large", _response(431, "Request Header Fields Too Large", detail))

    def _arm_deadline(self) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(self.limits.read_timeout_s, self._head_timed_out)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_timed_out(self) -> None:
        self._deadline = None
        if not self._in_head or self._refused or self.transport.is_closing():
            return
        if self._head_bytes == 0:
            if self.limits.on_refused is not None:
                self.limits.on_refused("idle")
            self.transport.close()
            return
        detail = f"the request head did not arrive within {self.limits.read_timeout_s:g} s (--read-timeout-s)"
        self._refuse("header_timeout", _response(408, "Request Timeout", detail))

    def _refuse(self, reason: str, response: bytes) -> None:
        """Answer, close the write side, read and drop what the client still sends, then close."""
        self._refused = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # its answer can no longer be sent: the write side is closing
        self.idle.pop(self, None)
        self._cancel_deadline()
        self._unset_keepalive_if_required()
        if self.limits.on_refused is not None:
            self.limits.on_refused(reason)
        transport = self.transport
        transport.write(response)
        if transport.can_write_eof():
            transport.write_eof()
            self._linger_timer = self.loop.call_later(LINGER_S, transport.close)
        else:  # TLS: no half-close
            transport.close()

    def _linger(self, size: int) -> None:
        self._lingered += size
        if self._lingered > LINGER_BYTES:
            self.transport.close()


def protocol_class(limits: ListenerLimits) -> type[GuardedProtocol]:
    """A :class:`GuardedProtocol` bound to ``limits``, for uvicorn's ``http=`` option."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits, "idle": {}})


def ensure_fd_limit(max_connections: int) -> int:
    """Raise this process's open-file limit to fit ``max_connections`` (up to the hard limit).

    Returns the soft limit in force. ``ValueError`` names the fix when the hard limit is too low.
    """
    needed = max_connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ValueError(
            f"--max-connections {max_connections} needs {needed} open files, but this process may open at most "
            f"{hard} (ulimit -Hn): lower --max-connections to {max(1, hard - FD_RESERVE)} or raise the limit"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


def server_config(
    app: Any, settings: Settings, *, on_refused: Callable[[str], None] | None = None, **options: Any
) -> uvicorn.Config:
    """uvicorn's config for the gateway: the guarded protocol, TLS and the WebSocket settings.

    WebSocket per-message compression is off (about 7 ms per 100 KB JPEG, for no gain on
    JPEG); frames over 4 x ``--max-frame-bytes`` close the socket with 1009 (the soft cap,
    an ``x-fal-error`` per frame, is the session's). ``options`` go to ``uvicorn.Config``.
    """
    limits = ListenerLimits(settings.max_header_bytes, settings.read_timeout_s, settings.max_connections, on_refused)
    return uvicorn.Config(
        app,
        http=protocol_class(limits),
        ws_per_message_deflate=False,
        ws_max_size=4 * settings.max_frame_bytes,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
        **options,
    )
