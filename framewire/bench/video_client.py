"""A live video client for tests and the benchmark: a synthetic camera over WebRTC (aiortc).

:class:`PatternTrack` is the camera: a bar moving across a grey ramp, with the frame's
number written in the top rows as a binary code of big black and white blocks (they
survive the video codec), so a received frame says which input it came from.
:class:`VideoClient` signals a session with ``POST …/start-session`` (reading the answer
from the event stream, keeping the request open), sends the camera, keeps every output
frame it receives with its arrival time, and every data channel message.

Matching outputs to inputs by timestamp: the server stamps each output with its input's
``pts`` (90 kHz, counted from the first frame it received, which is this camera's frame 0)
and says so in a ``frame`` event; the receiving side counts ``pts`` from the first output
it got, so an output's input ``pts`` is its own plus the ``pts`` of the first ``frame``
event (:meth:`VideoClient.matched`). The codecs' clocks may round a timestamp by a tick,
so an input is found as the camera frame within :data:`PTS_TOLERANCE` of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from dataclasses import dataclass, field
from typing import Any

import av
import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

CLOCK_RATE = 90_000
TIME_BASE = fractions.Fraction(1, CLOCK_RATE)
CODE_BITS = 16
BLOCK = 16  # side of one code block, pixels
#: How far (90 kHz ticks) a timestamp may move through the codecs and still name its frame.
PTS_TOLERANCE = 90


def pattern(index: int, width: int, height: int) -> np.ndarray:
    """Frame ``index`` of the synthetic camera, uint8 [H, W, 3]."""
    ramp = np.linspace(40, 200, width, dtype=np.uint8)
    img = np.repeat(np.repeat(ramp[None, :, None], height, axis=0), 3, axis=2)
    bar = (index * 4) % max(1, width - 24)
    img[BLOCK * 2 :, bar : bar + 24] = (230, 60, 60)
    for bit in range(CODE_BITS):
        on = (index >> bit) & 1
        img[:BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = 255 if on else 0
    return img


def read_code(img: np.ndarray) -> int:
    """The frame number :func:`pattern` wrote into ``img`` (of an inverted image: its complement);
    -1 for an image too small to hold the code (an app that changed the size)."""
    if img.shape[0] < BLOCK or img.shape[1] < CODE_BITS * BLOCK:
        return -1
    cells = [float(img[4 : BLOCK - 4, b * BLOCK + 4 : (b + 1) * BLOCK - 4].mean()) for b in range(CODE_BITS)]
    return sum(1 << b for b, level in enumerate(cells) if level > 128)


class PatternTrack(MediaStreamTrack):
    """The synthetic camera at ``fps``; ``sent_s[index]`` is when frame ``index`` left it (perf_counter)."""

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, fps: float = 30.0) -> None:
        super().__init__()
        if width < CODE_BITS * BLOCK or height < 3 * BLOCK:
            raise ValueError(f"the pattern needs at least {CODE_BITS * BLOCK}x{3 * BLOCK} pixels")
        self.width, self.height, self.fps = width, height, fps
        self.index = 0
        self.sent_s: dict[int, float] = {}
        self._start: float | None = None

    def pts_of(self, index: int) -> int:
        return round(index * CLOCK_RATE / self.fps)

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.perf_counter()
        if self._start is None:
            self._start = now
        else:
            due = self._start + self.index / self.fps
            if due > now:
                await asyncio.sleep(due - now)
        frame = av.VideoFrame.from_ndarray(pattern(self.index, self.width, self.height), format="rgb24")
        frame.pts, frame.time_base = self.pts_of(self.index), TIME_BASE
        self.sent_s[self.index] = time.perf_counter()
        self.index += 1
        return frame


@dataclass
class Received:
    pts: int  # counted from the first output received
    arrived_s: float  # perf_counter
    code: int  # the frame number read from its pixels
    width: int
    height: int
    pixels: np.ndarray | None = None  # kept only when asked


@dataclass
class Match:
    """An output matched to its input by timestamp."""

    input_pts: int
    index: int  # the input frame's number
    code: int  # what the output's pixels say
    latency_ms: float
    received: Received
    event: dict[str, Any] | None


@dataclass
class VideoClient:
    """One WebRTC session against a FrameWire server; see the module docstring."""

    base_url: str  # http://host:port
    app: str  # owner/alias[/path]
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    width: int = 320
    height: int = 240
    fps: float = 30.0
    keep_pixels: bool = False
    received: list[Received] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # the signalling stream's events

    def __post_init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.track = PatternTrack(self.width, self.height, self.fps)
        self.channel = self.pc.createDataChannel("params")
        self._opened = asyncio.Event()
        self.channel.on("open", self._opened.set)
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)
        self._http: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._answer: asyncio.Future[dict[str, Any]] | None = None
        self.ended = asyncio.Event()

    async def start(self, timeout_s: float = 20.0) -> dict[str, Any]:
        """Offer, read the answer, connect; returns the answer event. Raises :class:`StartRefused`."""
        self.pc.addTrack(self.track)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer", "session_params": self.params}
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, read=None))
        self._answer = asyncio.get_running_loop().create_future()
        self._tasks.append(asyncio.create_task(self._signal(body)))
        async with asyncio.timeout(timeout_s):
            answer = await self._answer
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
            await self._opened.wait()
        return answer

    async def _signal(self, body: dict[str, Any]) -> None:
        assert self._http is not None and self._answer is not None
        url = f"{self.base_url}/{self.app}/start-session"
        try:
            async with self._http.stream("POST", url, json=body, headers=self.headers, params=self.query) as res:
                if res.status_code != 200:
                    detail = json.loads(await res.aread())
                    self._answer.set_exception(StartRefused(res.status_code, detail))
                    return
                async for line in res.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    event = json.loads(line[5:])
                    self.events.append(event)
                    if event.get("type") == "answer" and not self._answer.done():
                        self._answer.set_result(event)
        except httpx.HTTPError as exc:
            if not self._answer.done():
                self._answer.set_exception(exc)
        finally:
            self.ended.set()

    def _on_message(self, message: str | bytes) -> None:
        self.messages.append(json.loads(message))

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.create_task(self._receive(track)))

    async def _receive(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                arrived = time.perf_counter()
                img = frame.to_ndarray(format="rgb24")  # type: ignore[union-attr]
                self.received.append(
                    Received(
                        int(frame.pts or 0),
                        arrived,
                        read_code(img),
                        img.shape[1],
                        img.shape[0],
                        img if self.keep_pixels else None,
                    )
                )

    def send(self, message: dict[str, Any]) -> None:
        """A data channel message (parameters, or a ping)."""
        self.channel.send(json.dumps(message))

    def frame_events(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == "frame"]

    def matched(self) -> list[Match]:
        """Every output received so far, matched to its input by timestamp (module docstring)."""
        events = self.frame_events()
        if not events or not self.received:
            return []
        offset = events[0]["pts"]
        by_pts = {e["pts"]: e for e in events}
        out = []
        for got in self.received:
            input_pts = got.pts + offset
            index = round(input_pts * self.fps / CLOCK_RATE)
            sent = self.track.sent_s.get(index)
            if sent is None or abs(self.track.pts_of(index) - input_pts) > PTS_TOLERANCE:
                continue
            out.append(Match(input_pts, index, got.code, (got.arrived_s - sent) * 1000.0, got, by_pts.get(input_pts)))
        return out

    async def close(self, wait_end_s: float = 5.0) -> None:
        """Close the connection, wait (bounded) for the server's ``end`` event, let go of everything."""
        await self.pc.close()
        if self._http is None:
            return
        if self._answer is not None and self._answer.done() and self._answer.exception() is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_end_s):
                    await self.ended.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._http.aclose()


class StartRefused(Exception):
    """The server refused ``start-session``: ``status`` and its error body."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body
