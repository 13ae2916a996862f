"""The torch.compile backend. Inductor's code generation takes minutes on a small CPU, so the
default test traces with ``aot_eager`` (same capture: one full graph per stage, no graph
breaks) and the inductor run is opt-in: FRAMEWIRE_SLOW_TESTS=1."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

from framewire.engine.config import Backend, DiffusionConfig
from framewire.engine.runner import BatchKey, DiffusionRunner, Sample


@pytest.mark.parametrize(
    "compiler",
    [
        "aot_eager",
        pytest.param(
            "inductor",
            marks=[
                pytest.mark.slow,
                pytest.mark.skipif(os.environ.get("FRAMEWIRE_SLOW_TESTS") != "1", reason="set FRAMEWIRE_SLOW_TESTS=1"),
            ],
        ),
    ],
)
def test_the_compiled_backend_matches_eager_with_padded_buckets(
    lcm_config: DiffusionConfig, lcm_runner: DiffusionRunner, compiler: str
) -> None:
    config = replace(lcm_config, backend=Backend.COMPILE, batch_buckets=(2,), compiler=compiler)
    runner = DiffusionRunner("sd15", config, app="lcm", scheduler="LCMScheduler")
    try:
        assert runner.backend.static_shapes
        runner.warmup([(64, 64)], img2img=False)
        samples = [Sample("a cat", 1, 2, guidance_scale=3.0)]  # padded to the bucket of 2
        key = BatchKey("txt2img", 64, 64, 2)
        got, expected = runner.generate(key, samples), lcm_runner.generate(key, samples)
        assert got.shape == (1, 64, 64, 3)
        assert int(np.abs(got.astype(np.int32) - expected).max()) <= 2
    finally:
        runner.close()
