"""How a diffusion app runs: weights, device, backend, buffers. Torch-free, frozen.

Built once by the composition root from the server settings and handed to each app's
constructor; apps never read the environment themselves.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class Backend(enum.StrEnum):
    """How the UNet and VAE run."""

    EAGER = "eager"
    COMPILE = "compile"  # torch.compile; on CUDA each batch bucket replays a CUDA graph
    TENSORRT = "tensorrt"  # ONNX export + TensorRT engines, CUDA only


DTYPES = ("auto", "float32", "float16", "bfloat16")


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/framewire``, else ``~/.cache/framewire`` (outside any checkout)."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "framewire"


def parse_size(text: str) -> tuple[int, int]:
    """``"512x512"`` → ``(512, 512)`` (width, height); ValueError naming the text otherwise."""
    width, sep, height = text.lower().partition("x")
    try:
        if not sep:
            raise ValueError
        size = int(width), int(height)
    except ValueError:
        raise ValueError(f"expected a size WIDTHxHEIGHT such as 512x512, got {text!r}") from None
    if min(size) < 64 or max(size) > 2048:
        raise ValueError(f"size {text!r} is outside 64..2048 pixels per side")
    return size


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA fused into an app's weights at load: ``source`` is a local ``.safetensors`` file,
    a folder holding one, a Hub repo ``OWNER/NAME`` or ``OWNER/NAME/FILE.safetensors``."""

    source: str
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """``REPO_OR_PATH[:scale]``; ValueError naming the text when it does not parse."""
        source, sep, tail = text.rpartition(":")
        if not sep:
            source, tail = text, ""
        scale = 1.0
        if tail:
            try:
                scale = float(tail)
            except ValueError:
                raise ValueError(f"{text!r}: expected REPO_OR_PATH[:scale], the scale a number such as 0.8") from None
        if not source.strip():
            raise ValueError(f"{text!r}: expected REPO_OR_PATH[:scale]")
        if not -8.0 <= scale <= 8.0:
            raise ValueError(f"{text!r}: a LoRA scale must be within -8..8")
        return cls(source.strip(), scale)

    @property
    def lcm(self) -> bool:
        """An LCM-LoRA (named so, as latent-consistency/lcm-lora-*): the app then samples with LCM."""
        return "lcm" in self.source.lower()


@dataclass(frozen=True)
class DiffusionConfig:
    """Settings of one diffusion app instance.

    ``weights`` is a local diffusers folder or a Hub repo id; None means the app's real
    default weights (from the Hugging Face cache, else downloaded; tiny random weights
    stand in when neither works), ``"random"`` tiny random weights (outputs are noise).
    ``offline`` never touches the network; ``hub_timeout_s`` bounds the wait for the Hub's
    first answer. ``loras`` are fused into the weights at load. ``device`` and ``dtype`` may be
    ``"auto"`` (CUDA and float16 when a GPU is present, else CPU and float32).
    ``batch_buckets`` are the batch sizes the runner compiles and pads to; a larger batch
    is split. ``warmup_sizes`` (width, height) are run once per bucket before the app
    reports ready; None means the app's default size.
    """

    weights: str | None = None
    offline: bool = False
    hub_timeout_s: float = 10.0
    loras: tuple[LoraSpec, ...] = ()
    device: str = "auto"
    backend: Backend = Backend.EAGER
    dtype: str = "auto"
    tiny_vae: bool = False
    cache_dir: Path = field(default_factory=default_cache_dir)
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8)
    warmup_sizes: tuple[tuple[int, int], ...] | None = None
    prompt_cache_size: int = 256
    jpeg_quality: int = 90
    #: Compute budget of one input: output megapixels x denoising steps x images (x2 with guidance).
    max_megapixel_steps: float = 64.0
    #: Input images one batch decodes at once, in megapixels as decoded (JPEGs at reduced scale).
    max_decode_megapixels: float = 16.0
    image_workers: int = 4
    compiler: str = "inductor"  # torch.compile's backend; tests use "aot_eager" to trace without codegen

    def __post_init__(self) -> None:
        if not self.batch_buckets or any(b < 1 for b in self.batch_buckets):
            raise ValueError(f"batch buckets must be positive integers, got {self.batch_buckets}")
        if tuple(sorted(set(self.batch_buckets))) != self.batch_buckets:
            object.__setattr__(self, "batch_buckets", tuple(sorted(set(self.batch_buckets))))
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        object.__setattr__(self, "backend", Backend(self.backend))
        if self.prompt_cache_size < 1:
            raise ValueError("prompt_cache_size must be >= 1")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be in 1..100")
        if self.max_megapixel_steps <= 0 or self.max_decode_megapixels <= 0:
            raise ValueError("max_megapixel_steps and max_decode_megapixels must be > 0")
        if self.hub_timeout_s <= 0:
            raise ValueError("hub_timeout_s must be > 0")

    @property
    def max_batch(self) -> int:
        return self.batch_buckets[-1]
