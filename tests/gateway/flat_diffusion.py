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

from framewire.cli import BUILTIN_APPS, load_object
from framewire.engine.api import App
from framewire.engine.apps.diffusion import DiffusionApp
from framewire.engine.sampler import BatchKey


class FlatRunner:
    """What :class:`DiffusionApp` calls on its runner, answering grey images of the batch's size."""

    def __init__(self, lcm: bool) -> None:
        self.sampler = SimpleNamespace(lcm=lcm)
        self.loaded = None  # no weights: the catalog marks none

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


def flat(app_class: type[DiffusionApp]) -> type[DiffusionApp]:
    """``app_class`` with :class:`FlatRunner` in place of its model."""

    def setup(self: DiffusionApp) -> None:
        self._pool = ThreadPoolExecutor(2, thread_name_prefix=f"{self.app_name}-images")
        self.runner = FlatRunner(self.lcm_steps)  # type: ignore[assignment]
        self._lcm = self.lcm_steps

    return type(f"Flat{app_class.__name__}", (app_class,), {"setup": setup, "__module__": __name__})


def builtin_apps() -> list[App]:
    """Every built-in app of ``framewire serve``, the diffusion ones on :class:`FlatRunner`."""
    apps = []
    for spec in BUILTIN_APPS.values():
        app_class = load_object(spec)
        assert isinstance(app_class, type) and issubclass(app_class, App), spec
        apps.append(flat(app_class)() if issubclass(app_class, DiffusionApp) else app_class())
    return apps
