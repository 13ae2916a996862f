"""Apps for the queue, run, stream and storage tests (also loaded by `framewire serve --app`)."""

from __future__ import annotations

import os
import threading
import time

from pydantic import BaseModel, Field

from framewire.engine.api import App, InputError, Progress, endpoint


class StepIn(BaseModel):
    steps: int = Field(3, ge=0, le=1000)
    delay_ms: float = Field(0.0, ge=0.0)
    fail: bool = False


class StepOut(BaseModel):
    done: int
    preview: bool = False
    batch_size: int = 1


class SteppingApp(App):
    """One partial output per step; stops early once its caller is gone; batches up to 8."""

    app_id = "test/stepping"
    aliases = ("fal-ai/stepping",)

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.wanted: list[bool] = []  # per input: whether its caller listens for partial outputs
        self.stopped_early = threading.Event()

    @endpoint("/", max_batch_size=8, max_queue_delay_ms=5)
    def run(self, inputs: list[StepIn], progress: Progress) -> list[StepOut]:
        self.batches.append(len(inputs))
        self.wanted += [progress.wanted(i) for i in range(len(inputs))]
        done = [0] * len(inputs)
        for step in range(max(i.steps for i in inputs)):
            if all(progress.cancelled(i) for i in range(len(inputs))):
                break
            time.sleep(max(i.delay_ms for i in inputs) / 1000)
            for i, inp in enumerate(inputs):
                if progress.cancelled(i):
                    self.stopped_early.set()
                    continue
                if step < inp.steps:
                    done[i] = step + 1
                    if progress.wanted(i):
                        progress(i, StepOut(done=step + 1, preview=True))
        return [  # type: ignore[misc]  # an AppError element fails only its input
            InputError("fail: asked to fail", field="fail") if inp.fail else StepOut(done=d, batch_size=len(inputs))
            for inp, d in zip(inputs, done, strict=True)
        ]


class ImageIn(BaseModel):
    color: int = Field(0, ge=0, le=255)
    sync_mode: bool = False
    image_url: bytes | str | None = None


class ImageFile(BaseModel):
    url: str | None = None
    content: bytes | None = None
    width: int
    height: int
    content_type: str = "image/png"


class ImageOut(BaseModel):
    images: list[ImageFile]
    input_size: int = 0
    raw: bytes = b""


PNG_HEADER = b"\x89PNG\r\n\x1a\n"


class ImageApp(App):
    """Returns a fake PNG as a file object, the way the diffusion apps return images."""

    app_id = "test/image"

    @endpoint("/")
    def run(self, inp: ImageIn) -> ImageOut:
        data = PNG_HEADER + bytes([inp.color]) * 32
        size = len(inp.image_url) if isinstance(inp.image_url, bytes) else 0
        return ImageOut(images=[ImageFile(content=data, width=4, height=2)], input_size=size, raw=b"\x00\x01")


class CountIn(BaseModel):
    n: int
    delay_ms: float = Field(0.0, ge=0.0)


class CountOut(BaseModel):
    n: int
    runs: int


class CountingApp(App):
    """Appends each job it runs to the file named by FRAMEWIRE_TEST_COUNT_FILE; slow on purpose."""

    app_id = "test/counting"

    @endpoint("/", max_batch_size=4)
    def run(self, inputs: list[CountIn]) -> list[CountOut]:
        path = os.environ["FRAMEWIRE_TEST_COUNT_FILE"]
        with open(path, "a") as f:
            for inp in inputs:
                f.write(f"{inp.n}\n")
        time.sleep(max(i.delay_ms for i in inputs) / 1000)
        with open(path) as f:
            lines = f.read().split()
        return [CountOut(n=i.n, runs=lines.count(str(i.n))) for i in inputs]


class OddIn(BaseModel):
    nan: bool = False


class OddOut(BaseModel):
    value: float


class NanApp(App):
    """Returns NaN when asked: a value JSON cannot carry."""

    app_id = "test/nan"

    @endpoint("/")
    def run(self, inp: OddIn) -> OddOut:
        return OddOut(value=float("nan") if inp.nan else 1.5)
