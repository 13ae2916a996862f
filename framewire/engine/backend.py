"""How the runner's three model stages execute: eager, torch.compile, or TensorRT.

The stages are small modules with tensor-only signatures (:class:`StepModule`,
:class:`DecodeModule`, :class:`EncodeModule`), so every backend runs the same code:

* ``eager`` calls them directly (any batch size).
* ``compile`` wraps each in ``torch.compile(fullgraph=True, dynamic=False)``; on CUDA
  with ``mode="reduce-overhead"``, so each (size, batch bucket) is captured once as a
  CUDA graph and replayed. Batches are padded to a bucket (``static_shapes``) and every
  bucket is warmed before the server reports ready.
* ``tensorrt`` swaps the UNet and VAE for TensorRT engines built from ONNX exports
  (:mod:`framewire.engine.tensorrt`); the linear update stays in torch.

Choosing an unavailable backend raises :class:`BackendUnavailable` at start-up; there is
no silent fallback.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from framewire.engine.config import Backend as BackendName
from framewire.engine.config import DiffusionConfig
from framewire.engine.imaging import to_uint8

if TYPE_CHECKING:
    from framewire.engine.runner import DiffusionRunner

log = logging.getLogger("framewire.engine")


class BackendUnavailable(RuntimeError):
    """The chosen backend cannot run here; the message names what is missing."""


class StepModule(nn.Module):
    """One denoising step for a batch: UNet call plus the linear update of :mod:`framewire.engine.sampler`.

    ``coefs`` is ``[B, 6]``: cin, a, b, c, pa, pb per frame. Returns (next x, denoised x0),
    both float32 ``[B, 4, h, w]``. With ``neg_emb`` the UNet runs twice the batch for
    classifier-free guidance, mixed per frame by ``g``.
    """

    def __init__(self, unet: Any, dtype: torch.dtype) -> None:
        super().__init__()
        self.unet = unet
        self.dtype = dtype

    def forward(
        self,
        x: torch.Tensor,  # [B, 4, h, w] float32
        t: torch.Tensor,  # [B] float32
        coefs: torch.Tensor,  # [B, 6] float32
        noise: torch.Tensor,  # [B, 4, h, w] float32
        emb: torch.Tensor,  # [B, 77, D]
        w: torch.Tensor | None = None,  # [B, Dw] guidance embedding (LCM)
        text_embeds: torch.Tensor | None = None,  # [B, P] pooled text (SDXL)
        time_ids: torch.Tensor | None = None,  # [B, 6] (SDXL)
        g: torch.Tensor | None = None,  # [B, 1, 1, 1] guidance scale (CFG)
        neg_emb: torch.Tensor | None = None,  # [B, 77, D] (CFG)
        neg_text_embeds: torch.Tensor | None = None,  # [B, P] (CFG, SDXL)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        c = coefs[:, :, None, None, None]  # [B, 6, 1, 1, 1]
        cin, a, b, cn, pa, pb = c.unbind(1)
        sample = (x * cin).to(self.dtype)
        added = None
        if neg_emb is not None:
            sample = torch.cat([sample, sample])
            t = torch.cat([t, t])
            emb = torch.cat([neg_emb, emb])
            w = None if w is None else torch.cat([w, w])
            if text_embeds is not None and neg_text_embeds is not None and time_ids is not None:
                text_embeds = torch.cat([neg_text_embeds, text_embeds])
                time_ids = torch.cat([time_ids, time_ids])
        if text_embeds is not None:
            added = {"text_embeds": text_embeds, "time_ids": time_ids}
        e = self.unet(
            sample, t, encoder_hidden_states=emb, timestep_cond=w, added_cond_kwargs=added, return_dict=False
        )[0]
        e = e.float()
        if neg_emb is not None:
            uncond, text = e.chunk(2)
            e = uncond + g * (text - uncond)
        return a * x + b * e + cn * noise, pa * x + pb * e


class DecodeModule(nn.Module):
    """Latents ``[B, 4, h, w]`` → uint8 images ``[B, H, W, 3]`` (VAE decode + post-processing).

    ``fused_post``: the fused post-processing kernel runs on this device (else its torch
    reference is part of the stage, see :func:`framewire.engine.imaging.to_uint8`)."""

    def __init__(self, vae: Any, scale: float, shift: float, fused_post: bool = True) -> None:
        super().__init__()
        self.vae, self.scale, self.shift, self.fused_post = vae, scale, shift, fused_post
        self.dtype = vae.dtype

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        z = (latents / self.scale + self.shift).to(self.dtype)
        return to_uint8(self.vae.decode(z, return_dict=False)[0], fused=self.fused_post)


class EncodeModule(nn.Module):
    """Normalised pixels ``[B, 3, H, W]`` → scaled latent mean and std ``[B, 4, h, w]``.

    For a KL VAE the caller samples ``mean + std * eps`` with its per-frame noise; a tiny
    VAE (TAESD) is deterministic and returns a zero std.
    """

    def __init__(self, vae: Any, scale: float, shift: float, kl: bool) -> None:
        super().__init__()
        self.vae, self.scale, self.shift, self.kl = vae, scale, shift, kl

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kl:
            moments = self.vae.encoder(pixels)
            if getattr(self.vae, "quant_conv", None) is not None:
                moments = self.vae.quant_conv(moments)
            mean, logvar = moments.chunk(2, dim=1)
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            return (mean - self.shift) * self.scale, std * self.scale
        latents = self.vae.encode(pixels, return_dict=False)[0]
        return (latents - self.shift) * self.scale, torch.zeros_like(latents)


def _cond_args(cond: dict[str, torch.Tensor | None]) -> tuple[torch.Tensor | None, ...]:
    return (
        cond["emb"],
        cond["w"],
        cond["text_embeds"],
        cond["time_ids"],
        cond["g"],
        cond.get("neg_emb"),
        cond.get("neg_text_embeds"),
    )


class Backend:
    """Runs the three stages; ``static_shapes`` means batches must be padded to a bucket."""

    name = BackendName.EAGER
    static_shapes = False

    def __init__(self, runner: DiffusionRunner) -> None:
        self.step_module = StepModule(runner.unet, runner.dtype)
        self.decode_module = DecodeModule(runner.vae, runner.scale, runner.shift, runner.fused_post)
        self.encode_module = EncodeModule(runner.vae, runner.scale, runner.shift, runner.kl)
        self._step: Any = self.step_module
        self._decode: Any = self.decode_module
        self._encode: Any = self.encode_module

    def step(
        self, x: torch.Tensor, t: torch.Tensor, coefs: torch.Tensor, noise: torch.Tensor, cond: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        result: tuple[torch.Tensor, torch.Tensor] = self._step(x, t, coefs, noise, *_cond_args(cond))
        return result

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self._decode(latents)
        return result

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result: tuple[torch.Tensor, torch.Tensor] = self._encode(pixels)
        return result

    def close(self) -> None:
        return None


class CompileBackend(Backend):
    """Compiled stages: on CUDA ``torch.compile`` with a CUDA graph per (size, bucket) via
    reduce-overhead; on the CPU ahead-of-time compiled packages (:mod:`framewire.engine.aot`)."""

    name = BackendName.COMPILE
    static_shapes = True

    def __init__(self, runner: DiffusionRunner, config: DiffusionConfig) -> None:
        super().__init__(runner)
        if runner.device.type == "cpu" and not (shutil.which("cc") or shutil.which("gcc")):
            raise BackendUnavailable("--backend compile on the CPU needs a C compiler (cc or gcc) on PATH")
        # Inductor reads its cache folder from the environment when it first writes there.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(config.cache_dir / "inductor"))
        self.graphs = False
        if runner.device.type == "cpu":
            self._compile_ahead(runner, config)
            return
        # One graph per (image size, bucket, guidance on/off) per stage. Past dynamo's default
        # limit of 8 it would silently run eager (slower); raise it, and fail loudly if hit.
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
        dynamo_config.fail_on_recompile_limit_hit = True
        self.graphs = runner.device.type == "cuda"
        mode = "reduce-overhead" if self.graphs and config.compiler == "inductor" else None
        options: dict[str, Any] = {"mode": mode, "fullgraph": True, "dynamic": False, "backend": config.compiler}
        self._step = torch.compile(self.step_module, **options)
        self._decode = torch.compile(self.decode_module, **options)
        self._encode = torch.compile(self.encode_module, **options)
        log.info("compile backend: %s", "CUDA graphs per bucket (reduce-overhead)" if self.graphs else "torch.compile")

    def _compile_ahead(self, runner: DiffusionRunner, config: DiffusionConfig) -> None:
        from framewire.engine.aot import AotStage, prune_unused

        model = {
            "files": runner.weights_key,  # the UNet's and VAE's files, and fused LoRAs
            "vae": type(runner.vae).__name__,
            "dtype": str(runner.dtype),
            "vae_dtype": str(runner.vae_dtype),
            "fused_norms": runner.fused_norms,
        }
        root = Path(config.cache_dir) / "aot"
        prune_unused(root)
        codegen = config.compiler == "inductor"
        self._step = AotStage(self.step_module, "step", root=root, model=model, codegen=codegen)
        self._decode = AotStage(self.decode_module, "decode", root=root, model=model, codegen=codegen)
        self._encode = AotStage(self.encode_module, "encode", root=root, model=model, codegen=codegen)
        log.info(
            "compile backend: ahead-of-time compiled stages per image size and bucket (CPU)%s, cached in %s",
            "" if codegen else f" (compiler {config.compiler!r}: exported graphs run without code generation)",
            root,
        )

    def step(
        self, x: torch.Tensor, t: torch.Tensor, coefs: torch.Tensor, noise: torch.Tensor, cond: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs were consumed
        return super().step(x, t, coefs, noise, cond)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return super().decode(latents)

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return super().encode(pixels)


def build_backend(runner: DiffusionRunner, config: DiffusionConfig) -> Backend:
    if config.backend == BackendName.EAGER:
        return Backend(runner)
    if config.backend == BackendName.COMPILE:
        return CompileBackend(runner, config)
    if config.backend == BackendName.TENSORRT:
        from framewire.engine.tensorrt import TensorRTBackend

        return TensorRTBackend(runner, config)
    raise BackendUnavailable(f"unknown backend {config.backend!r}")
