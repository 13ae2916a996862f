"""What the diffusion apps share: the input fields, batch keys, and the batch handler.

Importing this module needs no torch: the gateway validates inputs with these models
and computes :meth:`DiffusionApp.batch_key` per frame. The runner (torch, diffusers) is
imported in :meth:`DiffusionApp.setup`.

Image input rules, for every diffusion app:

* ``image_url`` given and ``0 < strength < 1``: image-to-image. ``strength = 0`` returns
  the input image (resized) without denoising; ``strength = 1`` ignores the image, which
  is then exactly text-to-image with the same seed.
* Output size: ``image_size`` if given; else the input image's own size (read from its
  header, scaled down to the app's ``max_auto_side``) when the image is inline bytes, a
  data URI or a video frame; else the app's default size. Sides are rounded down to multiples of 8. An
  input image of another size is resized, never rejected.
* ``seed`` absent: a random one, returned in the output. Image ``j`` of ``num_images``
  uses ``seed + j``.

Text-to-image and image-to-image frames of the same size and UNet step count share a
batch. Under load the engine may run realtime frames degraded (:data:`LADDER`): at most 2
steps, then 1 step, then half the width and height. An input with a fixed ``seed`` and
an inline image (or none) has an identity, so an unchanged frame is answered with the
session's last output.

Live video (the ``/video`` endpoint, :func:`framewire.engine.api.video`): the camera frame
arrives decoded in ``image_url`` (a :class:`framewire.engine.api.VideoFrame`), so image-to-
image starts from its pixels without decoding anything, and the output frame goes back as
pixels (the server encodes the video). Camera frames have no identity: they never repeat.

Limits, checked when an input arrives (:meth:`DiffusionApp.admit`), before any work: an
input may ask for at most ``max_megapixel_steps`` of compute (output megapixels x UNet
steps x images, twice that with classifier-free guidance), and its image may cost at most
``max_decode_megapixels`` to decode (a JPEG counts at the reduced scale it decodes at).
Large images are decoded within that budget at any moment, however many arrive at once,
so memory stays bounded (small ones, such as canvas frames, never wait for it). Both
refusals are ``OVER_BUDGET`` errors naming the limit.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, Field

from framewire.engine.api import (
    App,
    AppError,
    Degraded,
    FileInput,
    FrameIdentity,
    InputError,
    Progress,
    Stages,
    VideoFrame,
    WeightsInfo,
)
from framewire.engine.config import Backend, DiffusionConfig
from framewire.engine.media import (
    Image,
    ImageOutput,
    ImageSize,
    ImageSizeName,
    VideoOutput,
    decode_data_uri,
    decoded_pixels,
    fit_size,
    image_bytes,
    named_size,
    peek_bytes,
    round8,
    sniff_size,
)
from framewire.engine.sampler import BatchKey, unet_steps

if TYPE_CHECKING:
    import numpy as np

    from framewire.engine.runner import DiffusionRunner

log = logging.getLogger("framewire.engine")

SEED_LIMIT = 2**64

#: Where the diffusion apps take live video (``POST /{app}/start-session``).
VIDEO_PATH = "video"
#: The longest side of a camera frame handed to the diffusion apps (multiples of 8).
VIDEO_MAX_SIDE = 512
#: The degradation ladder of every diffusion app, mildest first (levels 1, 2, 3).
LADDER = ("num_inference_steps<=2", "num_inference_steps=1", "half size")
#: Relative device cost of a VAE decode and encode, in UNet steps at the same size.
VAE_DECODE_STEPS, VAE_ENCODE_STEPS = 1.5, 0.75


class DiffusionInput(BaseModel):
    """Fields common to the diffusion apps (fal's image-app names). Unknown fields are ignored."""

    prompt: str = Field(..., max_length=20_000, description="What to draw (CLIP reads the first 77 tokens).")
    image_url: FileInput | None = Field(
        None,
        description="Input image for image-to-image (JPEG, PNG or WebP): raw bytes (msgpack bin), a base64 data URI, "
        "or an http(s) URL.",
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
        self._decoding = PixelBudget(int(self.config.max_decode_megapixels * 1e6))

    # -- lifecycle -------------------------------------------------------------------------

    def setup(self) -> None:
        from framewire.engine.runner import DiffusionRunner

        started = time.perf_counter()
        self._pool = ThreadPoolExecutor(self.config.image_workers, thread_name_prefix=f"{self.app_name}-images")
        self.runner = DiffusionRunner(self.family, self.config, app=self.app_name, scheduler=self.scheduler)
        self._lcm = self.runner.sampler.lcm
        sizes = self.config.warmup_sizes or (self.default_size,)
        warm_s = self.runner.warmup(sizes, cfg=self.uses_cfg)
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

    def weights_info(self) -> WeightsInfo | None:
        loaded = self.runner.loaded if self.runner is not None else None
        if loaded is None:
            return None
        got = loaded.resolved
        loras = tuple(f"{source}:{scale:g}" for source, scale, _ in loaded.loras)
        reason = got.reason
        if loaded.skipped_loras:
            reason += f" (LoRAs not fused into random weights: {', '.join(loaded.skipped_loras)})"
        return WeightsInfo("random" if got.random else "real", got.source, reason, got.fix, loras)

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
        if isinstance(inp.image_url, VideoFrame):
            return fit_size(inp.image_url.width, inp.image_url.height, self.max_auto_side)
        if mode != "txt2img" and inp.image_url is not None:
            head = peek_bytes(inp.image_url)
            found = sniff_size(head) if head else None
            if found is not None and min(found) > 0:
                return fit_size(*found, self.max_auto_side)
        return self.default_size

    def key_for(self, inp: DiffusionInput) -> BatchKey:
        """What the frame runs as: its mode (txt2img, img2img, copy), size, UNet steps and CFG."""
        mode = self._mode(inp)
        width, height = self._size(inp, mode)
        steps = 0 if mode == "copy" else unet_steps(self._lcm, inp.num_inference_steps, inp.strength, mode == "img2img")
        cfg = self.uses_cfg and mode != "copy" and inp.guidance_scale > 1.0
        return BatchKey(mode, width, height, steps, cfg)

    def batch_key(self, path: str, inp: BaseModel) -> Hashable:
        """As :meth:`key_for`, with text- and image-to-image in one ``mixed`` mode (they share UNet calls)."""
        assert isinstance(inp, DiffusionInput)
        return _shared(self.key_for(inp))

    # -- limits ----------------------------------------------------------------------------

    def admit(self, path: str, inp: BaseModel) -> None:
        """Refuse an input over the compute budget or the decode budget (see the module docstring)."""
        assert isinstance(inp, DiffusionInput)
        key = self.key_for(inp)
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
        if key.mode == "txt2img" or inp.image_url is None or isinstance(inp.image_url, VideoFrame):
            return  # a camera frame is pixels already, bounded by MAX_VIDEO_SIDE: nothing to decode
        if isinstance(inp.image_url, str) and not inp.image_url.startswith("data:"):
            image_bytes(inp.image_url)  # raises: URLs are fetched before the engine
        pixels = self._decode_cost(inp, key)
        if pixels is not None and pixels > self._decoding.total:
            raise InputError(
                f"image_url: decoding this image takes {pixels / 1e6:.1f} megapixels; the limit is "
                f"{self._decoding.total / 1e6:g} (--max-decode-megapixels): send a smaller image or a JPEG",
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

    # -- keeping latency targets under load ------------------------------------------------

    def degradation(self, path: str) -> tuple[str, ...]:
        return LADDER

    def degrade(self, path: str, inp: BaseModel, level: int) -> Degraded | None:
        """Level 1: at most 2 steps; 2: one step; 3: one step at half the width and height."""
        assert isinstance(inp, DiffusionInput)
        mode = self._mode(inp)
        if level < 1 or mode == "copy":
            return None
        changes: dict[str, Any] = {}
        notes = []
        steps = min(inp.num_inference_steps, 2) if level == 1 else 1
        if steps != inp.num_inference_steps:
            changes["num_inference_steps"] = steps
            notes.append(f"num_inference_steps {inp.num_inference_steps}→{steps}")
        if level >= 3:
            width, height = self._size(inp, mode)
            smaller = self._smaller(width, height)
            if smaller is not None:
                changes["image_size"] = ImageSize(width=smaller[0], height=smaller[1])
                notes.append(f"image_size {width}x{height}→{smaller[0]}x{smaller[1]}")
        if not changes:
            return None
        return Degraded(inp.model_copy(update=changes), "; ".join(notes))

    def _smaller(self, width: int, height: int) -> tuple[int, int] | None:
        """Half the size (multiples of 8, at least 64), if the backend can run it without compiling."""
        small = round8(width // 2), round8(height // 2)
        if small == (width, height):
            return None
        if self.config.backend != Backend.EAGER and small not in (self.config.warmup_sizes or (self.default_size,)):
            return None  # a static-shape backend would compile this size on the frame path
        return small

    def frame_cost(self, path: str, inp: BaseModel) -> float:
        """UNet steps at 512x512 (VAE passes counted as steps), times the images made."""
        assert isinstance(inp, DiffusionInput)
        key = self.key_for(inp)
        area = key.width * key.height / (512 * 512)
        if key.mode == "copy":
            return 0.05 * area * inp.num_images
        steps = key.steps * (2 if key.cfg else 1) + VAE_DECODE_STEPS
        if key.mode == "img2img":
            steps += VAE_ENCODE_STEPS
        return area * steps * inp.num_images

    def frame_identity(self, path: str, inp: BaseModel) -> FrameIdentity | None:
        """A fixed seed and an inline image (or none) decide the output; else no identity."""
        assert isinstance(inp, DiffusionInput)
        if inp.seed is None or isinstance(inp.image_url, VideoFrame):
            return None
        image: bytes | None = None
        if inp.image_url is not None and self._mode(inp) != "txt2img":
            if isinstance(inp.image_url, bytes):
                image = inp.image_url
            elif inp.image_url.startswith("data:"):
                image = decode_data_uri(inp.image_url)
            else:
                return None  # what a URL serves may change
        params = hashlib.blake2b(
            inp.model_dump_json(exclude={"image_url"}).encode() + type(inp).__qualname__.encode(), digest_size=20
        )
        return FrameIdentity(params.digest(), image)

    def stages(self, path: str) -> Stages:
        finish = self.finish_video if path == VIDEO_PATH else self.finish
        return Stages(self.prepare, self.run_batch, finish)  # type: ignore[arg-type]

    # -- the batch handler, in three stages -------------------------------------------------

    def generate(self, inputs: list[DiffusionInput], progress: Progress) -> list[ImageOutput | AppError]:
        """Run a batch of inputs; one output (or per-input error) per input, in order."""
        if self._pool is None:
            raise RuntimeError(f"{self.app_id} is not set up")
        prepared = list(self._pool.map(self._try_prepare, inputs))
        return self.finish(self.run_batch(inputs, prepared, progress), progress)

    def generate_video(self, inputs: list[DiffusionInput], progress: Progress) -> list[VideoOutput | AppError]:
        """:meth:`generate` for camera frames: one output frame (or per-input error) per input."""
        if self._pool is None:
            raise RuntimeError(f"{self.app_id} is not set up")
        prepared = list(self._pool.map(self._try_prepare, inputs))
        return self.finish_video(self.run_batch(inputs, prepared, progress), progress)

    def prepare(self, inp: DiffusionInput) -> _Prepared:
        """One input's CPU work before its batch: its seed, and its image decoded at its size."""
        started = time.perf_counter()
        seed = inp.seed if inp.seed is not None else secrets.randbelow(2**32)
        key = self.key_for(inp)
        image = None if key.mode == "txt2img" else self._decode(inp, key)
        return _Prepared(seed, image, (time.perf_counter() - started) * 1000.0)

    def _try_prepare(self, inp: DiffusionInput) -> _Prepared | AppError:
        try:
            return self.prepare(inp)
        except AppError as exc:
            return exc

    def run_batch(self, inputs: list[DiffusionInput], prepared: list[_Prepared | AppError], progress: Progress) -> _Ran:
        """The device work of a batch (one UNet call per step per group of equal keys).

        ``inputs`` are as they run (possibly degraded); ``prepared`` was made from the
        inputs as sent, so an image decoded at another size is resized here.
        """
        from framewire.engine.runner import Cancelled, Sample

        if self.runner is None:
            raise RuntimeError(f"{self.app_id} is not set up")
        ran = _Ran(inputs, [None] * len(inputs), [0] * len(inputs))
        keys = [self.key_for(inp) for inp in inputs]
        groups: dict[BatchKey, list[int]] = {}
        for i, (key, prep) in enumerate(zip(keys, prepared, strict=True)):
            if isinstance(prep, AppError):
                ran.results[i] = prep
                continue
            ran.seeds[i] = prep.seed
            ran.prepare_ms[i] = prep.ms
            if key.mode != "txt2img":
                assert prep.image is not None
                prep.image = _resized(prep.image, key.width, key.height)
            groups.setdefault(_shared(key), []).append(i)
        for key, members in groups.items():
            if key.mode == "copy":
                for i in members:
                    prep = prepared[i]
                    assert not isinstance(prep, AppError) and prep.image is not None
                    ran.pixels[i] = [prep.image] * inputs[i].num_images
                continue
            samples: list[Sample] = []
            owners: list[int] = []
            for i in members:
                inp, prep = inputs[i], prepared[i]
                assert not isinstance(prep, AppError)
                img2img = keys[i].mode == "img2img"
                for j in range(inp.num_images):
                    samples.append(
                        Sample(
                            prompt=inp.prompt,
                            seed=(prep.seed + j) % SEED_LIMIT,
                            steps=inp.num_inference_steps,
                            strength=inp.strength if img2img else 1.0,
                            guidance_scale=inp.guidance_scale,
                            negative_prompt=getattr(inp, "negative_prompt", ""),
                            image=prep.image if img2img else None,
                        )
                    )
                    owners.append(i)
            t0 = time.perf_counter()
            try:
                images = self.runner.generate(
                    key,
                    samples,
                    on_step=self._previewer(inputs, owners, ran.seeds, key, progress),
                    should_stop=functools.partial(_all_cancelled, progress, tuple(members)),
                )
            except Cancelled:
                for i in members:
                    ran.results[i] = AppError("the request was cancelled", code="CANCELLED")
                continue
            generate_ms = (time.perf_counter() - t0) * 1000.0
            for owner, image in zip(owners, images, strict=True):
                ran.pixels.setdefault(owner, []).append(image)
                ran.generate_ms[owner] = generate_ms
        return ran

    def finish(self, ran: _Ran, progress: Progress) -> list[ImageOutput | AppError]:
        """A batch's CPU work after the device: JPEG encoding and the outputs."""
        from framewire.engine.imaging import encode_jpeg

        if self._pool is None:
            raise RuntimeError(f"{self.app_id} is not set up")
        t0 = time.perf_counter()
        order = [i for i in sorted(ran.pixels) if not progress.cancelled(i)]
        flat = [(i, img) for i in order for img in ran.pixels[i]]
        jpegs = list(self._pool.map(lambda item: encode_jpeg(item[1], self.config.jpeg_quality), flat))
        jpeg_ms = (time.perf_counter() - t0) * 1000.0
        by_input: dict[int, list[Image]] = {}
        for (i, img), data in zip(flat, jpegs, strict=True):
            by_input.setdefault(i, []).append(Image(content=data, width=img.shape[1], height=img.shape[0]))
        results = list(ran.results)
        for i, inp in enumerate(ran.inputs):
            if results[i] is not None:
                continue
            if i not in by_input:
                results[i] = AppError("the request was cancelled", code="CANCELLED")
                continue
            timings = {"prepare_ms": round(ran.prepare_ms[i], 3), "jpeg_ms": round(jpeg_ms, 3)}
            if i in ran.generate_ms:
                timings["generate_ms"] = round(ran.generate_ms[i], 3)
            results[i] = ImageOutput(
                images=by_input[i],
                timings=timings,
                seed=ran.seeds[i],
                has_nsfw_concepts=[False] * len(by_input[i]),
                prompt=inp.prompt,
            )
        return [r for r in results if r is not None]

    def finish_video(self, ran: _Ran, progress: Progress) -> list[VideoOutput | AppError]:
        """A video batch's CPU work after the device: each input's first image, as pixels."""
        results: list[VideoOutput | AppError] = []
        for i, error in enumerate(ran.results):
            if error is not None:
                assert isinstance(error, AppError)
                results.append(error)
                continue
            if i not in ran.pixels or progress.cancelled(i):
                results.append(AppError("the frame was cancelled", code="CANCELLED"))
                continue
            image = ran.pixels[i][0]  # uint8 [H, W, 3]
            frame = VideoFrame(width=image.shape[1], height=image.shape[0], data=image.tobytes())
            timings = {"prepare_ms": round(ran.prepare_ms[i], 3)}
            if i in ran.generate_ms:
                timings["generate_ms"] = round(ran.generate_ms[i], 3)
            results.append(VideoOutput(frame=frame, timings=timings, seed=ran.seeds[i]))
        return results

    def _decode(self, inp: DiffusionInput, key: BatchKey) -> np.ndarray:
        from framewire.engine.imaging import decode_image

        if isinstance(inp.image_url, VideoFrame):  # already pixels: no decoding
            import numpy as np

            frame = inp.image_url
            pixels = np.frombuffer(frame.data, dtype=np.uint8).reshape(frame.height, frame.width, 3)
            return _resized(pixels, key.width, key.height)
        assert inp.image_url is not None
        data = image_bytes(inp.image_url)
        known = self._decode_cost(inp, key)
        with self._decoding.spend(self._decoding.total if known is None else known):  # unknown: decoded alone
            return decode_image(data, key.width, key.height, self._decoding.total)

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


@dataclass(eq=False)
class _Prepared:
    """One input ready for its batch: its seed and, unless text-to-image, its decoded image."""

    seed: int
    image: np.ndarray | None  # uint8 [H, W, 3]
    ms: float


@dataclass(eq=False)
class _Ran:
    """A batch after the device: pixels per input, or the input's error."""

    inputs: list[DiffusionInput]
    results: list[ImageOutput | AppError | None]
    seeds: list[int]
    pixels: dict[int, list[np.ndarray]] = field(default_factory=dict)
    prepare_ms: dict[int, float] = field(default_factory=dict)
    generate_ms: dict[int, float] = field(default_factory=dict)


def _shared(key: BatchKey) -> BatchKey:
    """The key frames batch by: text- and image-to-image share UNet calls."""
    return key if key.mode == "copy" else BatchKey("mixed", key.width, key.height, key.steps, key.cfg)


def _resized(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` at ``width`` x ``height`` (bicubic, as decoding resizes), or itself."""
    if image.shape[:2] == (height, width):
        return image
    import numpy as np
    from PIL import Image as PILImage

    resized = PILImage.fromarray(image).resize((width, height), PILImage.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8)


class PixelBudget:
    """At most ``total`` pixels being decoded at once by large images, across the decoding threads.

    Small images (at most ``total / 16``, e.g. a 1024x1024 canvas frame with the default)
    never wait: they are cheap, and the realtime path must not queue behind a large one.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.small = total // 16
        self._free = total
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def spend(self, pixels: int) -> Iterator[None]:
        """Hold ``pixels`` (at most ``total``) for the block, waiting until they are free."""
        if pixels <= self.small:
            yield
            return
        pixels = min(pixels, self.total)
        with self._cond:
            self._cond.wait_for(lambda: self._free >= pixels)
            self._free -= pixels
        try:
            yield
        finally:
            with self._cond:
                self._free += pixels
                self._cond.notify_all()


def _all_cancelled(progress: Progress, members: tuple[int, ...]) -> bool:
    """Whether every caller of a batch's inputs has given up (the batch may stop early)."""
    return all(progress.cancelled(i) for i in members)
