"""Weights: random folders from config, resolution of --weights, pulling without network."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from engine import weights
from engine.config import Backend, DiffusionConfig
from tests.conftest import ROOT


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.safetensors"))
    }


def test_random_weights_are_deterministic_and_load_through_from_pretrained(tmp_path: Path) -> None:
    from diffusers import DiffusionPipeline, LatentConsistencyModelPipeline

    a = weights.init_weights("tiny", tmp_path / "a", seed=3)
    b = weights.init_weights("tiny", tmp_path / "b", seed=3)
    c = weights.init_weights("tiny", tmp_path / "c", seed=4)
    assert digest(a) == digest(b) != digest(c)
    assert weights.is_random(a) and (a / "tiny_vae" / "config.json").is_file()
    pipe = DiffusionPipeline.from_pretrained(a)
    assert isinstance(pipe, LatentConsistencyModelPipeline)
    assert pipe.unet.config.time_cond_proj_dim == 32


def test_the_sd15_and_sdxl_configs_have_the_real_models_shapes() -> None:
    sd15, sdxl = weights._arch_configs("sd15"), weights._arch_configs("sdxl")
    assert sd15["unet"]["block_out_channels"] == (320, 640, 1280, 1280) and sd15["unet"]["cross_attention_dim"] == 768
    assert sdxl["unet"]["transformer_layers_per_block"] == (1, 2, 10)
    # SDXL's added conditioning: 6 size ints x 256 + text_encoder_2's projection (1280).
    assert sdxl["unet"]["projection_class_embeddings_input_dim"] == 6 * 256 + sdxl["text2"]["proj"]
    assert sdxl["unet"]["cross_attention_dim"] == sdxl["text"]["hidden"] + sdxl["text2"]["hidden"]


def test_no_weights_means_tiny_random_weights_built_once_into_the_cache(tmp_path: Path) -> None:
    folder, random = weights.resolve(None, family="sdxl", cache_dir=tmp_path)
    again, _ = weights.resolve(None, family="sdxl", cache_dir=tmp_path)
    assert random and folder == again and folder.is_relative_to(tmp_path)
    assert (folder / "model_index.json").is_file() and (folder / "text_encoder_2").is_dir()


def test_bad_weights_specs_fail_with_a_message_naming_the_fix(tmp_path: Path) -> None:
    with pytest.raises(weights.WeightsError, match="does not exist"):
        weights.resolve("./no/such/folder", family="sd15", cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(weights.WeightsError, match=r"model_index\.json"):
        weights.resolve(str(tmp_path / "empty"), family="sd15", cache_dir=tmp_path)


def test_a_hub_id_offline_fails_with_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(weights.WeightsError) as info:
        weights.resolve("someone/not-downloaded", family="sd15", cache_dir=tmp_path, app="lcm")
    assert "--weights lcm=DIR" in str(info.value) and "framewire pull lcm" in str(info.value)


def test_framewire_pull_offline_exits_with_a_clear_message(tmp_path: Path) -> None:
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "pull", "lcm"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2
    assert "SimianLuo/LCM_Dreamshaper_v7" in done.stderr and "--weights lcm=DIR" in done.stderr


def test_framewire_init_weights_writes_a_loadable_folder(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "init-weights", "--arch", "tiny-sdxl", str(tmp_path / "w")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "--weights sdxl-turbo=" in done.stdout and (tmp_path / "w" / "unet" / "config.json").is_file()


def test_weights_of_the_wrong_family_are_refused(tmp_path: Path) -> None:
    from engine.runner import DiffusionRunner

    folder = weights.init_weights("tiny-sdxl", tmp_path / "xl")
    with pytest.raises(ValueError, match="SDXL pipeline; lcm needs a sd15 pipeline"):
        DiffusionRunner("sd15", DiffusionConfig(weights=str(folder), device="cpu", cache_dir=tmp_path), app="lcm")


def test_an_unavailable_backend_is_a_start_up_error_not_a_fallback(tmp_path: Path) -> None:
    from engine.backend import BackendUnavailable
    from engine.runner import DiffusionRunner

    folder = weights.init_weights("tiny", tmp_path / "t")
    config = DiffusionConfig(weights=str(folder), device="cpu", backend=Backend.TENSORRT, cache_dir=tmp_path)
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        DiffusionRunner("sd15", config, app="lcm")


def test_a_missing_gpu_is_a_start_up_error(tmp_path: Path) -> None:
    from engine.runner import resolve_device

    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda:1")
