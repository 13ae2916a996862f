"""The video track a session sends back: the newest output frame, nothing queued."""

from __future__ import annotations

import asyncio

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError


class OutputTrack(MediaStreamTrack):
    """Hands the WebRTC sender the session's newest output frame.

    The sender encodes one frame at a time; an output that arrives while the previous one
    still waits is replaced (``replaced`` counts them), so a slow encoder or network never
    makes the video fall behind.
    """

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._frame: av.VideoFrame | None = None
        self._ready = asyncio.Event()
        self.replaced = 0
        self.sent = 0

    def put(self, frame: av.VideoFrame) -> None:
        if self._frame is not None:
            self.replaced += 1
        self._frame = frame
        self._ready.set()

    async def recv(self) -> av.VideoFrame:
        while self._frame is None:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        if self.readyState != "live":
            raise MediaStreamError
        frame, self._frame = self._frame, None
        self.sent += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self._ready.set()  # a sender waiting in recv() sees the track ended
