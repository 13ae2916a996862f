"""One realtime session: a reader feeding the engine and a writer sending results back.

Per-session state lives here and nowhere else. Both directions are bounded: pending
inputs sit in the engine's per-session buffer (latest frame wins), outgoing messages in
a small outbox that drops its oldest *result* when the client does not keep up. Errors
caused by one frame are reported and the session goes on.

A frame whose input names http(s) URLs (``image_url``: ``"https://…"``) is fetched here,
by the gateway's guarded fetcher (:mod:`framewire.gateway.requests.inputs`: public
addresses only, timeout and size cap), before it reaches the engine, so the engine's batch
never waits on the network. While fetches are under way later frames queue behind them
in arrival order, at most ``capacity`` (the oldest is dropped first, as in the engine).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from framewire.engine.api import AppError, Endpoint, EngineClient, FrameResult, Stream
from framewire.gateway.budget import StructureBudget
from framewire.gateway.platform.metering import NullSessionMeter, SessionMeter
from framewire.gateway.realtime import protocol
from framewire.gateway.realtime.protocol import CloseCode, ErrorCode, ProtocolError
from framewire.gateway.requests.inputs import FetchError, InputFetcher, fetchable

log = logging.getLogger("framewire.realtime")


@dataclass(slots=True)
class _Pending:
    """What the session remembers about one frame while the engine has it."""

    request_id: Any
    received_s: float
    sync_mode: bool | None = None  # the input's, when its model has the field


class _IdleTimer:
    """Cancels a task once no input has arrived for ``timeout_s``.

    One loop timer per session, re-armed only when it fires early (from the time of
    the last input), instead of a timeout around every receive: that costs a timer
    scheduled and cancelled per frame, ~5 us, more than decoding and validating it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float, task: asyncio.Task[Any]) -> None:
        self.loop = loop
        self.timeout_s = timeout_s
        self.task = task
        self.fired = False
        self.last_input_s = loop.time()
        self._handle = loop.call_at(self.last_input_s + timeout_s, self._check)

    def _check(self) -> None:
        due = self.last_input_s + self.timeout_s
        if self.loop.time() < due:
            self._handle = self.loop.call_at(due, self._check)
            return
        self.fired = True
        self.task.cancel()

    def cancel(self) -> None:
        self._handle.cancel()


@dataclass(eq=False)
class _Fetching:
    """A frame waiting for its URLs (``task``) or for an earlier frame's (``inp`` already set)."""

    pending: _Pending
    inp: BaseModel | None = None
    task: asyncio.Task[BaseModel] | None = None


@dataclass
class SessionStats:
    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0  # pending inputs displaced by newer ones (latest frame wins)
    outputs_dropped: int = 0  # results discarded because the client did not read them
    errors: int = 0


class RealtimeSession:
    """Runs one accepted WebSocket until the client leaves or the session times out."""

    def __init__(
        self,
        ws: WebSocket,
        endpoint: Endpoint,
        engine: EngineClient,
        *,
        capacity: int,
        session_timeout_s: float | None,
        max_frame_bytes: int,
        budget: StructureBudget,
        target_latency_ms: float | None = None,
        similarity_threshold: float = 0.0,
        store_files: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        meter: SessionMeter | None = None,
        fetcher: InputFetcher | None = None,
        base_url: str = "",
    ) -> None:
        self.ws = ws
        # Usage, metrics and the key's frames/s limit.
        self.meter: SessionMeter = meter if meter is not None else NullSessionMeter()
        # Stores an output's file objects and returns it with URLs (blocking: runs in a thread).
        self.store_files = store_files
        self.endpoint = endpoint
        self.engine = engine
        self.capacity = capacity
        self.target_latency_ms = target_latency_ms
        self.similarity_threshold = similarity_threshold
        self.session_timeout_s = session_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.budget = budget
        # Fetches input URLs before the engine sees the frame (None: URLs go to the app as they are).
        self.fetcher = fetcher
        self.base_url = base_url
        self._fetching: deque[_Fetching] = deque()
        self.stats = SessionStats()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Results are bytes, or a task still storing an output's files (sync_mode false).
        self._outbox: deque[bytes | str | asyncio.Task[bytes | str]] = deque()
        self._outbox_limit = 2 * capacity + 4
        self._wake = asyncio.Event()
        self._closing = False
        self._connected = True
        self._stream: Stream | None = None
        self._draining = False  # closing from outside: new frames are refused
        self._writer: asyncio.Task[None] | None = None

    # -- engine side (runs on the event loop) --------------------------------------

    def _on_result(self, result: FrameResult) -> None:
        self._frame_done()
        pending: _Pending = result.tag
        self.meter.result(result, time.perf_counter() - pending.received_s)  # computed: metered even if nobody reads it
        if not self._connected:
            return
        if result.error is not None:
            self._send_error(result.error.code, result.error.reason, pending.request_id)
            return
        assert result.output is not None
        output = result.output.model_dump()
        if "timings" in output and isinstance(output["timings"], dict | None):
            output["timings"] = {**(output["timings"] or {}), **result.timings}
        if pending.request_id is not None and "request_id" not in output:
            output["request_id"] = pending.request_id
        if self.store_files is not None and pending.sync_mode is False:
            # Disk I/O: done in a thread; the outbox keeps the result's place meanwhile.
            self.stats.frames_out += 1
            self._enqueue(asyncio.ensure_future(self._stored(output, pending.request_id)))
            return
        try:
            payload = protocol.encode_output(output)
        except (TypeError, ValueError) as exc:
            log.exception("cannot encode output of %s", self.endpoint.key)
            self.meter.session_error(ErrorCode.INTERNAL_ERROR)
            self._send_error(ErrorCode.INTERNAL_ERROR, f"output could not be encoded ({exc})", pending.request_id)
            return
        self.stats.frames_out += 1
        self._enqueue(payload)

    async def _stored(self, output: dict[str, Any], request_id: Any) -> bytes | str:
        assert self.store_files is not None
        try:
            stored = await asyncio.to_thread(self.store_files, output)
            return protocol.encode_output(stored)
        except (OSError, TypeError, ValueError) as exc:
            log.exception("cannot store the output files of %s", self.endpoint.key)
            self.meter.session_error(ErrorCode.INTERNAL_ERROR)
            self.stats.errors += 1
            extra = {} if request_id is None else {"request_id": request_id}
            return protocol.error_message(ErrorCode.INTERNAL_ERROR, f"output could not be stored ({exc})", **extra)

    def _frame_done(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    # -- outbox ----------------------------------------------------------------------

    def _enqueue(self, message: bytes | str | asyncio.Task[bytes | str]) -> None:
        if len(self._outbox) >= self._outbox_limit:
            for i, queued in enumerate(self._outbox):
                if not isinstance(queued, str):  # drop the oldest result, never an error
                    del self._outbox[i]
                    if isinstance(queued, asyncio.Task):
                        queued.cancel()
                    self.stats.outputs_dropped += 1
                    self.meter.output_dropped()
                    break
        self._outbox.append(message)
        self._wake.set()

    def _send_error(self, code: str, reason: str, request_id: Any = None, **extra: Any) -> None:
        self.stats.errors += 1
        if request_id is not None:
            extra["request_id"] = request_id
        self._enqueue(protocol.error_message(code, reason, **extra))

    async def _write(self) -> None:
        send = self.ws.send
        while True:
            while not self._outbox:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            message = self._outbox.popleft()
            if isinstance(message, asyncio.Task):
                task = message
                try:
                    message = await task
                except asyncio.CancelledError:
                    if not task.cancelled():
                        raise
                    continue
            try:
                if isinstance(message, bytes):
                    await send({"type": "websocket.send", "bytes": message})
                else:
                    await send({"type": "websocket.send", "text": message})
            except Exception:  # the client went away mid-send
                self._connected = False
                return

    # -- reader ----------------------------------------------------------------------

    def _handle_frame(self, message: Mapping[str, Any]) -> None:
        self.meter.received()
        try:
            self._accept_frame(message)
        except (ProtocolError, AppError) as exc:
            self.meter.frame_error(exc.code)
            raise

    def _accept_frame(self, message: Mapping[str, Any]) -> None:
        data = message.get("bytes")
        if data is None:
            raise protocol.text_frame_error(message.get("text") or "")
        if len(data) > self.max_frame_bytes:
            raise ProtocolError(
                ErrorCode.FRAME_TOO_LARGE, f"frame is {len(data)} bytes; the limit is {self.max_frame_bytes}"
            )
        fields = protocol.decode_frame(data, self.budget)
        request_id = protocol.request_id_of(fields)
        if self._draining:
            raise ProtocolError(
                ErrorCode.ENGINE_UNAVAILABLE, "the server is shutting down; reconnect", request_id=request_id
            )
        wait_s = self.meter.admit()
        if wait_s is not None:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"over this key's frames/s limit; the next frame is accepted in {wait_s * 1000:.0f} ms",
                request_id=request_id,
                retry_after_ms=max(1, round(wait_s * 1000)),
            )
        try:
            inp = self.endpoint.input_model.model_validate(fields)
        except ValidationError as exc:
            raise ProtocolError(
                ErrorCode.VALIDATION_ERROR,
                protocol.validation_reason(exc),
                detail=protocol.validation_detail(exc),
                request_id=request_id,
            ) from None
        assert self._stream is not None
        # Realtime frames stay inline unless the client itself says sync_mode: false (a
        # model default of False must not turn every frame into a stored file).
        sync_mode = inp.sync_mode if "sync_mode" in inp.model_fields_set else None  # type: ignore[attr-defined]
        pending = _Pending(request_id, time.perf_counter(), sync_mode)
        self._in_flight += 1
        self._idle.clear()
        if self.fetcher is not None and (self._fetching or fetchable(fields)):
            self._after_fetches(inp, pending, fetch=bool(fetchable(fields)))
            return
        self._submit(inp, pending)

    def _submit(self, inp: BaseModel, pending: _Pending) -> None:
        """Hand one frame to the engine; AppError (the frame is done) when it refuses it."""
        assert self._stream is not None
        try:
            dropped = self.engine.submit(self._stream, inp, pending)
        except AppError:
            self._frame_done()
            raise
        if dropped is not None:
            self.stats.frames_dropped += 1
            self.meter.dropped(1, "superseded")
            self._frame_done()

    # -- input URLs --------------------------------------------------------------------

    def _after_fetches(self, inp: BaseModel, pending: _Pending, *, fetch: bool) -> None:
        """Queue a frame behind the fetches under way, fetching its own URLs if ``fetch``."""
        entry = _Fetching(pending)
        if fetch:
            entry.task = asyncio.ensure_future(self._fetch(inp))
            entry.task.add_done_callback(lambda _: self._release_fetched())
        else:
            entry.inp = inp
        if len(self._fetching) >= self.capacity:  # latest frame wins, as in the engine's buffer
            oldest = self._fetching.popleft()
            if oldest.task is not None:
                oldest.task.cancel()
            self.stats.frames_dropped += 1
            self.meter.dropped(1, "superseded")
            self._frame_done()
        self._fetching.append(entry)
        self._release_fetched()

    async def _fetch(self, inp: BaseModel) -> BaseModel:
        assert self.fetcher is not None
        model = self.endpoint.input_model
        data = await self.fetcher.resolve(inp.model_dump(exclude_unset=True, by_alias=True), model, self.base_url)
        return model.model_validate(data)

    def _release_fetched(self) -> None:
        """Submit, in arrival order, the frames at the head of the line whose fetches are done."""
        while self._fetching:
            entry = self._fetching[0]
            if entry.task is not None and not entry.task.done():
                return
            self._fetching.popleft()
            pending = entry.pending
            try:
                if entry.task is not None:
                    entry.inp = entry.task.result()
                assert entry.inp is not None
                self._submit(entry.inp, pending)
            except asyncio.CancelledError:
                self._frame_done()  # the session closed meanwhile
            except FetchError as exc:
                self._frame_done()
                self._frame_failed(exc.error_type.upper(), exc.reason, pending, detail=exc.detail())
            except ValidationError as exc:
                self._frame_done()
                reason = protocol.validation_reason(exc)
                self._frame_failed(ErrorCode.VALIDATION_ERROR, reason, pending, detail=protocol.validation_detail(exc))
            except AppError as exc:
                self._frame_failed(exc.code, exc.reason, pending)
            except Exception:  # a bug, not the frame's fault: this frame fails, the session goes on
                log.exception("fetching the inputs of a frame of %s failed", self.endpoint.key)
                self._frame_done()
                self._frame_failed(ErrorCode.INTERNAL_ERROR, "the frame's input URLs could not be fetched", pending)

    def _frame_failed(self, code: str, reason: str, pending: _Pending, **extra: Any) -> None:
        self.meter.frame_error(code)
        self._send_error(code, reason, pending.request_id, **extra)

    def _drop_fetching(self) -> int:
        """Cancel the fetches under way (the session ends); returns the frames dropped."""
        dropped = len(self._fetching)
        for entry in self._fetching:
            if entry.task is not None:
                entry.task.cancel()
            self._frame_done()
        self._fetching.clear()
        return dropped

    async def _read(self) -> bool:
        """Read frames until the client leaves (False) or the session idles out (True)."""
        receive = self.ws.receive
        loop = asyncio.get_running_loop()
        reader = asyncio.current_task()
        assert reader is not None
        idle = None if self.session_timeout_s is None else _IdleTimer(loop, self.session_timeout_s, reader)
        try:
            while True:
                try:
                    message = await receive()
                except asyncio.CancelledError:
                    if idle is not None and idle.fired and reader.uncancel() == 0:
                        return True
                    raise  # cancelled from outside (shutdown), not by the idle timer
                if idle is not None:
                    idle.last_input_s = loop.time()
                if message["type"] == "websocket.disconnect":
                    self._connected = False
                    return False
                self.stats.frames_in += 1
                try:
                    self._handle_frame(message)
                except ProtocolError as exc:
                    self._send_error(exc.code, exc.reason, **exc.extra)
                except AppError as exc:
                    self._send_error(exc.code, exc.reason)
        finally:
            if idle is not None:
                idle.cancel()

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> SessionStats:
        self._stream = self.engine.open_stream(
            self.endpoint,
            self.capacity,
            self._on_result,
            target_latency_ms=self.target_latency_ms,
            similarity_threshold=self.similarity_threshold,
        )
        writer = self._writer = asyncio.create_task(self._write())
        close_code: int | None = None
        try:
            timed_out = await self._read()
            if timed_out:
                # Outputs still in the engine go out before the TIMEOUT message.
                try:
                    async with asyncio.timeout(self.session_timeout_s):
                        await self._idle.wait()
                except TimeoutError:
                    pass
                self.meter.session_error(ErrorCode.TIMEOUT)
                self._send_error(ErrorCode.TIMEOUT, protocol.TIMEOUT_REASON)
                close_code = CloseCode.NORMAL
        except WebSocketDisconnect:
            self._connected = False
        finally:
            discarded = self.engine.close_stream(self._stream) + self._drop_fetching()
            self.stats.frames_dropped += discarded
            self.meter.dropped(discarded, "closed")
            self._closing = True
            self._wake.set()
            if self._connected:
                try:
                    async with asyncio.timeout(5.0):
                        await writer
                except TimeoutError:
                    pass
            writer.cancel()
            if self._connected and close_code is not None:
                try:
                    await self.ws.close(close_code)
                except Exception:  # already gone
                    pass
        return self.stats

    async def close(self, code: int, reason: str = "") -> None:
        """Close from outside at once: stop reading, close with ``code``."""
        self._closing = True
        self._wake.set()
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason)

    async def shutdown(
        self, code: int, reason: str, *, wait_s: float = 0.0, error: tuple[str, str] | None = None
    ) -> None:
        """Close from outside, gracefully: what a drain or a revoked key does.

        New frames are refused at once (``ENGINE_UNAVAILABLE``); frames already taken get up
        to ``wait_s`` seconds to come back from the engine; ``error`` (code, reason) is sent
        last; the outbox is flushed (bounded) and the socket closed with ``code``.
        """
        self._draining = True
        if wait_s > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._idle.wait()
        if error is not None:
            self.meter.session_error(error[0])
            self._send_error(*error)
        self._closing = True
        self._wake.set()
        writer = self._writer
        if writer is not None and self._connected:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(1.0, wait_s)):
                    await asyncio.shield(writer)
        await self.close(code, reason)
