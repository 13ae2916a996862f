"""Weights: random folders from config, resolution of --weights, pulling without network."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from framewire.engine import weights
from framewire.engine.config import Backend, DiffusionConfig
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


@pytest.mark.parametrize(
    ("arch", "unet_params", "text2_params"),
    [
        # The published sizes: SD1.5's UNet (859,520,964) plus LCM's guidance projection (256 x 320).
        ("sd15", 859_520_964 + 256 * 320, None),
        ("sdxl", 2_567_463_684, 694_659_840),
    ],
)
def test_the_sd15_and_sdxl_configs_build_the_real_models(arch: str, unet_params: int, text2_params: int | None) -> None:
    """Built on the meta device (no memory): the parameter counts are the real models', and a
    512 px latent runs through the UNet with the family's conditioning."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    cfg = weights._arch_configs(arch)
    tok = weights._tokenizer()
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg["unet"])
        assert count(unet) == unet_params
        assert count(AutoencoderKL(**cfg["vae"])) == 83_653_863
        assert count(CLIPTextModel(weights._text_config(tok, **cfg["text"]))) == 123_060_480
        extra: dict[str, object] = {"timestep_cond": torch.randn(2, 256)}
        if text2_params is not None:
            assert count(CLIPTextModelWithProjection(weights._text_config(tok, **cfg["text2"]))) == text2_params
            extra = {"added_cond_kwargs": {"text_embeds": torch.randn(2, 1280), "time_ids": torch.randn(2, 6)}}
        hidden = torch.randn(2, 77, cfg["unet"]["cross_attention_dim"])
        out = unet(torch.randn(2, 4, 64, 64), torch.randn(2), encoder_hidden_states=hidden, **extra).sample
    assert out.shape == (2, 4, 64, 64)


def test_random_weights_are_built_once_into_the_cache(tmp_path: Path) -> None:
    found = weights.resolve("random", family="sdxl", cache_dir=tmp_path, app="sdxl-turbo")
    again = weights.resolve("random", family="sdxl", cache_dir=tmp_path)
    assert found.random and found.folder == again.folder and found.folder.is_relative_to(tmp_path)
    assert (found.folder / "model_index.json").is_file() and (found.folder / "text_encoder_2").is_dir()
    assert "--weights random" in found.reason and "without --weights random" in found.fix


def test_default_weights_unreachable_fall_back_to_random_saying_why_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    found = weights.resolve(None, family="sd15", cache_dir=tmp_path, app="lcm")
    assert found.random and found.source == "tiny random weights"
    assert "SimianLuo/LCM_Dreamshaper_v7" in found.reason and "HF_HUB_OFFLINE=1" in found.reason
    assert "framewire pull lcm" in found.fix and "hf download SimianLuo/LCM_Dreamshaper_v7" in found.fix
    offline = weights.resolve(None, family="sd15", cache_dir=tmp_path, app="lcm", offline=True)
    assert offline.random and "--offline" in offline.reason


def test_default_weights_in_the_cache_are_real_and_need_no_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    from tests.engine import hub_layouts

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = "stabilityai/sdxl-turbo"
    snapshot = hub_layouts.install_in_cache(hub_layouts.write_repo(repo, tmp_path / "turbo"), repo, tmp_path / "hub")
    found = weights.resolve(None, family="sdxl", cache_dir=tmp_path, app="sdxl-turbo", offline=True)
    assert not found.random and found.folder == snapshot and found.source == repo and found.variant == "fp16"


def test_bad_weights_specs_fail_with_a_message_naming_the_fix(tmp_path: Path) -> None:
    with pytest.raises(weights.WeightsError, match="does not exist"):
        weights.resolve("./no/such/folder", family="sd15", cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(weights.WeightsError, match=r"model_index\.json"):
        weights.resolve(str(tmp_path / "empty"), family="sd15", cache_dir=tmp_path)


def test_a_named_hub_repo_offline_fails_with_what_to_do_never_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(weights.WeightsError) as info:
        weights.resolve("someone/not-downloaded", family="sd15", cache_dir=tmp_path, app="lcm")
    message = str(info.value)
    assert "--weights lcm=DIR" in message and "framewire pull lcm" in message
    assert "hf download someone/not-downloaded" in message and "huggingface-cli" not in message


def test_framewire_pull_offline_exits_with_a_clear_message(tmp_path: Path) -> None:
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "framewire.cli", "pull", "lcm"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2
    assert "SimianLuo/LCM_Dreamshaper_v7" in done.stderr and "--weights lcm=DIR" in done.stderr


def test_framewire_pull_fetches_weights_tiny_vae_and_loras_then_serves_from_the_cache(tmp_path: Path) -> None:
    """`framewire pull` against a local Hub: the plan's files, the size first, a progress bar,
    and the start command; a second pull with the Hub gone finds everything in the cache."""
    from tests.engine import fake_hub, hub_layouts

    repos = ("stabilityai/sdxl-turbo", "madebyollin/taesdxl", "latent-consistency/lcm-lora-sdxl")
    folders = {repo: hub_layouts.write_repo(repo, tmp_path / "src" / repo.replace("/", "--")) for repo in repos}
    commits = {repo: hub_layouts.LISTINGS[repo]["commit"] for repo in repos}
    cmd = [
        sys.executable,
        "-m",
        "framewire.cli",
        "pull",
        "sdxl-turbo",
        "--lora",
        "latent-consistency/lcm-lora-sdxl:0.9",
    ]
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    with fake_hub.serve(folders, commits) as (served, url):
        done = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, env={**env, "HF_ENDPOINT": url}, timeout=180
        )
    assert done.returncode == 0, done.stderr
    assert "downloading stabilityai/sdxl-turbo: 18 files" in done.stderr and "(fp16 variant)" in done.stderr
    assert "Fetching 18 files" in done.stderr  # huggingface_hub's progress bar
    assert {d.split("/", 2)[0] + "/" + d.split("/", 2)[1] for d in served.downloads} == set(repos)
    assert (
        "start with: framewire serve --tiny-vae --lora sdxl-turbo=latent-consistency/lcm-lora-sdxl:0.9" in done.stdout
    )
    again = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "1"}, timeout=180
    )
    assert again.returncode == 0, again.stderr
    assert "downloading" not in again.stderr


def test_framewire_init_weights_writes_a_loadable_folder(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "framewire.cli", "init-weights", "--arch", "tiny-sdxl", str(tmp_path / "w")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "--weights sdxl-turbo=" in done.stdout and (tmp_path / "w" / "unet" / "config.json").is_file()


def test_weights_of_the_wrong_family_are_refused(tmp_path: Path) -> None:
    from framewire.engine.runner import DiffusionRunner

    folder = weights.init_weights("tiny-sdxl", tmp_path / "xl")
    with pytest.raises(ValueError, match="SDXL pipeline; lcm needs a sd15 pipeline"):
        DiffusionRunner("sd15", DiffusionConfig(weights=str(folder), device="cpu", cache_dir=tmp_path), app="lcm")


def test_an_unavailable_backend_is_a_start_up_error_not_a_fallback(tmp_path: Path) -> None:
    from framewire.engine.backend import BackendUnavailable
    from framewire.engine.runner import DiffusionRunner

    folder = weights.init_weights("tiny", tmp_path / "t")
    config = DiffusionConfig(weights=str(folder), device="cpu", backend=Backend.TENSORRT, cache_dir=tmp_path)
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        DiffusionRunner("sd15", config, app="lcm")


def test_a_missing_gpu_is_a_start_up_error(tmp_path: Path) -> None:
    from framewire.engine.runner import resolve_device

    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda:1")
