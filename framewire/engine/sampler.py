"""Diffusers schedulers flattened into per-frame linear step plans.

The supported samplers all update the latents linearly in the latents ``x``, the model
output ``e`` and fresh noise ``n``::

    model input  = cin * x
    denoised x0  = pa * x + pb * e
    next x       = a * x + b * e + c * n

so a batch whose frames sit at different timesteps (different strengths) or use
different seeds runs as one UNet call and one fused update, with the coefficients
gathered per frame as ``[B, 1, 1, 1]`` tensors. The plans are computed once per
(steps, strength) from the scheduler's own timestep and sigma tables, so spacing rules
stay the library's. The start is ``x = init_a * z + init_c * n`` (``z`` the encoded image,
zero for text-to-image).

Per frame, noise is drawn in the order the diffusers pipelines draw it from a
per-frame generator: the VAE posterior sample (KL VAEs, image-to-image), the initial
noise, then one draw per step that draws (``step_draws``). Equal seeds therefore give
the pipelines' results, and a frame's result never depends on its batch neighbours.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

SUPPORTED = ("LCMScheduler", "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler")


@dataclass(frozen=True)
class BatchKey:
    """What every frame of one batch shares. ``mode`` is txt2img, img2img or copy (strength 0);
    ``steps`` counts UNet calls; ``cfg`` means classifier-free guidance (a doubled UNet batch)."""

    mode: str
    width: int
    height: int
    steps: int
    cfg: bool = False


def _start_index(steps: int, strength: float) -> int:
    # As diffusers' img2img get_timesteps, but never zero steps for a strength above 0.
    init = min(int(steps * strength), steps)
    return min(max(steps - init, 0), steps - 1)


def unet_steps(lcm: bool, steps: int, strength: float, img2img: bool) -> int:
    """How many UNet calls a frame takes: LCM keeps ``steps`` (strength narrows the timestep
    range); the Euler samplers skip the first steps as diffusers' img2img pipelines do."""
    if not img2img or lcm:
        return steps
    return steps - _start_index(steps, strength)


@dataclass(frozen=True)
class Plan:
    """One frame's schedule: K steps of coefficients, plus how it starts."""

    timesteps: tuple[float, ...]
    coefs: tuple[tuple[float, float, float, float, float, float], ...]  # per step: cin, a, b, c, pa, pb
    init_a: float
    init_c: float
    step_draws: int

    @property
    def steps(self) -> int:
        return len(self.timesteps)


class UnsupportedScheduler(ValueError):
    pass


class Sampler:
    """Builds (and caches, boundedly) :class:`Plan` objects for one scheduler config."""

    def __init__(self, scheduler: Any, cache_size: int = 1024) -> None:
        kind = type(scheduler).__name__
        if kind not in SUPPORTED:
            raise UnsupportedScheduler(
                f"scheduler {kind} is not supported by the batched runner; use one of {', '.join(SUPPORTED)}"
            )
        config = scheduler.config
        if config.prediction_type not in ("epsilon", "v_prediction"):
            raise UnsupportedScheduler(f"prediction_type {config.prediction_type!r} is not supported")
        if getattr(config, "thresholding", False) or getattr(config, "clip_sample", False):
            raise UnsupportedScheduler("schedulers with thresholding or clip_sample are not supported (not linear)")
        self.kind = kind
        self.scheduler = scheduler
        self.v_prediction = config.prediction_type == "v_prediction"
        self._cache: OrderedDict[tuple[int, float, bool], Plan] = OrderedDict()
        self._cache_size = cache_size

    @property
    def lcm(self) -> bool:
        return self.kind == "LCMScheduler"

    def steps_for(self, steps: int, strength: float, img2img: bool) -> int:
        """How many UNet steps a frame takes (what batches must agree on)."""
        return unet_steps(self.lcm, steps, strength, img2img)

    def plan(self, steps: int, strength: float, img2img: bool) -> Plan:
        key = (steps, round(strength, 6) if img2img else 1.0, img2img)
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            return found
        made = self._lcm(*key) if self.kind == "LCMScheduler" else self._euler(*key)
        self._cache[key] = made
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return made

    def _lcm(self, steps: int, strength: float, img2img: bool) -> Plan:
        s = self.scheduler
        # LCM picks its steps among the first ``original_inference_steps * strength`` of its
        # distillation schedule; a strength too small for that many steps is raised to fit.
        strength = max(strength, (steps + 1e-6) / s.config.original_inference_steps)
        s.set_timesteps(steps, strength=min(strength, 1.0))
        timesteps = [int(t) for t in s.timesteps]
        alphas = s.alphas_cumprod.double()
        final = float(s.final_alpha_cumprod)
        coefs = []
        for i, t in enumerate(timesteps):
            alpha = float(alphas[t])
            c_skip, c_out = (float(v) for v in s.get_scalings_for_boundary_condition_discrete(t))
            if self.v_prediction:  # x0 = sqrt(a) x - sqrt(1-a) v
                pa, pb = c_out * math.sqrt(alpha) + c_skip, -c_out * math.sqrt(1 - alpha)
            else:  # x0 = (x - sqrt(1-a) e) / sqrt(a)
                pa, pb = c_out / math.sqrt(alpha) + c_skip, -c_out * math.sqrt(1 - alpha) / math.sqrt(alpha)
            if i == len(timesteps) - 1:
                coefs.append((1.0, pa, pb, 0.0, pa, pb))  # the last step returns the denoised sample
            else:
                prev = timesteps[i + 1]
                alpha_prev = float(alphas[prev]) if prev >= 0 else final
                root = math.sqrt(alpha_prev)
                coefs.append((1.0, root * pa, root * pb, math.sqrt(1 - alpha_prev), pa, pb))
        if img2img:
            alpha0 = float(alphas[timesteps[0]])
            init_a, init_c = math.sqrt(alpha0), math.sqrt(1 - alpha0)
        else:
            init_a, init_c = 0.0, float(s.init_noise_sigma)
        return Plan(tuple(float(t) for t in timesteps), tuple(coefs), init_a, init_c, len(timesteps) - 1)

    def _euler(self, steps: int, strength: float, img2img: bool) -> Plan:
        s = self.scheduler
        s.set_timesteps(steps)
        sigmas = [float(v) for v in s.sigmas.double()]
        timesteps = [float(t) for t in s.timesteps]
        start = _start_index(steps, strength) if img2img else 0
        ancestral = self.kind == "EulerAncestralDiscreteScheduler"
        coefs = []
        for i in range(start, len(timesteps)):
            sigma, sigma_to = sigmas[i], sigmas[i + 1]
            if ancestral:
                sigma_up = math.sqrt(sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2)
                sigma_down = math.sqrt(sigma_to**2 - sigma_up**2)
            else:
                sigma_up, sigma_down = 0.0, sigma_to
            dt = sigma_down - sigma
            if self.v_prediction:  # x0 = x / (s^2+1) - v s / sqrt(s^2+1); derivative = (x - x0) / s
                pa, pb = 1 / (sigma**2 + 1), -sigma / math.sqrt(sigma**2 + 1)
                a, b = 1 + (1 - pa) / sigma * dt, -pb / sigma * dt
            else:  # x0 = x - s e; derivative = e
                pa, pb = 1.0, -sigma
                a, b = 1.0, dt
            coefs.append((1 / math.sqrt(sigma**2 + 1), a, b, sigma_up, pa, pb))
        if img2img:
            init_a, init_c = 1.0, sigmas[start]
        else:
            init_a, init_c = 0.0, float(s.init_noise_sigma)
        return Plan(tuple(timesteps[start:]), tuple(coefs), init_a, init_c, len(coefs))
