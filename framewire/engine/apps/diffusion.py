"""What the diffusion apps share: the input fields, batch keys, and the batch handler.

Importing this module needs no torch: the gateway validates inputs with these models
and computes :meth:`DiffusionApp.batch_key` per frame. The runner (torch, diffusers) is
imported in :meth:`DiffusionApp.setup`.

Image input rules, for every diffusion app:

* ``image_url`` given and ``0 < strength < 1``: image-to-image. ``strength = 0`` returns
  the input image (resized) without denoising; ``strength = 1`` ignores the image, which
  is then exactly text-to-image with the same seed.
* Output size: ``image_size`` if given; else the input image's own size (read from its
  header, scaled down to the app's ``max_auto_side``) when the image is inline bytes or a
  data URI; else the app's default size. Sides are rounded down to multiples of 8. An
  input image of another size is resized, never rejected.
* ``seed`` absent: a random one, returned in the output. Image ``j`` of ``num_images``
  uses ``seed + j``.

Limits, checked when an input arrives (:meth:`DiffusionApp.batch_key`), before any work:
an input may ask for at most ``max_megapixel_steps`` of compute (output megapixels x UNet
steps x images, twice that with classifier-free guidance), and its image may cost at most
``max_batch_megapixels`` to decode (a JPEG counts at the reduced scale it decodes at). A
batch decodes its images in waves within that budget, so memory stays bounded however
many large images arrive together. Both refusals are ``OVER_BUDGET`` errors naming the limit.
"""

from __future__ import annotations

import functools
import logging
import secrets
import time
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, Field

from framewire.engine.api import App, AppError, InputError, Progress
from framewire.engine.config import DiffusionConfig
from framewire.engine.media import (
    Image,
    ImageOutput,
    ImageSize,
    ImageSizeName,
    decoded_pixels,
    fit_size,
    image_bytes,
    named_size,
    peek_bytes,
    sniff_size,
)
from framewire.engine.sampler import BatchKey, unet_steps

if TYPE_CHECKING:
    import numpy as np

    from framewire.engine.runner import DiffusionRunner, Sample

log = logging.getLogger("framewire.engine")

SEED_LIMIT = 2**64


class DiffusionInput(BaseModel):
    """Fields common to the diffusion apps (fal's image-app names). Unknown fields are ignored."""

    prompt: str = Field(..., max_length=20_000, description="What to draw (CLIP reads the first 77 tokens).")
    image_url: bytes | str | None = Field(
        None, description="Input image for image-to-image: raw bytes (msgpack bin), a data URI, or an http(s) URL."
    )
    strength: float = Field(0.5, ge=0.0, le=1.0, description="How much to change the input image (0: none).")
    num_inference_steps: int = Field(4, ge=1, le=12)
    guidance_scale: float = Field(1.0, ge=0.0, le=20.0)
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT, description="Same seed and inputs give the same image.")
    image_size: ImageSize | ImageSizeName | None = Field(
        None, description="A preset name or {width, height}; default: the input image's size, else the app's."
    )
    num_images: int = Field(1, ge=1, le=4)
    sync_mode: bool = Field(
        False, description="Return the image inline (data URI / bytes) instead of a stored file URL."
    )
    enable_safety_checker: bool = Field(True, description="Accepted for compatibility; no safety checker runs.")


class DiffusionApp(App):
    """Base of the diffusion apps; subclasses set the family, defaults and endpoints."""

    family: ClassVar[str] = "sd15"
    app_name: ClassVar[str] = ""  # the name of --weights NAME=... and of `framewire pull NAME`
    scheduler: ClassVar[str | None] = None  # force this diffusers scheduler class
    lcm_steps: ClassVar[bool] = True  # LCM step semantics until setup reads the real scheduler
    default_size: ClassVar[tuple[int, int]] = (512, 512)
    max_auto_side: ClassVar[int] = 768
    uses_cfg: ClassVar[bool] = False  # guidance_scale > 1 means classifier-free guidance

    def __init__(self, config: DiffusionConfig | None = None) -> None:
        self.config = config or DiffusionConfig()
        self.runner: DiffusionRunner | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._lcm = self.lcm_steps

    # -- lifecycle -------------------------------------------------------------------------

    def setup(self) -> None:
        from framewire.engine.runner import DiffusionRunner

        started = time.perf_counter()
        self._pool = ThreadPoolExecutor(self.config.image_workers, thread_name_prefix=f"{self.app_name}-images")
        self.runner = DiffusionRunner(self.family, self.config, app=self.app_name, scheduler=self.scheduler)
        self._lcm = self.runner.sampler.lcm
        sizes = self.config.warmup_sizes or (self.default_size,)
        warm_s = self.runner.warmup(sizes)
        log.info(
            "%s ready in %.1f s (%s on %s, %s, warm-up %.1f s over %s)",
            self.app_id,
            time.perf_counter() - started,
            self.config.backend,
            self.runner.device,
            str(self.runner.dtype).removeprefix("torch."),
            warm_s,
            ", ".join(f"{w}x{h}" for w, h in sizes),
        )

    def teardown(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- batching --------------------------------------------------------------------------

    def _mode(self, inp: DiffusionInput) -> str:
        if inp.image_url is None or inp.strength >= 1.0:
            return "txt2img"
        return "copy" if inp.strength <= 0.0 else "img2img"

    def _size(self, inp: DiffusionInput, mode: str) -> tuple[int, int]:
        if inp.image_size is not None:
            return named_size(inp.image_size)
        if mode != "txt2img" and inp.image_url is not None:
            head = peek_bytes(inp.image_url)
            found = sniff_size(head) if head else None
            if found is not None and min(found) > 0:
                return fit_size(*found, self.max_auto_side)
        return self.default_size

    def key_for(self, inp: DiffusionInput) -> BatchKey:
        mode = self._mode(inp)
        width, height = self._size(inp, mode)
        steps = 0 if mode == "copy" else unet_steps(self._lcm, inp.num_inference_steps, inp.strength, mode == "img2img")
        cfg = self.uses_cfg and mode != "copy" and inp.guidance_scale > 1.0
        return BatchKey(mode, width, height, steps, cfg)

    def batch_key(self, path: str, inp: BaseModel) -> Hashable:
        assert isinstance(inp, DiffusionInput)
        key = self.key_for(inp)
        self._admit(inp, key)
        return key

    def _admit(self, inp: DiffusionInput, key: BatchKey) -> None:
        """Refuse an input over the compute budget or the decode budget (see the module docstring)."""
        if key.mode != "copy":
            cost = key.width * key.height / 1e6 * key.steps * inp.num_images * (2 if key.cfg else 1)
            limit = self.config.max_megapixel_steps
            if cost > limit:
                raise InputError(
                    f"this input needs {cost:.1f} megapixel-steps ({key.width}x{key.height} x {key.steps} steps x "
                    f"{inp.num_images} images{' x 2 for guidance' if key.cfg else ''}); the limit is {limit:g} "
                    "(--max-megapixel-steps): ask for a smaller image_size, fewer num_images or fewer steps",
                    code="OVER_BUDGET",
                )
        if key.mode == "txt2img" or inp.image_url is None:
            return
        if isinstance(inp.image_url, str) and not inp.image_url.startswith("data:"):
            image_bytes(inp.image_url)  # raises: URLs are fetched before the engine
        pixels = self._decode_cost(inp, key)
        limit_px = self.config.max_batch_megapixels * 1e6
        if pixels is not None and pixels > limit_px:
            raise InputError(
                f"image_url: decoding this image takes {pixels / 1e6:.1f} megapixels; the limit is "
                f"{limit_px / 1e6:g} (--max-batch-megapixels): send a smaller image or a JPEG",
                field="image_url",
                code="OVER_BUDGET",
            )

    def _decode_cost(self, inp: DiffusionInput, key: BatchKey) -> int | None:
        """Pixels decoding the input image costs, from its header; None when the header does not say."""
        head = peek_bytes(inp.image_url) if inp.image_url is not None else None
        found = sniff_size(head) if head else None
        if head is None or found is None:
            return None
        return decoded_pixels(head, *found, (key.width, key.height))

    def _decode_waves(self, inputs: list[DiffusionInput], keys: list[BatchKey], members: list[int]) -> list[list[int]]:
        """``members`` split into consecutive groups decoding at most ``max_batch_megapixels`` each."""
        budget = self.config.max_batch_megapixels * 1e6
        waves: list[list[int]] = []
        spent = budget
        for i in members:
            known = self._decode_cost(inputs[i], keys[i])
            cost = budget if known is None else float(known)  # unknown: decoded on its own
            if spent + cost > budget:
                waves.append([])
                spent = 0.0
            waves[-1].append(i)
            spent += cost
        return waves

    # -- the batch handler -----------------------------------------------------------------

    def _decode(self, inp: DiffusionInput, key: BatchKey) -> np.ndarray:
        from framewire.engine.imaging import decode_image

        assert inp.image_url is not None
        data = image_bytes(inp.image_url)
        return decode_image(data, key.width, key.height, int(self.config.max_batch_megapixels * 1e6))

    def generate(self, inputs: list[DiffusionInput], progress: Progress) -> list[ImageOutput | AppError]:
        """Run a batch of inputs; one output (or per-input error) per input, in order."""
        from framewire.engine.imaging import encode_jpeg
        from framewire.engine.runner import Cancelled, Sample

        if self.runner is None or self._pool is None:
            raise RuntimeError(f"{self.app_id} is not set up")
        started = time.perf_counter()
        results: list[ImageOutput | AppError | None] = [None] * len(inputs)
        keys = [self.key_for(inp) for inp in inputs]
        seeds = [inp.seed if inp.seed is not None else secrets.randbelow(2**32) for inp in inputs]
        needs_image = [i for i, key in enumerate(keys) if key.mode != "txt2img"]
        decoded: dict[int, np.ndarray | AppError] = {}
        for wave in self._decode_waves(inputs, keys, needs_image):  # memory: one budget's worth at a time
            pool = self._pool
            decoded.update(
                zip(wave, pool.map(self._try_decode, [inputs[i] for i in wave], [keys[i] for i in wave]), strict=True)
            )
        for i, got in decoded.items():
            if isinstance(got, AppError):
                results[i] = got
        prepare_ms = (time.perf_counter() - started) * 1000.0

        pixels: dict[int, list[np.ndarray]] = {}
        generate_ms: dict[BatchKey, float] = {}
        groups: dict[BatchKey, list[int]] = {}
        for i, key in enumerate(keys):
            if results[i] is None:
                groups.setdefault(key, []).append(i)
        for key, members in groups.items():
            if key.mode == "copy":
                for i in members:
                    pixels[i] = [decoded[i]] * inputs[i].num_images  # type: ignore[list-item]
                continue
            samples: list[Sample] = []
            owners: list[int] = []
            for i in members:
                inp = inputs[i]
                for j in range(inp.num_images):
                    samples.append(
                        Sample(
                            prompt=inp.prompt,
                            seed=(seeds[i] + j) % SEED_LIMIT,
                            steps=inp.num_inference_steps,
                            strength=inp.strength if key.mode == "img2img" else 1.0,
                            guidance_scale=inp.guidance_scale,
                            negative_prompt=getattr(inp, "negative_prompt", ""),
                            image=decoded.get(i) if key.mode == "img2img" else None,  # type: ignore[arg-type]
                        )
                    )
                    owners.append(i)
            t0 = time.perf_counter()
            try:
                images = self.runner.generate(
                    key,
                    samples,
                    on_step=self._previewer(inputs, owners, seeds, key, progress),
                    should_stop=functools.partial(_all_cancelled, progress, tuple(members)),
                )
            except Cancelled:
                for i in members:
                    results[i] = AppError("the request was cancelled", code="CANCELLED")
                continue
            generate_ms[key] = (time.perf_counter() - t0) * 1000.0
            for owner, image in zip(owners, images, strict=True):
                pixels.setdefault(owner, []).append(image)

        t0 = time.perf_counter()
        order = [i for i in sorted(pixels) if not progress.cancelled(i)]
        flat = [(i, img) for i in order for img in pixels[i]]
        jpegs = list(self._pool.map(lambda item: encode_jpeg(item[1], self.config.jpeg_quality), flat))
        jpeg_ms = (time.perf_counter() - t0) * 1000.0
        by_input: dict[int, list[Image]] = {}
        for (i, img), data in zip(flat, jpegs, strict=True):
            by_input.setdefault(i, []).append(Image(content=data, width=img.shape[1], height=img.shape[0]))
        for i, inp in enumerate(inputs):
            if results[i] is not None:
                continue
            if i not in by_input:
                results[i] = AppError("the request was cancelled", code="CANCELLED")
                continue
            timings = {"prepare_ms": round(prepare_ms, 3), "jpeg_ms": round(jpeg_ms, 3)}
            if keys[i] in generate_ms:
                timings["generate_ms"] = round(generate_ms[keys[i]], 3)
            results[i] = ImageOutput(
                images=by_input[i],
                timings=timings,
                seed=seeds[i],
                has_nsfw_concepts=[False] * len(by_input[i]),
                prompt=inp.prompt,
            )
        return [r for r in results if r is not None]

    def _try_decode(self, inp: DiffusionInput, key: BatchKey) -> np.ndarray | AppError:
        try:
            return self._decode(inp, key)
        except AppError as exc:
            return exc

    def _previewer(
        self, inputs: list[DiffusionInput], owners: list[int], seeds: list[int], key: BatchKey, progress: Progress
    ) -> Any:
        """An ``on_step`` hook sending a cheap preview to inputs whose caller streams, or None."""
        from framewire.engine.imaging import encode_jpeg

        if not any(progress.wanted(i) for i in set(owners)):
            return None
        runner = self.runner
        assert runner is not None

        def on_step(k: int, first: int, x0: Any) -> None:
            rows = [r for r in range(x0.shape[0]) if progress.wanted(owners[first + r])]
            if not rows:
                return
            previews = runner.preview(x0[rows])
            by_owner: dict[int, list[Image]] = {}
            for r, rgb in zip(rows, previews, strict=True):
                by_owner.setdefault(owners[first + r], []).append(
                    Image(content=encode_jpeg(rgb, 80), width=rgb.shape[1], height=rgb.shape[0])
                )
            for owner, images in by_owner.items():
                partial = ImageOutput(
                    images=images,
                    timings={"step": k + 1, "steps": key.steps},
                    seed=seeds[owner],
                    has_nsfw_concepts=[False] * len(images),
                    prompt=inputs[owner].prompt,
                )
                progress(owner, partial)

        return on_step


def _all_cancelled(progress: Progress, members: tuple[int, ...]) -> bool:
    """Whether every caller of a batch's inputs has given up (the batch may stop early)."""
    return all(progress.cancelled(i) for i in members)
