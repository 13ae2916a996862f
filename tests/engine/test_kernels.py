"""The engine with the fused kernels on gives the images it gives with them off (tiny model, CPU).

The kernels run here in Triton's interpreter: ``tests/conftest.py`` sets ``TRITON_INTERPRET=1``
before the engine defines them, and each test lets interpreted kernels take CPU tensors.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

from framewire.engine.config import DiffusionConfig
from framewire.engine.runner import BatchKey, DiffusionRunner, Sample
from framewire.kernels import group_norm_silu as gns
from framewire.kernels import postprocess as post
from framewire.kernels import preprocess as pre
from framewire.kernels import runtime
from tests.engine.conftest import noise_image

pytest.importorskip("triton")


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Counts launches of each Triton path; restores the switch and the interpreter guard after."""
    calls: Counter[str] = Counter()

    def counted(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return fn(*args, **kwargs)

        return run

    monkeypatch.setattr(pre, "_preprocess_triton", counted("preprocess", pre._preprocess_triton))
    monkeypatch.setattr(post, "_postprocess_triton", counted("postprocess", post._postprocess_triton))
    monkeypatch.setattr(gns, "_group_norm_silu_triton", counted("group_norm_silu", gns._group_norm_silu_triton))
    before = runtime._enabled
    yield calls
    runtime._enabled = before
    runtime.allow_cpu_interpreter(False)
    runtime.forget_reports()


def make_images(config: DiffusionConfig) -> tuple[int, np.ndarray]:
    """How many norms the runner fused, and an image-to-image batch of two frames (own prompts,
    seeds and strengths): the path that runs all three kernels (preprocess, GroupNorm+SiLU in
    the VAE encoder, UNet and VAE decoder, postprocess)."""
    runner = DiffusionRunner("sd15", config, app="lcm", scheduler="LCMScheduler")
    try:
        samples = [
            Sample("a sketch", 21, 1, strength=0.5, image=noise_image(64, 64, 1)),
            Sample("a house", 22, 1, strength=0.7, guidance_scale=3.0, image=noise_image(64, 64, 2)),
        ]
        return runner.fused_norms, runner.generate(BatchKey("img2img", 64, 64, 1), samples)
    finally:
        runner.close()


def test_engine_output_with_kernels_on_equals_kernels_off(
    lcm_config: DiffusionConfig, kernel_calls: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Previews are not under test, and fitting their map decodes a batch of four: ~15 s interpreted.
    monkeypatch.setattr(DiffusionRunner, "_fit_preview", lambda self: torch.zeros((5, 3)))

    runtime.configure(enabled=False)
    fused_off, off = make_images(lcm_config)
    assert not kernel_calls and fused_off == 0

    runtime.configure(enabled=True)
    runtime.allow_cpu_interpreter(True)
    assert runtime.interpreted(pre._preprocess_kernel), "the kernels were defined before TRITON_INTERPRET=1 was set"
    fused_on, on = make_images(lcm_config)

    assert fused_on > 0  # the UNet's and the VAE's GroupNorm+SiLU pairs were swapped
    assert kernel_calls["preprocess"] == 1 and kernel_calls["postprocess"] == 1
    assert kernel_calls["group_norm_silu"] >= fused_on  # every fused norm ran at least once
    assert on.shape == (2, 64, 64, 3) and on.dtype == np.uint8
    diff = np.abs(on.astype(np.int32) - off)
    # float32 GroupNorm statistics summed in another order: at most a rounding flip of one level.
    assert int(diff.max()) <= 1
    assert float(diff.mean()) < 0.05
    assert on.std() > 10  # real images, not a constant that would agree trivially
