"""A stand-in for ``framewire/lcm`` with the diffusion apps' input and output shapes.

No model: after a fixed delay it returns the input JPEG as ``images[0].content``, so a
browser test can check that the page sends every diffusion field, reads the
``images`` output shape and keeps frames in flight bounded against a slow app.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from framewire.engine.api import App, realtime

DELAY_MS = 250.0


class ImageSize(BaseModel):
    width: int = Field(ge=64, le=2048)
    height: int = Field(ge=64, le=2048)


class DiffusionInput(BaseModel):
    prompt: str
    image_url: bytes
    strength: float = Field(gt=0.0, le=1.0)
    num_inference_steps: int = Field(ge=1, le=8)
    guidance_scale: float = Field(ge=0.0, le=20.0)
    seed: int = Field(ge=0)
    image_size: ImageSize
    sync_mode: bool


class Image(BaseModel):
    content: bytes
    width: int
    height: int
    content_type: str = "image/jpeg"


class DiffusionOutput(BaseModel):
    images: list[Image]
    seed: int
    prompt: str
    timings: dict[str, float] = Field(default_factory=dict)


class FakeDiffusionApp(App):
    app_id = "test/fake-diffusion"
    aliases = ("framewire/lcm",)

    @realtime("/", buffering=2, session_timeout=30.0, max_batch_size=4)
    def run(self, inputs: list[DiffusionInput]) -> list[DiffusionOutput]:
        started = time.perf_counter()
        time.sleep(DELAY_MS / 1000)
        denoise_ms = (time.perf_counter() - started) * 1000
        return [
            DiffusionOutput(
                images=[Image(content=i.image_url, width=i.image_size.width, height=i.image_size.height)],
                seed=i.seed,
                prompt=i.prompt,
                timings={"denoise_ms": denoise_ms, "steps": i.num_inference_steps},
            )
            for i in inputs
        ]
