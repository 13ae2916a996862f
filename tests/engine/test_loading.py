"""Loading the real repos' layouts (tiny weights, real file names) and fusing LoRAs, against diffusers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from framewire.engine.config import DiffusionConfig, LoraSpec
from framewire.engine.runner import BatchKey, DiffusionRunner, Sample
from framewire.engine.weights import WeightsError
from tests.engine import hub_layouts

WIDTH, HEIGHT = 96, 64  # non-square: SDXL's time ids and every latent shape see width != height


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    found = {repo: hub_layouts.write_repo(repo, root / repo.replace("/", "--")) for repo in hub_layouts.LISTINGS}
    found["sd15-base"] = hub_layouts.write_base("tiny", root / "sd15-base")
    found["sdxl-base"] = hub_layouts.write_base("tiny-sdxl", root / "sdxl-base")
    return found


def runner(family: str, weights: Path, tmp_path: Path, **config: Any) -> DiffusionRunner:
    app, scheduler = ("lcm", "LCMScheduler") if family == "sd15" else ("sdxl-turbo", None)
    cfg = DiffusionConfig(weights=str(weights), device="cpu", cache_dir=tmp_path, offline=True, **config)
    return DiffusionRunner(family, cfg, app=app, scheduler=scheduler)


def reference(pipe: Any, prompt: str, seed: int, steps: int) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt,
        num_inference_steps=steps,
        guidance_scale=0.0,
        height=HEIGHT,
        width=WIDTH,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    return (out.images * 255).round().astype(np.int32)  # type: ignore[no-any-return]


def max_diff(ours: np.ndarray, ref: np.ndarray) -> int:
    return int(np.abs(ours.astype(np.int32) - ref).max())


def test_the_lcm_layout_loads_without_reading_its_safety_checker(layouts: dict[str, Path], tmp_path: Path) -> None:
    folder = layouts["SimianLuo/LCM_Dreamshaper_v7"]
    from diffusers import DiffusionPipeline

    with pytest.raises((OSError, ValueError)):  # the junk would break a load that reads it
        DiffusionPipeline.from_pretrained(folder)
    found = runner("sd15", folder, tmp_path)
    assert found.loaded is not None and found.loaded.resolved.variant is None
    assert found.pipe.safety_checker is None
    assert found.generate(BatchKey("txt2img", WIDTH, HEIGHT, 2), [Sample("a cat", 1, 2)]).shape == (1, HEIGHT, WIDTH, 3)


def test_the_sdxl_turbo_layout_loads_its_fp16_variant(layouts: dict[str, Path], tmp_path: Path) -> None:
    """The float32 files of this layout are junk: only a load of the fp16 variant works."""
    found = runner("sdxl", layouts["stabilityai/sdxl-turbo"], tmp_path)
    assert found.loaded is not None and found.loaded.resolved.variant == "fp16"
    assert found.unet.dtype == torch.float32  # fp16 files, computed in float32 on the CPU
    assert found.generate(BatchKey("txt2img", WIDTH, HEIGHT, 1), [Sample("a cat", 1, 1)]).shape == (1, HEIGHT, WIDTH, 3)


def test_the_tiny_vae_comes_from_the_root_files_of_its_repo(
    layouts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    hub_layouts.install_in_cache(layouts["madebyollin/taesdxl"], "madebyollin/taesdxl", tmp_path / "hub")
    found = runner("sdxl", layouts["stabilityai/sdxl-turbo"], tmp_path, tiny_vae=True)
    assert type(found.vae).__name__ == "AutoencoderTiny"
    assert found.loaded is not None and found.loaded.vae_folder is not None
    assert found.loaded.vae_folder.parent.parent.name == "models--madebyollin--taesdxl"


@pytest.mark.parametrize(
    ("family", "base", "lora"),
    [
        ("sd15", "sd15-base", "latent-consistency/lcm-lora-sdv1-5"),
        ("sdxl", "sdxl-base", "latent-consistency/lcm-lora-sdxl"),
    ],
)
def test_a_base_with_an_lcm_lora_runs_as_the_diffusers_lcm_recipe(
    layouts: dict[str, Path], tmp_path: Path, family: str, base: str, lora: str
) -> None:
    """Base + LCM-LoRA, fused at 0.8, LCM scheduler, non-square: the pipeline's pixels for equal seeds."""
    from diffusers import LCMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    lora_folder = layouts[lora]
    ours = runner(family, layouts[base], tmp_path, loras=(LoraSpec.parse(f"{lora_folder}:0.8"),))
    assert type(ours.pipe.scheduler).__name__ == "LCMScheduler"  # switched by the LCM-LoRA
    got = ours.generate(BatchKey("txt2img", WIDTH, HEIGHT, 4), [Sample("a photo of a cat", 5, 4, guidance_scale=1.0)])

    cls: Any = StableDiffusionPipeline if family == "sd15" else StableDiffusionXLPipeline
    extra = {"safety_checker": None, "feature_extractor": None} if family == "sd15" else {}
    pipe = cls.from_pretrained(layouts[base], **extra)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    plain = reference(pipe, "a photo of a cat", 5, 4)
    pipe.load_lora_weights(str(lora_folder), weight_name="pytorch_lora_weights.safetensors")
    pipe.fuse_lora(lora_scale=0.8)
    fused = reference(pipe, "a photo of a cat", 5, 4)

    assert max_diff(got, fused) <= 1
    assert max_diff(got, plain) > 8  # the LoRA changed the picture: it was fused, not ignored


def test_several_loras_fuse_as_their_deltas_add(layouts: dict[str, Path], tmp_path: Path) -> None:
    """Two LoRAs fused together at 0.5 and 0.7 equal the base with each fused in turn (diffusers)."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    first = layouts["latent-consistency/lcm-lora-sdv1-5"] / "pytorch_lora_weights.safetensors"
    second = tmp_path / "style.safetensors"
    save_file(hub_layouts._kohya_lora(hub_layouts.tiny_base("tiny").unet, seed=7), str(second))
    ours = runner("sd15", layouts["sd15-base"], tmp_path, loras=(LoraSpec(str(first), 0.5), LoraSpec(str(second), 0.7)))
    got = ours.generate(BatchKey("txt2img", WIDTH, HEIGHT, 2), [Sample("a cat", 3, 2)])

    pipe = StableDiffusionPipeline.from_pretrained(layouts["sd15-base"], safety_checker=None, feature_extractor=None)
    from diffusers import LCMScheduler

    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    for path, scale in ((first, 0.5), (second, 0.7)):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name)
        pipe.fuse_lora(lora_scale=scale)
        pipe.unload_lora_weights()
    assert max_diff(got, reference(pipe, "a cat", 3, 2)) <= 1

    twice = runner(
        "sd15", layouts["sd15-base"], tmp_path, loras=(LoraSpec(str(first), 0.25), LoraSpec(str(first), 0.25))
    )
    once = runner("sd15", layouts["sd15-base"], tmp_path, loras=(LoraSpec(str(first), 0.5),))
    key = BatchKey("txt2img", WIDTH, HEIGHT, 2)
    assert max_diff(twice.generate(key, [Sample("a cat", 3, 2)]), once.generate(key, [Sample("a cat", 3, 2)])) <= 1


def test_a_lora_that_does_not_fit_the_weights_is_a_clear_error(layouts: dict[str, Path], tmp_path: Path) -> None:
    lora = layouts["latent-consistency/lcm-lora-sdxl"]  # SDXL's layers, offered to an SD1.5 base
    with pytest.raises(WeightsError, match="--lora"):
        runner("sd15", layouts["sd15-base"], tmp_path, loras=(LoraSpec(str(lora)),))


def test_compiled_artefacts_are_keyed_by_the_fused_loras(layouts: dict[str, Path], tmp_path: Path) -> None:
    lora = layouts["latent-consistency/lcm-lora-sdv1-5"]
    plain = runner("sd15", layouts["sd15-base"], tmp_path)
    fused = runner("sd15", layouts["sd15-base"], tmp_path, loras=(LoraSpec(str(lora), 0.7),))
    assert plain.weights_key != fused.weights_key
    assert fused.weights_key[-1][:3] == ["lora", str(lora), 0.7]
