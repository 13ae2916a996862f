"""Apps for the worker tests: a fake CPU engine whose batches sleep, and say where they ran."""

from __future__ import annotations

import os
import time

from pydantic import BaseModel, Field

from framewire.engine.api import App, FrameIdentity, InputError, Progress, WeightsInfo, endpoint, realtime


class SleepIn(BaseModel):
    n: int = 0
    sleep_ms: float = Field(0.0, ge=0.0, le=10_000.0)
    origin: str = ""  # who sent it (an edge, a session), to see batches mix them
    image: bytes | None = None


class SleepOut(BaseModel):
    n: int
    pid: int  # the worker process that ran it
    batch: list[str]  # origin:n of every input of its batch
    image_bytes: int = 0
    timings: dict[str, float] = Field(default_factory=dict)


class Preview(BaseModel):
    step: int


class SleepApp(App):
    """Each batch sleeps for the largest ``sleep_ms`` in it: a stand-in for a GPU model.

    ``seen`` records every batch (``origin:n`` of its inputs) in the process that runs it.
    """

    app_id = "test/sleep"
    title = "Sleep"

    #: What :meth:`weights_info` says once :meth:`setup` ran (where the app runs, not where it is only named).
    WEIGHTS = WeightsInfo("random", "test/sleep-config", reason="no weights in tests", fix="--weights DIR")

    def __init__(self) -> None:
        self.seen: list[list[str]] = []
        self.set_up = False

    def setup(self) -> None:
        self.set_up = True

    def weights_info(self) -> WeightsInfo | None:
        return self.WEIGHTS if self.set_up else None

    def _run(self, inputs: list[SleepIn]) -> list[SleepOut]:
        batch = [f"{i.origin}:{i.n}" for i in inputs]
        self.seen.append(batch)
        delay_ms = max(i.sleep_ms for i in inputs)
        if delay_ms:
            time.sleep(delay_ms / 1000.0)
        pid = os.getpid()
        return [SleepOut(n=i.n, pid=pid, batch=batch, image_bytes=len(i.image or b"")) for i in inputs]

    def admit(self, path: str, inp: BaseModel) -> None:
        """A limit: ``sleep_ms`` over 5 s is refused when it arrives."""
        if isinstance(inp, SleepIn) and inp.sleep_ms > 5000:
            raise InputError("sleep_ms over 5000 is over budget (--limit)", code="OVER_BUDGET")

    def frame_identity(self, path: str, inp: BaseModel) -> FrameIdentity | None:
        """Equal inputs give equal outputs (but for the pid), so repeats of a frame may be skipped."""
        assert isinstance(inp, SleepIn)
        return FrameIdentity(f"{inp.n}:{inp.sleep_ms}:{inp.origin}".encode(), inp.image)

    @realtime("/realtime", buffering=2, session_timeout=30.0, max_batch_size=8)
    def frames(self, inputs: list[SleepIn]) -> list[SleepOut]:
        return self._run(inputs)

    @endpoint("/", max_batch_size=8)
    def run(self, inputs: list[SleepIn], progress: Progress) -> list[SleepOut]:
        for i in range(len(inputs)):
            if progress.wanted(i):
                progress(i, Preview(step=1))
        return self._run(inputs)


class OtherSleepIn(BaseModel):
    n: str  # another model under the same app id: a different build of the app


class OtherSleepApp(App):
    app_id = "test/sleep"

    @endpoint("/")
    def run(self, inp: OtherSleepIn) -> SleepOut:
        return SleepOut(n=0, pid=os.getpid(), batch=[])
