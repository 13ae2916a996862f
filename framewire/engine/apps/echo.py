"""``framewire/echo``: returns the input image, so the whole frame path can be tested and
benchmarked without a model; its video endpoint returns each camera frame (inverted when
the session says so), for the live video path."""

from __future__ import annotations

import base64
import binascii
import time

from pydantic import BaseModel, Field

from framewire.engine.api import App, FileInput, InputError, VideoFrame, realtime, video


class EchoInput(BaseModel):
    image_url: FileInput | None = Field(
        None,
        description="Image as raw bytes (msgpack bin), a base64 data URI, or an http(s) URL (fetched by the server).",
    )
    prompt: str = Field("", max_length=10_000)
    delay_ms: float = Field(0.0, ge=0.0, le=1000.0, description="Simulated work per batch, in ms.")


class EchoOutput(BaseModel):
    image: bytes | None = Field(None, description="The input image's bytes (a data URI decoded).")
    image_url: str | None = Field(None, description="The input URL when one was given instead of bytes.")
    size_bytes: int = 0
    prompt: str = ""
    timings: dict[str, float] = Field(default_factory=dict)


class EchoVideoInput(BaseModel):
    frame: VideoFrame = Field(..., description="The camera frame (set by the server).")
    invert: bool = Field(False, description="Send the frame back with its colours inverted.")
    delay_ms: float = Field(0.0, ge=0.0, le=1000.0, description="Simulated work per batch, in ms.")


class EchoVideoOutput(BaseModel):
    frame: VideoFrame
    timings: dict[str, float] = Field(default_factory=dict)


_INVERT = bytes(255 - i for i in range(256))


def _image_bytes(value: bytes | str) -> bytes:
    if isinstance(value, bytes):
        return value
    header, _, payload = value.partition(",")
    if not header.endswith(";base64"):
        raise InputError("image_url: only base64 data URIs can be echoed", field="image_url")
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise InputError(f"image_url: invalid base64 in data URI ({exc})", field="image_url") from exc


def _echo(inp: EchoInput) -> EchoOutput | InputError:
    if inp.image_url is None:
        return EchoOutput(prompt=inp.prompt)
    if isinstance(inp.image_url, str) and not inp.image_url.startswith("data:"):
        return EchoOutput(image_url=inp.image_url, size_bytes=len(inp.image_url), prompt=inp.prompt)
    try:
        data = _image_bytes(inp.image_url)
    except InputError as exc:
        return exc
    return EchoOutput(image=data, size_bytes=len(data), prompt=inp.prompt)


class EchoApp(App):
    app_id = "framewire/echo"
    title = "Echo"
    description = "Returns its input image; for testing and benchmarking the frame path."
    tags = ("test", "realtime")

    @realtime("/", buffering=2, session_timeout=60.0, max_batch_size=16)
    def echo(self, inputs: list[EchoInput]) -> list[EchoOutput]:
        delay_ms = max(inp.delay_ms for inp in inputs)
        if delay_ms:
            time.sleep(delay_ms / 1000.0)
        return [_echo(inp) for inp in inputs]  # type: ignore[misc]

    @video("/video", max_side=1280, multiple_of=2, max_batch_size=16)
    def echo_video(self, inputs: list[EchoVideoInput]) -> list[EchoVideoOutput]:
        delay_ms = max(inp.delay_ms for inp in inputs)
        if delay_ms:
            time.sleep(delay_ms / 1000.0)
        out = []
        for inp in inputs:
            frame = inp.frame
            if inp.invert:
                frame = VideoFrame(width=frame.width, height=frame.height, data=frame.data.translate(_INVERT))
            out.append(EchoVideoOutput(frame=frame))
        return out
