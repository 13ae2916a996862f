"""Tiny random diffusion models for engine tests, built once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from framewire.engine.config import DiffusionConfig


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from framewire.engine.weights import init_weights

    root = tmp_path_factory.mktemp("weights")
    return {arch: init_weights(arch, root / arch) for arch in ("tiny", "tiny-sdxl")}


@pytest.fixture(scope="session")
def lcm_config(tiny_weights: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> DiffusionConfig:
    return DiffusionConfig(
        weights=str(tiny_weights["tiny"]),
        device="cpu",
        cache_dir=tmp_path_factory.mktemp("cache"),
        warmup_sizes=((64, 64),),
        image_workers=2,
    )


@pytest.fixture(scope="session")
def turbo_config(tiny_weights: dict[str, Path], lcm_config: DiffusionConfig) -> DiffusionConfig:
    return DiffusionConfig(
        weights=str(tiny_weights["tiny-sdxl"]),
        device="cpu",
        cache_dir=lcm_config.cache_dir,
        warmup_sizes=((64, 64),),
        image_workers=2,
    )


@pytest.fixture(scope="session")
def lcm_runner(lcm_config: DiffusionConfig) -> Iterator[object]:
    from framewire.engine.runner import DiffusionRunner

    runner = DiffusionRunner("sd15", lcm_config, app="lcm", scheduler="LCMScheduler")
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def turbo_runner(turbo_config: DiffusionConfig) -> Iterator[object]:
    from framewire.engine.runner import DiffusionRunner

    runner = DiffusionRunner("sdxl", turbo_config, app="sdxl-turbo")
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def lcm_app(lcm_config: DiffusionConfig) -> Iterator[object]:
    from framewire.engine.apps.lcm import LcmApp

    app = LcmApp(lcm_config)
    app.setup()
    yield app
    app.teardown()


@pytest.fixture(scope="session")
def turbo_app(turbo_config: DiffusionConfig) -> Iterator[object]:
    from framewire.engine.apps.sdxl_turbo import SdxlTurboApp

    app = SdxlTurboApp(turbo_config)
    app.setup()
    yield app
    app.teardown()


def noise_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def jpeg(width: int, height: int, seed: int = 0) -> bytes:
    from framewire.engine.imaging import encode_jpeg

    return encode_jpeg(noise_image(width, height, seed))
