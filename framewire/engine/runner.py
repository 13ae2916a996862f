"""The batched diffusion runner: frames from many sessions, one UNet call per step.

A batch shares its image size and its step count (:class:`BatchKey`); each frame keeps
its own prompt, seed, strength and guidance (:class:`Sample`, the per-frame state, never
stored on the shared pipeline). In a ``mixed`` batch text-to-image and image-to-image
frames share the UNet calls: the image-to-image frames are encoded (alone), and a
text-to-image frame starts from its noise as it would in a batch of its own. Per step the whole batch runs one UNet call
and one fused linear update (:mod:`framewire.engine.sampler`). Prompt embeddings are cached per
prompt (bounded LRU). Device buffers are allocated once per (size, batch bucket) and
reused; a batch makes one host sync, when its uint8 images are copied back. With a
static-shape backend (``compile``, ``tensorrt``) batches are padded to a bucket, so each
bucket replays its own captured graph.

The fused kernels of :mod:`kernels` run on the frame path: ``preprocess`` and
``postprocess`` around the models (:mod:`framewire.engine.imaging`), and ``group_norm_silu`` swapped
into the UNet and VAE at load, before anything is compiled or captured.

CUDA out-of-memory halves the batch and retries; other CUDA errors raise
:class:`framewire.engine.api.EngineFault`, on which the host restarts the app.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from framewire.engine.api import EngineError, EngineFault
from framewire.engine.backend import build_backend
from framewire.engine.config import Backend, DiffusionConfig
from framewire.engine.imaging import normalise_into
from framewire.engine.loading import Loaded, load_pipeline, weights_key
from framewire.engine.sampler import BatchKey, Plan, Sampler
from framewire.kernels import postprocess, runtime
from framewire.kernels.group_norm_silu import swap_group_norm_silu

log = logging.getLogger("framewire.engine")

__all__ = ["BatchKey", "Cancelled", "DiffusionRunner", "Sample"]


@dataclass(eq=False)
class Sample:
    """One image to make. ``steps`` is the requested ``num_inference_steps``."""

    prompt: str
    seed: int
    steps: int
    strength: float = 1.0
    guidance_scale: float = 1.0
    negative_prompt: str = ""
    image: np.ndarray | None = None  # uint8 [H, W, 3] at the key's size (img2img)


class Cancelled(Exception):
    """Every caller of the batch gave up; the batch stopped between steps."""


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"--device {spec!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: this torch build or machine has no CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    if spec == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[spec]


_LOAD_LOCK = threading.Lock()


class PromptCache:
    """Prompt text → embeddings on the device, least recently used dropped first."""

    def __init__(self, encode: Callable[[list[str]], list[tuple[torch.Tensor, torch.Tensor | None]]], size: int):
        self._encode = encode
        self._size = size
        self._items: OrderedDict[str, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, prompts: Sequence[str]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        missing = list(dict.fromkeys(p for p in prompts if p not in self._items))
        self.misses += len(missing)
        self.hits += len(prompts) - len(missing)
        if missing:
            for prompt, item in zip(missing, self._encode(missing), strict=True):
                self._items[prompt] = item
        found = []
        for p in prompts:
            self._items.move_to_end(p)
            found.append(self._items[p])
        while len(self._items) > self._size:
            self._items.popitem(last=False)
        return found


class DiffusionRunner:
    """Loads one pipeline's components and runs batches of :class:`Sample` on them."""

    def __init__(
        self,
        family: str,
        config: DiffusionConfig,
        *,
        app: str,
        scheduler: str | None = None,
        pipeline: Any = None,
        memory_key: str | None = None,
    ) -> None:
        """Load ``app``'s weights as ``config`` says, or run ``pipeline``, one built in memory
        (``memory_key`` then names it in compiled artefacts' keys)."""
        # diffusers and transformers import their classes lazily, and two apps setting up on
        # their own threads race on those first imports: load one app at a time.
        with _LOAD_LOCK:
            self._load(family, config, app, scheduler, pipeline, memory_key)

    def _load(
        self,
        family: str,
        config: DiffusionConfig,
        app: str,
        scheduler: str | None,
        pipeline: Any,
        memory_key: str | None,
    ) -> None:
        from diffusers import AutoencoderKL, AutoencoderTiny

        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # this thread's current device, for libraries that use it
        if pipeline is None:
            loaded: Loaded | None = load_pipeline(
                family, config, app=app, scheduler=scheduler, device=self.device, dtype=self.dtype
            )
            pipe = loaded.pipe
        else:  # built in memory (benchmarks): the caller chose its scheduler and VAE
            loaded, pipe = None, pipeline
            pipe.set_progress_bar_config(disable=True)
        self.loaded = loaded
        self.folder = loaded.resolved.folder if loaded is not None else None
        self.weights_key = weights_key(loaded, memory_key)
        self.sdxl = getattr(pipe, "text_encoder_2", None) is not None
        if self.sdxl != (family == "sdxl"):
            kind = "an SDXL" if self.sdxl else "an SD1.5-class"
            raise ValueError(f"weights at {self.folder} are {kind} pipeline; {app} needs a {family} pipeline")
        self.sampler = Sampler(pipe.scheduler)
        self.pipe = pipe
        self.unet = pipe.unet.to(self.device).eval().requires_grad_(False)
        vae = pipe.vae
        self.kl = isinstance(vae, AutoencoderKL)
        vae_dtype = self.dtype
        if self.kl and self.dtype == torch.float16 and vae.config.get("force_upcast", False):
            vae_dtype = torch.float32
            log.warning(
                "%s: the VAE's config says it overflows in float16, so it runs in float32 (slower); "
                "use --tiny-vae or an fp16-safe VAE for speed",
                app,
            )
        vae = vae.to(self.device) if vae_dtype == vae.dtype else vae.to(self.device, vae_dtype)
        self.vae = vae.eval().requires_grad_(False)
        self.vae_dtype = vae_dtype  # diffusers' Module.dtype walks every parameter: read it once
        assert isinstance(self.vae, AutoencoderKL | AutoencoderTiny)
        for encoder in ("text_encoder", "text_encoder_2"):
            module = getattr(pipe, encoder, None)
            if module is not None:
                module.to(self.device).eval().requires_grad_(False)
        if self.device.type == "cuda":  # NHWC convolutions are faster on tensor cores
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        self.fused_norms = self._fuse_norms(config.backend)
        post_blocker = postprocess.unavailable(self.device)
        self.fused_post = post_blocker is None
        if post_blocker is not None:
            runtime.report_fallback(postprocess.OP, post_blocker)
        self.scale = float(self.vae.config.scaling_factor)
        self.shift = float(self.vae.config.get("shift_factor") or 0.0)
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.w_dim = self.unet.config.time_cond_proj_dim  # LCM-distilled UNets take guidance as an embedding
        self.prompts = PromptCache(self._encode_prompts, config.prompt_cache_size)
        self._w_embeddings: dict[float, torch.Tensor] = {}
        self.backend = build_backend(self, config)
        self._buffers: OrderedDict[tuple[Any, ...], dict[str, torch.Tensor]] = OrderedDict()
        self._preview_map = self._fit_preview()

    # -- loading -----------------------------------------------------------------------------

    def _fuse_norms(self, backend: Backend) -> int:
        """Swap GroupNorm+SiLU pairs for the fused kernel (before any compile or capture); how many.

        The swap leaves the models as they are where the kernels cannot run (switched off, no
        Triton, not CUDA) and logs why. TensorRT fuses these pairs itself and cannot take the
        custom op in an ONNX export, so with it only the VAE encoder, which stays in torch, is swapped.
        """
        if backend == Backend.TENSORRT:
            encoder = getattr(self.vae, "encoder", None)
            return 0 if encoder is None else swap_group_norm_silu(encoder)
        return swap_group_norm_silu(self.unet) + swap_group_norm_silu(self.vae)

    def _encode_prompts(self, prompts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        with torch.inference_mode():
            if self.sdxl:
                emb, _, pooled, _ = self.pipe.encode_prompt(
                    prompt=prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
                )
                return [(emb[i], pooled[i]) for i in range(len(prompts))]
            emb, _ = self.pipe.encode_prompt(prompts, self.device, 1, False)
            return [(emb[i], None) for i in range(len(prompts))]

    def _fit_preview(self) -> torch.Tensor:
        """A least-squares linear map latents → RGB, fitted against this model's own VAE.

        Previews (per-step partial outputs) project latents with it instead of decoding.
        """
        gen = torch.Generator(self.device).manual_seed(0)
        latents = torch.randn((4, 4, 8, 8), generator=gen, device=self.device)
        with torch.inference_mode():
            rgb = self.vae.decode((latents / self.scale + self.shift).to(self.vae_dtype), return_dict=False)[0]
        rgb = torch.nn.functional.avg_pool2d(rgb.float(), self.vae_factor)  # [4, 3, 8, 8]
        x = torch.cat([latents, torch.ones_like(latents[:, :1])], 1).permute(0, 2, 3, 1).reshape(-1, 5)
        y = rgb.permute(0, 2, 3, 1).reshape(-1, 3)
        return torch.linalg.lstsq(x.double().cpu(), y.double().cpu()).solution.float().to(self.device)  # [5, 3]

    # -- buffers -----------------------------------------------------------------------------

    def _buffer_set(self, key: tuple[Any, ...]) -> dict[str, torch.Tensor]:
        found = self._buffers.get(key)
        if found is None:
            found = self._buffers[key] = {}
            log.debug("allocating buffers for %s", key)
            if len(self._buffers) > 16:
                self._buffers.popitem(last=False)
        else:
            self._buffers.move_to_end(key)
        return found

    def _buf(
        self,
        bufs: dict[str, torch.Tensor],
        name: str,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        *,
        host: bool = False,
    ) -> torch.Tensor:
        t = bufs.get(name)
        if t is None or t.shape != shape:
            if host:
                t = torch.empty(shape, dtype=dtype, pin_memory=self.device.type == "cuda")
            else:
                t = torch.empty(shape, dtype=dtype, device=self.device)
            bufs[name] = t
        return t

    # -- running -----------------------------------------------------------------------------

    def bucket_for(self, n: int) -> int:
        return next((b for b in self.config.batch_buckets if b >= n), self.config.max_batch)

    def generate(
        self,
        key: BatchKey,
        samples: Sequence[Sample],
        *,
        on_step: Callable[[int, int, torch.Tensor], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """Make one image per sample: uint8 ``[N, H, W, 3]``.

        ``key.mode`` ``mixed``: a sample with an ``image`` is image-to-image, one without
        text-to-image (each gives what it gives in a batch of its own mode).

        ``on_step(k, first, x0)`` sees step ``k``'s denoised estimate ``[n, 4, h, w]`` of
        samples ``first .. first + n - 1`` (for previews; batches over the largest bucket
        run in several chunks);
        ``should_stop()`` is asked between steps and raises :class:`Cancelled` when true.
        """
        if key.mode not in ("txt2img", "img2img", "mixed"):
            raise ValueError(f"the runner makes txt2img, img2img and mixed batches, not {key.mode!r}")
        out = np.empty((len(samples), key.height, key.width, 3), np.uint8)
        for start in range(0, len(samples), self.config.max_batch):
            chunk = samples[start : start + self.config.max_batch]
            chunk_step = None
            if on_step is not None:

                def chunk_step(k: int, x0: torch.Tensor, _start: int = start) -> None:
                    on_step(k, _start, x0)

            self._run_halving(key, chunk, out[start : start + len(chunk)], chunk_step, should_stop)
        return out

    def _run_halving(
        self,
        key: BatchKey,
        samples: Sequence[Sample],
        out: np.ndarray,
        on_step: Callable[[int, torch.Tensor], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        try:
            self._run_bucket(key, samples, out, on_step, should_stop)
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(samples) == 1:
                raise EngineError(
                    f"out of GPU memory for one {key.width}x{key.height} image; try a smaller image_size"
                ) from None
            half = len(samples) // 2
            log.warning(
                "out of memory on a batch of %d at %dx%d; retrying as %d + %d",
                len(samples),
                key.width,
                key.height,
                half,
                len(samples) - half,
            )
            self._run_halving(key, samples[:half], out[:half], on_step, should_stop)
            self._run_halving(key, samples[half:], out[half:], on_step, should_stop)
        except torch.AcceleratorError as exc:  # a sticky device error: the app must be rebuilt
            raise EngineFault(f"device error: {exc}") from exc

    def _run_bucket(
        self,
        key: BatchKey,
        samples: Sequence[Sample],
        out: np.ndarray,
        on_step: Callable[[int, torch.Tensor], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        n = len(samples)
        batch = self.bucket_for(n) if self.backend.static_shapes else n
        rows = list(samples) + [samples[-1]] * (batch - n)  # padding rows repeat the last frame
        if key.mode == "mixed":
            with_image = [s.image is not None for s in rows]
        else:
            with_image = [key.mode == "img2img"] * batch
            if key.mode == "img2img" and any(s.image is None for s in rows):
                raise ValueError("an img2img frame has no image")
        plans: list[Plan] = [
            self.sampler.plan(s.steps, s.strength, i2i) for s, i2i in zip(rows, with_image, strict=True)
        ]
        steps = plans[0].steps
        if any(p.steps != steps for p in plans) or steps != key.steps:
            raise ValueError(f"frames of one batch must take the same number of steps ({key.steps})")
        h, w = key.height // self.vae_factor, key.width // self.vae_factor
        encoded = [i for i, i2i in enumerate(with_image) if i2i]
        # Draw slot 0 is the KL posterior sample of image-to-image frames; a frame that draws
        # none leaves it zero (its latents are multiplied by 0). Then the initial noise, then
        # one draw per step that draws.
        posterior = 1 if (encoded and self.kl) else 0
        draws = posterior + 1 + plans[0].step_draws
        bufs = self._buffer_set((key.width, key.height, batch, key.cfg))
        dev = self.device

        with torch.inference_mode():
            # Per-frame noise from per-frame generators, in the pipelines' draw order; then laid
            # out draw-major, so that each draw is one contiguous [B, 4, h, w] tensor whatever the
            # step count (a compiled step is specialised on its inputs' strides).
            drawn = self._buf(bufs, f"drawn{draws}", (batch, draws, 4, h, w), torch.float32)
            for i, sample in enumerate(rows):
                gen = torch.Generator(dev).manual_seed(sample.seed)
                skip = posterior if not (with_image[i] and self.kl) else 0
                if skip:
                    drawn[i, :skip].zero_()
                torch.randn((draws - skip, 4, h, w), generator=gen, device=dev, out=drawn[i, skip:])
            noise = self._buf(bufs, f"noise{draws}", (draws, batch, 4, h, w), torch.float32)
            noise.copy_(drawn.transpose(0, 1))
            coef_host = torch.tensor([[p.coefs[k] for p in plans] for k in range(steps)], dtype=torch.float32)
            coefs = self._buf(bufs, f"coefs{steps}", (steps, batch, 6), torch.float32)
            coefs.copy_(coef_host, non_blocking=True)
            ts = self._buf(bufs, f"t{steps}", (steps, batch), torch.float32)
            ts.copy_(torch.tensor([[p.timesteps[k] for p in plans] for k in range(steps)]), non_blocking=True)
            cond = self._conditioning(bufs, key, rows)

            x = self._buf(bufs, "x", (batch, 4, h, w), torch.float32)
            inits = torch.tensor([[p.init_a, p.init_c] for p in plans], dtype=torch.float32).view(batch, 2, 1, 1, 1)
            inits = inits.to(dev, non_blocking=True)
            if encoded:
                z = self._encode_rows(bufs, key, rows, encoded, noise[0] if posterior else None)
                torch.add(inits[:, 0] * z, inits[:, 1] * noise[posterior], out=x)
            else:
                torch.mul(inits[:, 1], noise[0], out=x)

            first_step_noise = posterior + 1
            for k in range(steps):
                if should_stop is not None and should_stop():
                    raise Cancelled()
                step_noise = noise[min(first_step_noise + k, draws - 1)]  # the last LCM step draws none (c = 0)
                x_next, x0 = self.backend.step(x, ts[k], coefs[k], step_noise, cond)
                x.copy_(x_next)
                if on_step is not None:
                    on_step(k, x0[:n])
            pixels_u8 = self.backend.decode(x)  # [B, H, W, 3] uint8 on the device
            result = self._buf(bufs, "result_host", (batch, key.height, key.width, 3), torch.uint8, host=True)
            result.copy_(pixels_u8, non_blocking=True)
            if dev.type == "cuda":
                torch.cuda.current_stream(dev).synchronize()  # the batch's one host sync
            out[...] = result[:n].numpy()

    def _encode_rows(
        self,
        bufs: dict[str, torch.Tensor],
        key: BatchKey,
        rows: list[Sample],
        encoded: list[int],
        posterior: torch.Tensor | None,
    ) -> torch.Tensor:
        """The scaled latents ``[B, 4, h, w]`` of the rows in ``encoded`` (zeros elsewhere).

        ``posterior`` ``[B, 4, h, w]`` is the KL VAE's sampling noise per row. When only
        some rows have images, just those are encoded (padded to a bucket for a static backend).
        """
        batch = len(rows)
        part = len(encoded) < batch
        m = (self.bucket_for(len(encoded)) if self.backend.static_shapes else len(encoded)) if part else batch
        picked = encoded + [encoded[-1]] * (m - len(encoded))
        tag = f"_{m}" if part else ""
        images = self._buf(bufs, f"images_host{tag}", (m, key.height, key.width, 3), torch.uint8, host=True)
        for slot, row in enumerate(picked):
            image = rows[row].image
            if image is None:
                raise ValueError("an img2img frame has no image")
            images[slot].numpy()[...] = image
        images_dev = self._buf(bufs, f"images{tag}", images.shape, torch.uint8)
        images_dev.copy_(images, non_blocking=True)
        pixels = self._buf(bufs, f"pixels{tag}", (m, 3, key.height, key.width), self.vae_dtype)
        mean, std = self.backend.encode(normalise_into(images_dev, pixels))
        if not part:
            return mean.float() + std.float() * posterior if posterior is not None else mean.float()
        index = torch.tensor(encoded, device=self.device)
        mean, std = mean[: len(encoded)].float(), std[: len(encoded)].float()
        if posterior is not None:
            mean = mean + std * posterior.index_select(0, index)
        z = torch.zeros((batch, *mean.shape[1:]), dtype=torch.float32, device=self.device)  # [B, 4, h, w]
        return z.index_copy_(0, index, mean)

    def _conditioning(
        self, bufs: dict[str, torch.Tensor], key: BatchKey, rows: list[Sample]
    ) -> dict[str, torch.Tensor | None]:
        batch = len(rows)
        found = self.prompts.get([s.prompt for s in rows])
        emb0 = found[0][0]
        emb = self._buf(bufs, "emb", (batch, *emb0.shape), emb0.dtype)
        torch.stack([e for e, _ in found], out=emb)
        cond: dict[str, torch.Tensor | None] = {"emb": emb, "w": None, "text_embeds": None, "time_ids": None, "g": None}
        if self.w_dim is not None:
            w = self._buf(bufs, "w", (batch, self.w_dim), self.dtype)
            torch.stack([self._guidance_embedding(s.guidance_scale) for s in rows], out=w)  # [B, w_dim]
            cond["w"] = w
        if self.sdxl:
            pooled0 = found[0][1]
            assert pooled0 is not None
            pooled = self._buf(bufs, "pooled", (batch, *pooled0.shape), pooled0.dtype)
            torch.stack([p for _, p in found], out=pooled)  # type: ignore[misc]
            cond["text_embeds"] = pooled
            ids = torch.tensor([key.height, key.width, 0, 0, key.height, key.width], dtype=self.dtype)
            cond["time_ids"] = self._buf(bufs, "time_ids", (batch, 6), self.dtype).copy_(ids.expand(batch, 6))
        if key.cfg:
            negatives = self._negatives(bufs, rows)
            cond.update(negatives)
            g = torch.tensor([s.guidance_scale for s in rows], dtype=torch.float32).view(batch, 1, 1, 1)
            cond["g"] = self._buf(bufs, "g", (batch, 1, 1, 1), torch.float32).copy_(g, non_blocking=True)
        return cond

    def _guidance_embedding(self, scale: float) -> torch.Tensor:
        """An LCM UNet's guidance input ``[w_dim]`` on the device, cached per scale (bounded)."""
        found = self._w_embeddings.get(scale)
        if found is None:
            if len(self._w_embeddings) >= 1024:
                self._w_embeddings.clear()
            w = torch.tensor([scale - 1.0], dtype=torch.float32)
            emb = self.pipe.get_guidance_scale_embedding(w, embedding_dim=self.w_dim)[0]
            found = self._w_embeddings[scale] = emb.to(self.device, self.dtype)
        return found

    def _negatives(self, bufs: dict[str, torch.Tensor], rows: list[Sample]) -> dict[str, torch.Tensor | None]:
        """Unconditional embeddings for classifier-free guidance (empty → zeros, as SDXL does)."""
        zero_empty = bool(self.pipe.config.get("force_zeros_for_empty_prompt", False))
        found = self.prompts.get([s.negative_prompt for s in rows])
        emb = torch.stack(
            [
                torch.zeros_like(e) if zero_empty and not s.negative_prompt else e
                for (e, _), s in zip(found, rows, strict=True)
            ]
        )
        out: dict[str, torch.Tensor | None] = {
            "neg_emb": self._buf(bufs, "neg_emb", tuple(emb.shape), emb.dtype).copy_(emb)
        }
        if self.sdxl:
            pooled_rows: list[torch.Tensor] = []
            for (_, p), s in zip(found, rows, strict=True):
                assert p is not None  # SDXL prompts always carry a pooled embedding
                pooled_rows.append(torch.zeros_like(p) if zero_empty and not s.negative_prompt else p)
            pooled = torch.stack(pooled_rows)
            out["neg_text_embeds"] = self._buf(bufs, "neg_pooled", tuple(pooled.shape), pooled.dtype).copy_(pooled)
        return out

    def preview(self, x0: torch.Tensor) -> np.ndarray:
        """Denoised latents ``[N, 4, h, w]`` → a cheap uint8 RGB preview ``[N, h, w, 3]`` (syncs)."""
        with torch.inference_mode():
            lat = torch.cat([x0.float(), torch.ones_like(x0[:, :1], dtype=torch.float32)], 1)
            rgb = torch.einsum("nchw,cd->nhwd", lat, self._preview_map)
            return ((rgb / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

    # -- lifecycle ---------------------------------------------------------------------------

    def warmup(self, sizes: Sequence[tuple[int, int]], *, img2img: bool = True, cfg: bool = False) -> float:
        """Run every graph a request can hit once, so that none compiles while a user waits.

        Per size and batch bucket: text-to-image (UNet step, VAE decoder), image-to-image
        (the VAE encoder too) and, with ``cfg``, a guidance scale above 1 (the step with its
        doubled, unconditional half). Every bucket with a static-shape backend or on CUDA;
        eager on the CPU has no graphs, and one bucket warms its kernels. Returns seconds.
        """
        started = time.perf_counter()
        passes = [("txt2img", False)]
        if img2img:
            passes.append(("img2img", False))
        if cfg:
            passes.append(("txt2img", True))
        buckets = self.config.batch_buckets if self.backend.static_shapes or self.device.type == "cuda" else (1,)
        for width, height in sizes:
            blank = np.full((height, width, 3), 127, np.uint8)
            for mode, guided in passes:
                strength = 1.0 if mode == "txt2img" else 0.5
                probe = Sample(
                    prompt="", seed=0, steps=1, strength=strength, guidance_scale=2.0 if guided else 1.0, image=blank
                )
                key = BatchKey(mode, width, height, self.sampler.steps_for(1, strength, mode == "img2img"), cfg=guided)
                for bucket in buckets:
                    self.generate(key, [probe] * bucket)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - started

    def close(self) -> None:
        self._buffers.clear()
        self.backend.close()
        for name in ("unet", "vae", "pipe", "backend"):
            if hasattr(self, name):
                delattr(self, name)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
