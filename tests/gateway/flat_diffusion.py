"""The built-in diffusion apps with a runner that paints flat images at once.

Everything of the apps but the model runs: their input models and limits, batch keys,
input-image decoding, JPEG encoding, progress previews. A run at 2048x2048 on a CPU takes
milliseconds instead of minutes, so a test can send any input the apps' documents allow.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import numpy as np

from framewire.engine.apps.diffusion import DiffusionApp
from framewire.engine.apps.lcm import LcmApp
from framewire.engine.apps.sdxl_turbo import SdxlTurboApp
from framewire.engine.sampler import BatchKey


class FlatRunner:
    """What :class:`DiffusionApp` calls on its runner, answering grey images of the batch's size."""

    def __init__(self, lcm: bool) -> None:
        self.sampler = SimpleNamespace(lcm=lcm)

    def generate(
        self,
        key: BatchKey,
        samples: list[Any],
        on_step: Callable[[int, int, Any], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[np.ndarray]:
        if on_step is not None:
            latents = np.zeros((len(samples), 4, key.height // 8, key.width // 8), np.float32)
            for step in range(key.steps):
                on_step(step, 0, latents)
        return [np.full((key.height, key.width, 3), 128, np.uint8) for _ in samples]

    def preview(self, latents: np.ndarray) -> list[np.ndarray]:
        return [np.full((x.shape[1] * 8, x.shape[2] * 8, 3), 96, np.uint8) for x in latents]

    def close(self) -> None:
        pass


def _flat_setup(app: DiffusionApp) -> None:
    app._pool = ThreadPoolExecutor(2, thread_name_prefix=f"{app.app_name}-images")
    app.runner = FlatRunner(app.lcm_steps)  # type: ignore[assignment]
    app._lcm = app.lcm_steps


class FlatLcmApp(LcmApp):
    def setup(self) -> None:
        _flat_setup(self)


class FlatSdxlTurboApp(SdxlTurboApp):
    def setup(self) -> None:
        _flat_setup(self)
