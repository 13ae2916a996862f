"""Apps that cost what a diffusion model costs per step, without a model: for benchmarking
the scheduler (latency targets, degradation, skipping unchanged frames) on any machine.

A batch of ``n`` frames at ``s`` steps sleeps ``s * (STEP_MS + FRAME_STEP_MS * n)`` on the
engine's device thread, so a full batch of eight 4-step frames takes 48 ms: the device
answers :func:`capacity_fps` frames per second. Inputs and outputs follow the diffusion
apps' field names. Loaded with ``framewire serve --app framewire.bench.fake_engine:LadderSteps``.

* :class:`LadderSteps` (``bench/steps``) degrades as the diffusion apps do: at most 2
  steps, then 1.
* :class:`FixedSteps` (``bench/steps-fixed``) has no ladder: overload drops frames.
* :class:`CanvasSteps` (``bench/canvas``), the first for a canvas that mostly sits still.

All three give an input with a fixed ``seed`` an identity, so an unchanged frame is
answered with the session's last output.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Hashable

from pydantic import BaseModel, Field

from framewire.engine.api import App, Degraded, FrameIdentity, realtime

STEP_MS = 4.0
FRAME_STEP_MS = 1.0
MAX_BATCH = 8


def batch_ms(steps: int, frames: int) -> float:
    """Milliseconds a batch of ``frames`` at ``steps`` takes on the fake device."""
    return steps * (STEP_MS + FRAME_STEP_MS * frames)


def capacity_fps(steps: int = 4) -> float:
    """Frames per second the fake device answers at ``steps``, in full batches."""
    return MAX_BATCH / (batch_ms(steps, MAX_BATCH) / 1000.0)


class StepsInput(BaseModel):
    prompt: str = Field("", max_length=10_000)
    image_url: bytes | None = Field(None, description="Returned as the output image.")
    num_inference_steps: int = Field(4, ge=1, le=8)
    seed: int | None = Field(None, ge=0, lt=2**32)


class StepsOutput(BaseModel):
    image: bytes | None
    num_inference_steps: int
    seed: int
    timings: dict[str, float] = Field(default_factory=dict)


class LadderSteps(App):
    app_id = "bench/steps"
    title = "Fake diffusion (steps, with a ladder)"
    description = "Sleeps what a diffusion model would compute; degrades its steps under load."
    tags = ("bench",)
    ladder: tuple[str, ...] = ("num_inference_steps<=2", "num_inference_steps=1")

    @realtime("/", buffering=2, session_timeout=60.0, max_batch_size=MAX_BATCH, max_queue_delay_ms=4)
    def run(self, inputs: list[StepsInput]) -> list[StepsOutput]:
        steps = inputs[0].num_inference_steps  # the batch key keeps one step count per batch
        time.sleep(batch_ms(steps, len(inputs)) / 1000.0)
        return [
            StepsOutput(
                image=inp.image_url,
                num_inference_steps=inp.num_inference_steps,
                seed=inp.seed if inp.seed is not None else secrets.randbelow(2**32),
            )
            for inp in inputs
        ]

    def batch_key(self, path: str, inp: BaseModel) -> Hashable:
        assert isinstance(inp, StepsInput)
        return inp.num_inference_steps

    def frame_cost(self, path: str, inp: BaseModel) -> float:
        assert isinstance(inp, StepsInput)
        return float(inp.num_inference_steps)

    def degradation(self, path: str) -> tuple[str, ...]:
        return self.ladder

    def degrade(self, path: str, inp: BaseModel, level: int) -> Degraded | None:
        assert isinstance(inp, StepsInput)
        steps = min(inp.num_inference_steps, 2) if level == 1 else 1
        if steps == inp.num_inference_steps:
            return None
        note = f"num_inference_steps {inp.num_inference_steps}→{steps}"
        return Degraded(inp.model_copy(update={"num_inference_steps": steps}), note)

    def frame_identity(self, path: str, inp: BaseModel) -> FrameIdentity | None:
        assert isinstance(inp, StepsInput)
        if inp.seed is None:
            return None
        params = hashlib.blake2b(inp.model_dump_json(exclude={"image_url"}).encode(), digest_size=20).digest()
        return FrameIdentity(params, inp.image_url)


class FixedSteps(LadderSteps):
    app_id = "bench/steps-fixed"
    title = "Fake diffusion (steps, no ladder)"
    ladder = ()


class CanvasSteps(LadderSteps):
    app_id = "bench/canvas"
    title = "Fake diffusion (a canvas)"
