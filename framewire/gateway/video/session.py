"""One live video session: a peer connection, its camera feeding the engine, outputs back.

Frames. The WebRTC stack decodes the camera track (on its decoder thread). The session
keeps at most one frame *in the engine* (waiting in its one-frame buffer or running) and
at most one decoded frame *waiting here* for its turn: a newer frame replaces a waiting
one (counted as dropped, ``superseded``), so video is never queued and an output is
always of the newest frame the engine could take. A frame going in is scaled and
converted to RGB on a thread pool, then joined to the session's parameters and handed
to the engine through the same stream interface as realtime WebSocket frames: it is
batched with the frames of every other session of the endpoint, under the same latency
targets and degradation. Outputs are converted back (nothing is JPEG-encoded on this
path), stamped with their input's ``pts`` and ``time_base``, and handed to the
:class:`framewire.gateway.video.track.OutputTrack` the WebRTC stack encodes from.

Data channel (optional; the client creates it). The client sends JSON objects:

- ``{"type": "ping", ...}``: answered ``{"type": "pong", ..., "server_time_ms"}`` with
  the other fields echoed (round trips);
- any other object (``"type": "params"`` or none): a change of the session's parameters,
  merged into them (fal's ``session_params``), validated against the endpoint's input
  model, and used from the next frame handed to the engine. Answered
  ``{"type": "params", "version", "params", "after_pts"}`` (frames after ``after_pts`` use
  it), or ``{"type": "error", "error": "VALIDATION_ERROR", ...}`` (nothing changed).

The server sends, per output frame, ``{"type": "frame", "pts", "params_version",
"server_ms", "dropped", ...timings}``, where ``pts`` is the input's (and the output's)
presentation timestamp on the 90 kHz clock counted from the first frame the server
received, and ``server_ms`` the time from the decoded input to the output handed to the
encoder; per failed frame ``{"type": "error", "error": CODE, "reason", "pts"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from pydantic import BaseModel, ValidationError

from framewire.engine.api import App, AppError, Endpoint, EngineClient, FrameResult, Stream, VideoFrame
from framewire.gateway.budget import OverBudget, StructureBudget, check_json
from framewire.gateway.platform.metering import SessionClock, SessionMeter
from framewire.gateway.realtime import protocol
from framewire.gateway.video.frames import to_app_frame, to_av_frame
from framewire.gateway.video.track import OutputTrack

log = logging.getLogger("framewire.video")

#: Stands in for the camera frame when the session's parameters are validated alone.
PLACEHOLDER = VideoFrame(width=2, height=2, data=bytes(12))
#: The largest data channel message read, bytes.
MAX_MESSAGE_BYTES = 64 * 1024
#: Per-frame events are skipped while the data channel holds more than this, bytes.
MAX_CHANNEL_BUFFER = 1024 * 1024
#: A session whose connection is not up this long after the answer ends.
CONNECT_TIMEOUT_S = 30.0


@dataclass(slots=True)
class _Sent:
    """What the session remembers about a frame while the engine has it."""

    pts: int | None
    time_base: Any
    received_s: float  # perf_counter when the decoded frame reached the session
    version: int  # the parameters' version it ran with


@dataclass
class VideoStats:
    frames_in: int = 0  # decoded camera frames received
    frames_out: int = 0  # output frames handed to the encoder
    frames_dropped: int = 0  # replaced by newer ones before the engine took them, or refused
    outputs_replaced: int = 0  # outputs the encoder had no time for
    errors: int = 0


class VideoSession:
    """Runs one peer connection's frames through the engine; see the module docstring."""

    def __init__(
        self,
        pc: RTCPeerConnection,
        endpoint: Endpoint,
        engine: EngineClient,
        *,
        params: dict[str, Any],
        meter: SessionMeter,
        converter: Executor,
        session_id: str,
        budget: StructureBudget,
        target_latency_ms: float | None = None,
    ) -> None:
        assert endpoint.video is not None and endpoint.frame_input is not None and endpoint.frame_output is not None
        self.pc = pc
        self.endpoint = endpoint
        self.engine = engine
        self.meter = meter
        self.converter = converter
        self.session_id = session_id
        self.budget = budget
        self.target_latency_ms = target_latency_ms
        self.spec = endpoint.video
        self._frame_in = endpoint.frame_input
        self._frame_out = endpoint.frame_output
        self.params = dict(params)
        self._inputs = self.validate(params)  # the parameters as an input, the frame to be filled in
        self.version = 1
        self.stats = VideoStats()
        self.output = OutputTrack()
        self.channel: RTCDataChannel | None = None
        self.ended = asyncio.Event()
        self.end_reason = ""
        self.last_pts: int | None = None  # the last frame handed to the engine
        self._stream: Stream | None = None
        self._waiting: av.VideoFrame | None = None
        self._waiting_s = 0.0
        self._busy = False  # a frame is being converted or is in the engine
        self._refusing = False  # draining: frames are no longer taken
        self._last_frame_s = time.monotonic()
        self.started_s = time.monotonic()
        self._tasks: set[asyncio.Task[Any]] = set()
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_channel)
        pc.on("connectionstatechange", self._on_state)

    @property
    def key_id(self) -> str:
        return self.meter.key_id

    @property
    def app(self) -> App:
        return self.endpoint.app

    def validate(self, params: dict[str, Any]) -> BaseModel:
        """``params`` as the endpoint's input around a placeholder frame; pydantic's ValidationError
        (or ValueError for a parameter that names the frame) when they do not fit."""
        if self._frame_in in params:
            raise ValueError(f"{self._frame_in} is the camera frame; it is not a session parameter")
        return self.endpoint.input_model.model_validate({**params, self._frame_in: PLACEHOLDER})

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def end(self, reason: str) -> None:
        """End the session (the first reason stands); :meth:`run` cleans up."""
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()

    # -- the peer connection -------------------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video":
            self._spawn(self._read(track))

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "failed":
            self.end("the WebRTC connection failed")
        elif state == "closed":
            self.end("the WebRTC connection closed")

    async def _read(self, track: MediaStreamTrack) -> None:
        """Take every decoded camera frame as it comes (the stack's queue never grows)."""
        try:
            while True:
                frame = await track.recv()
                self._got(frame)  # type: ignore[arg-type]
        except MediaStreamError:
            self.end("the client's video track ended")

    def _got(self, frame: av.VideoFrame) -> None:
        self.stats.frames_in += 1
        self.meter.received()
        self._last_frame_s = time.monotonic()
        if self._refusing:
            self._drop("closed")
            return
        if self._waiting is not None:
            self._drop("superseded")
        self._waiting, self._waiting_s = frame, time.perf_counter()
        self._pump()

    def _drop(self, reason: str) -> None:
        self.stats.frames_dropped += 1
        self.meter.dropped(1, reason)

    def _pump(self) -> None:
        """Hand the waiting frame to the engine once the one before it has come back."""
        if self._busy or self._waiting is None or self._stream is None or self.ended.is_set():
            return
        frame, received_s = self._waiting, self._waiting_s
        self._waiting = None
        wait_s = self.meter.admit()  # the key's frames/s limit
        if wait_s is not None:
            self.meter.frame_error(protocol.ErrorCode.RATE_LIMITED)
            self.stats.frames_dropped += 1
            return
        self._busy = True
        self._spawn(self._submit(frame, received_s))

    async def _submit(self, frame: av.VideoFrame, received_s: float) -> None:
        width, height = self.spec.frame_size(frame.width, frame.height)
        try:
            loop = asyncio.get_running_loop()
            pixels = await loop.run_in_executor(self.converter, to_app_frame, frame, width, height)
            if self.ended.is_set() or self._stream is None:
                return
            inp = self._inputs.model_copy(update={self._frame_in: pixels})
            self.engine.submit(self._stream, inp, _Sent(frame.pts, frame.time_base, received_s, self.version))
            self.last_pts = frame.pts
            return  # _busy until the result comes back
        except AppError as exc:  # the engine cannot take it (no worker, shutting down)
            self.meter.frame_error(exc.code)
            self._send_error(exc.code, exc.reason, frame.pts)
        except (av.FFmpegError, ValueError) as exc:
            log.warning("%s: a camera frame could not be converted: %s", self.endpoint.key, exc)
            self.meter.frame_error("INVALID_FRAME")
            self._send_error("INVALID_FRAME", f"the frame could not be converted ({exc})", frame.pts)
        self._busy = False
        self._pump()

    def _on_result(self, result: FrameResult) -> None:
        self._busy = False
        sent: _Sent = result.tag
        if self.ended.is_set():
            return
        server_s = time.perf_counter() - sent.received_s
        self.meter.result(result, server_s)
        if result.error is not None:
            self._send_error(result.error.code, result.error.reason, sent.pts)
        else:
            out = getattr(result.output, self._frame_out)
            replaced = self.output.replaced
            self.output.put(to_av_frame(out, sent.pts, sent.time_base))
            self.stats.outputs_replaced += self.output.replaced - replaced
            self.stats.frames_out += 1
            timings = result.timings
            if result.output is not None and isinstance(getattr(result.output, "timings", None), dict):
                timings = {**result.output.timings, **timings}  # type: ignore[attr-defined]
            self._send(
                {
                    "type": "frame",
                    "pts": sent.pts,
                    "params_version": sent.version,
                    "server_ms": round((time.perf_counter() - sent.received_s) * 1000.0, 3),
                    "dropped": self.stats.frames_dropped,
                    "width": out.width,
                    "height": out.height,
                    **timings,
                },
                optional=True,
            )
        self._pump()

    # -- the data channel ----------------------------------------------------------------------

    def _on_channel(self, channel: RTCDataChannel) -> None:
        self.channel = channel
        channel.on("message", self._on_message)

    def _send(self, message: dict[str, Any], *, optional: bool = False) -> None:
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return
        if optional and channel.bufferedAmount > MAX_CHANNEL_BUFFER:
            return  # the client reads slowly: per-frame events are the first to go
        channel.send(json.dumps(message, separators=(",", ":"), default=str))

    def _send_error(self, code: str, reason: str, pts: int | None = None, **extra: Any) -> None:
        self.stats.errors += 1
        self._send({"type": "error", "error": code, "reason": reason, "pts": pts, **extra})

    def _on_message(self, message: str | bytes) -> None:
        if len(message) > MAX_MESSAGE_BYTES:
            self._send_error("MESSAGE_TOO_LARGE", f"message of {len(message)} bytes; the limit is {MAX_MESSAGE_BYTES}")
            return
        raw = message.encode() if isinstance(message, str) else message
        try:
            check_json(raw, self.budget)  # before decoding: a small message can hold a huge structure
            data = json.loads(raw)
        except OverBudget as exc:
            self._send_error("MESSAGE_TOO_LARGE", f"the message {exc}")
            return
        except (ValueError, UnicodeDecodeError) as exc:
            self._send_error("INVALID_MESSAGE", f"messages are JSON objects ({exc})")
            return
        if not isinstance(data, dict):
            self._send_error("INVALID_MESSAGE", f"messages are JSON objects, got {type(data).__name__}")
            return
        kind = data.get("type")
        if kind == "ping":
            self._send({**data, "type": "pong", "server_time_ms": time.time() * 1000.0})
            return
        if kind not in (None, "params"):
            self._send_error("INVALID_MESSAGE", f"unknown message type {kind!r}; send ping or parameters")
            return
        self.change({k: v for k, v in data.items() if k != "type"})

    def change(self, update: dict[str, Any]) -> bool:
        """Merge ``update`` into the parameters if the result is valid; answered on the channel."""
        merged = {**self.params, **update}
        try:
            inputs = self.validate(merged)
        except ValidationError as exc:
            reason = protocol.validation_reason(exc)
            self._send_error(protocol.ErrorCode.VALIDATION_ERROR, reason, detail=protocol.validation_detail(exc))
            return False
        except ValueError as exc:
            self._send_error(protocol.ErrorCode.VALIDATION_ERROR, str(exc))
            return False
        self.params, self._inputs = merged, inputs
        self.version += 1
        self._send({"type": "params", "version": self.version, "params": merged, "after_pts": self.last_pts})
        return True

    # -- the session's life --------------------------------------------------------------------

    async def _watch(self, session_timeout_s: float | None) -> None:
        """End the session when its connection never comes up, or its video stops."""
        started = time.monotonic()
        while not self.ended.is_set():
            await asyncio.sleep(0.5)
            now = time.monotonic()
            connected = self.pc.connectionState == "connected" or self.stats.frames_in > 0
            if not connected and now - started > CONNECT_TIMEOUT_S:
                self.end(f"the WebRTC connection did not come up within {CONNECT_TIMEOUT_S:g} s")
            if session_timeout_s is not None and now - self._last_frame_s > session_timeout_s:
                self.end(f"no video for {session_timeout_s:g} s")

    async def run(self) -> str:
        """Serve frames until the session ends; clean up; returns why it ended."""
        clock = SessionClock(self.meter)
        clock.start()
        try:
            self._stream = self.engine.open_stream(
                self.endpoint, 1, self._on_result, target_latency_ms=self.target_latency_ms
            )
        except AppError as exc:
            self.end(exc.reason)
        self._pump()  # a frame that came before the stream opened
        self._spawn(self._watch(self.endpoint.spec.session_timeout_s))
        try:
            await self.ended.wait()
        finally:
            if self._stream is not None:
                discarded = self.engine.close_stream(self._stream) + (self._waiting is not None)
                self._waiting = None
                if discarded:
                    self.stats.frames_dropped += discarded
                    self.meter.dropped(discarded, "closed")
            self.stats.outputs_replaced = self.output.replaced
            self._send({"type": "end", "reason": self.end_reason})
            for task in list(self._tasks):
                task.cancel()
            self.output.stop()
            with contextlib.suppress(Exception):  # a connection already torn down
                await self.pc.close()
            await clock.stop()
        return self.end_reason

    async def close(self, code: int, reason: str = "") -> None:
        self.end(reason or "closed by the server")

    async def shutdown(
        self, code: int, reason: str, *, wait_s: float = 0.0, error: tuple[str, str] | None = None
    ) -> None:
        """Take no more frames, let the one in the engine come back (up to ``wait_s``), say
        ``error`` on the data channel, then end."""
        self._refusing = True
        deadline = time.monotonic() + wait_s
        while self._busy and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if error is not None:
            self._send_error(*error)
        self.end(reason)
