"""``framewire/sdxl-turbo``: SDXL-turbo text-to-image and image-to-image in 1-4 steps,
batched across realtime sessions; live image-to-image from a camera (``/video``).

Reached also as ``fal-ai/fast-turbo-diffusion``. As diffusers' image-to-image pipelines
do, image-to-image runs ``int(num_inference_steps * strength)`` steps (at least one).
``guidance_scale`` above 1 turns on classifier-free guidance with ``negative_prompt``
(SDXL-turbo is trained without it; the default leaves it off).
"""

from __future__ import annotations

from pydantic import Field

from framewire.engine.api import FileInput, Progress, VideoFrame, endpoint, realtime, video
from framewire.engine.apps.diffusion import SEED_LIMIT, VIDEO_MAX_SIDE, VIDEO_PATH, DiffusionApp, DiffusionInput
from framewire.engine.media import ImageOutput, VideoOutput


class TurboInput(DiffusionInput):
    negative_prompt: str = Field("", max_length=20_000, description="Used only when guidance_scale > 1.")
    strength: float = Field(0.5, ge=0.0, le=1.0, description="How much to change the input image (0: none).")
    num_inference_steps: int = Field(2, ge=1, le=8)
    guidance_scale: float = Field(0.0, ge=0.0, le=20.0, description="Above 1: classifier-free guidance.")


class TurboImageInput(TurboInput):
    image_url: FileInput = Field(
        ...,
        description="Input image (JPEG, PNG or WebP): raw bytes (msgpack bin), a base64 data URI, or an http(s) URL.",
    )


class TurboVideoInput(TurboInput):
    """A camera frame and the session's parameters (live image-to-image)."""

    image_url: VideoFrame = Field(..., description="The camera frame (the server sets it).")  # type: ignore[assignment]
    strength: float = Field(0.5, ge=0.0, le=1.0, description="How much to change the camera frame (0: none).")
    seed: int = Field(0, ge=0, lt=SEED_LIMIT, description="The same for every frame, so the picture does not flicker.")
    num_images: int = Field(1, ge=1, le=1)


class SdxlTurboApp(DiffusionApp):
    app_id = "framewire/sdxl-turbo"
    aliases = ("fal-ai/fast-turbo-diffusion",)
    title = "SDXL-turbo"
    description = "SDXL-turbo: text- and image-to-image in one to four steps."
    tags = ("image", "realtime", "sdxl")

    family = "sdxl"
    app_name = "sdxl-turbo"
    scheduler = None  # the folder's own (Euler ancestral for SDXL-turbo)
    lcm_steps = False
    default_size = (512, 512)
    max_auto_side = 1024
    uses_cfg = True

    @realtime("/", buffering=2, session_timeout=60.0, max_batch_size=8, max_queue_delay_ms=4)
    def run(self, inputs: list[TurboInput], progress: Progress) -> list[ImageOutput]:
        return self.generate(inputs, progress)  # type: ignore[arg-type, return-value]

    @endpoint("/image-to-image", max_batch_size=8, max_queue_delay_ms=4)
    def image_to_image(self, inputs: list[TurboImageInput], progress: Progress) -> list[ImageOutput]:
        return self.generate(inputs, progress)  # type: ignore[arg-type, return-value]

    @video(VIDEO_PATH, max_side=VIDEO_MAX_SIDE, multiple_of=8, max_batch_size=8, max_queue_delay_ms=4)
    def camera(self, inputs: list[TurboVideoInput], progress: Progress) -> list[VideoOutput]:
        return self.generate_video(inputs, progress)  # type: ignore[arg-type, return-value]
