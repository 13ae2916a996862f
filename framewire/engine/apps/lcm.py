"""``framewire/lcm``: SD1.5-class Latent Consistency Model — text-to-image, image-to-image,
sketch-to-image, in 1-8 steps, batched across realtime sessions; live image-to-image from a
camera (``/video``: ``POST /framewire/lcm/start-session``).

Reached also as ``fal-ai/fast-lcm-diffusion`` and ``fal-ai/lcm-sd15-i2i``. Guidance enters
the distilled UNet as an embedding (no doubled batch); frames with different prompts,
seeds, strengths and guidance share one batch.
"""

from __future__ import annotations

from pydantic import Field

from framewire.engine.api import FileInput, Progress, VideoFrame, endpoint, realtime, video
from framewire.engine.apps.diffusion import SEED_LIMIT, VIDEO_MAX_SIDE, VIDEO_PATH, DiffusionApp, DiffusionInput
from framewire.engine.media import ImageOutput, VideoOutput


class LcmInput(DiffusionInput):
    strength: float = Field(0.8, ge=0.0, le=1.0, description="How much to change the input image (0: none).")
    num_inference_steps: int = Field(4, ge=1, le=8)
    guidance_scale: float = Field(1.0, ge=0.0, le=16.0, description="LCM guidance (an embedding, not CFG).")


class LcmImageInput(LcmInput):
    image_url: FileInput = Field(
        ...,
        description="Input image (JPEG, PNG or WebP): raw bytes (msgpack bin), a base64 data URI, or an http(s) URL.",
    )


class LcmVideoInput(LcmInput):
    """A camera frame and the session's parameters (live image-to-image)."""

    image_url: VideoFrame = Field(..., description="The camera frame (the server sets it).")  # type: ignore[assignment]
    strength: float = Field(0.5, ge=0.0, le=1.0, description="How much to change the camera frame (0: none).")
    seed: int = Field(0, ge=0, lt=SEED_LIMIT, description="The same for every frame, so the picture does not flicker.")
    num_images: int = Field(1, ge=1, le=1)


class LcmApp(DiffusionApp):
    app_id = "framewire/lcm"
    aliases = ("fal-ai/fast-lcm-diffusion", "fal-ai/lcm-sd15-i2i")
    title = "LCM (SD1.5)"
    description = "Latent Consistency Model: text-, image- and sketch-to-image in a few steps."
    tags = ("image", "realtime", "lcm")

    family = "sd15"
    app_name = "lcm"
    scheduler = "LCMScheduler"
    lcm_steps = True
    default_size = (512, 512)
    max_auto_side = 768

    @realtime("/", buffering=2, session_timeout=60.0, max_batch_size=8, max_queue_delay_ms=4)
    def run(self, inputs: list[LcmInput], progress: Progress) -> list[ImageOutput]:
        return self.generate(inputs, progress)  # type: ignore[arg-type, return-value]

    @endpoint("/image-to-image", max_batch_size=8, max_queue_delay_ms=4)
    def image_to_image(self, inputs: list[LcmImageInput], progress: Progress) -> list[ImageOutput]:
        return self.generate(inputs, progress)  # type: ignore[arg-type, return-value]

    @video(VIDEO_PATH, max_side=VIDEO_MAX_SIDE, multiple_of=8, max_batch_size=8, max_queue_delay_ms=4)
    def camera(self, inputs: list[LcmVideoInput], progress: Progress) -> list[VideoOutput]:
        return self.generate_video(inputs, progress)  # type: ignore[arg-type, return-value]
