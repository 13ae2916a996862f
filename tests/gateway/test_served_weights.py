"""`framewire serve` on the real repos' layouts (tiny weights): default weights from the
Hugging Face cache offline, a base with an LCM-LoRA fused, non-square frames, each equal to
the diffusers pipeline for the same seed."""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from framewire.engine.imaging import encode_jpeg
from tests.conftest import serve_process
from tests.engine import hub_layouts

WIDTH, HEIGHT = 96, 64


def post(port: int, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def models_of(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/models") as response:
        return {m["id"]: m for m in json.load(response)["models"]}


def image_of(output: dict[str, Any]) -> np.ndarray:
    image = output["images"][0]
    data = image["url"].split(",", 1)[1] if image.get("url") else image["content"]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")).astype(np.int32)


def as_served(pixels: np.ndarray) -> np.ndarray:
    """The reference's pixels through the server's own JPEG encoder and back."""
    jpeg = encode_jpeg(pixels.astype(np.uint8))
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(np.int32)


def run(pipe: Any, steps: int, guidance: float, seed: int) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        "a photo of a cat",
        num_inference_steps=steps,
        guidance_scale=guidance,
        width=WIDTH,
        height=HEIGHT,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    return (out.images[0] * 255).round()  # type: ignore[no-any-return]


def test_served_weights_and_a_fused_lcm_lora_equal_the_diffusers_pipelines(tmp_path: Path) -> None:
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler, StableDiffusionXLPipeline

    cache = tmp_path / "hub"
    folders = {}
    for repo in ("SimianLuo/LCM_Dreamshaper_v7", "madebyollin/taesd", "latent-consistency/lcm-lora-sdxl"):
        folders[repo] = hub_layouts.write_repo(repo, tmp_path / repo.replace("/", "--"))
        hub_layouts.install_in_cache(folders[repo], repo, cache)
    sdxl_base = hub_layouts.write_base("tiny-sdxl", tmp_path / "sdxl-base")
    env = {k: v for k, v in os.environ.items() if k != "FRAMEWIRE_WEIGHTS"}
    env["HF_HUB_CACHE"] = str(cache)
    args = [
        "--builtin-apps",
        "lcm,sdxl-turbo",
        "--offline",  # every file comes from the cache or a folder
        "--weights",
        f"sdxl-turbo={sdxl_base}",
        "--lora",
        "sdxl-turbo=latent-consistency/lcm-lora-sdxl:0.8",
        "--warmup-sizes",
        f"{WIDTH}x{HEIGHT}",
    ]
    request = {"prompt": "a photo of a cat", "image_size": {"width": WIDTH, "height": HEIGHT}, "sync_mode": True}
    with serve_process(*args, env=env) as port:
        models = models_of(port)
        lcm = post(port, "framewire/lcm", {**request, "seed": 5, "num_inference_steps": 4, "guidance_scale": 1.5})
        turbo = post(port, "framewire/sdxl-turbo", {**request, "seed": 7, "num_inference_steps": 2})
        other_seed = post(port, "framewire/sdxl-turbo", {**request, "seed": 8, "num_inference_steps": 2})

    assert models["framewire/lcm"]["weights"] == "real"
    assert models["framewire/lcm"]["weights_info"]["source"] == "SimianLuo/LCM_Dreamshaper_v7"
    assert models["framewire/sdxl-turbo"]["weights_info"]["loras"] == ["latent-consistency/lcm-lora-sdxl:0.8"]

    dreamshaper = folders["SimianLuo/LCM_Dreamshaper_v7"]
    pipe: Any = LatentConsistencyModelPipeline.from_pretrained(dreamshaper, safety_checker=None, feature_extractor=None)
    ref_lcm = as_served(run(pipe, 4, 1.5, 5))
    xl: Any = StableDiffusionXLPipeline.from_pretrained(sdxl_base)
    xl.scheduler = LCMScheduler.from_config(xl.scheduler.config)
    xl.load_lora_weights(str(folders["latent-consistency/lcm-lora-sdxl"]))
    xl.fuse_lora(lora_scale=0.8)
    ref_turbo = as_served(run(xl, 2, 0.0, 7))

    got_lcm, got_turbo = image_of(lcm), image_of(turbo)
    assert got_lcm.shape == (HEIGHT, WIDTH, 3) and got_turbo.shape == (HEIGHT, WIDTH, 3)
    for got, ref in ((got_lcm, ref_lcm), (got_turbo, ref_turbo)):
        diff = np.abs(got - ref)
        assert diff.mean() < 0.2 and diff.max() <= 8, (diff.mean(), diff.max())  # JPEG of pixels within 1/255
    assert np.abs(image_of(other_seed) - ref_turbo).mean() > 5  # the comparison can fail


def test_the_tiny_vae_is_taken_from_the_cached_taesd_repo(tmp_path: Path) -> None:
    """`--tiny-vae` with default weights offline: TAESD's root files from the cache, equal to diffusers."""
    from diffusers import AutoencoderTiny, LatentConsistencyModelPipeline

    cache = tmp_path / "hub"
    folders = {}
    for repo in ("SimianLuo/LCM_Dreamshaper_v7", "madebyollin/taesd"):
        folders[repo] = hub_layouts.write_repo(repo, tmp_path / repo.replace("/", "--"))
        hub_layouts.install_in_cache(folders[repo], repo, cache)
    env = {k: v for k, v in os.environ.items() if k != "FRAMEWIRE_WEIGHTS"}
    env["HF_HUB_CACHE"] = str(cache)
    body = {
        "prompt": "a photo of a cat",
        "image_size": {"width": WIDTH, "height": HEIGHT},
        "sync_mode": True,
        "seed": 3,
        "num_inference_steps": 2,
    }
    with serve_process(
        "--builtin-apps", "lcm", "--offline", "--tiny-vae", "--warmup-sizes", f"{WIDTH}x{HEIGHT}", env=env
    ) as port:
        got = image_of(post(port, "framewire/lcm", body))
    pipe: Any = LatentConsistencyModelPipeline.from_pretrained(
        folders["SimianLuo/LCM_Dreamshaper_v7"], safety_checker=None, feature_extractor=None
    )
    pipe.vae = AutoencoderTiny.from_pretrained(folders["madebyollin/taesd"])
    diff = np.abs(got - as_served(run(pipe, 2, 1.0, 3)))
    assert diff.mean() < 0.2 and diff.max() <= 8, (diff.mean(), diff.max())


def test_a_first_start_downloads_the_default_weights_fp16_only(tmp_path: Path) -> None:
    """No weights cached and the Hub reachable (a local stand-in): serve fetches the planned
    files into the cache before /ready, and a second start needs no Hub at all."""
    from tests.engine import fake_hub

    repo = "stabilityai/sdxl-turbo"
    folder = hub_layouts.write_repo(repo, tmp_path / "turbo")
    env = {k: v for k, v in os.environ.items() if k != "FRAMEWIRE_WEIGHTS"}
    env.update(HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="0")
    args = ("--builtin-apps", "sdxl-turbo", "--warmup-sizes", f"{WIDTH}x{HEIGHT}")
    commits = {repo: hub_layouts.LISTINGS[repo]["commit"]}
    with (
        fake_hub.serve({repo: folder}, commits) as (served, url),
        serve_process(*args, env={**env, "HF_ENDPOINT": url}) as port,
    ):
        model = models_of(port)["framewire/sdxl-turbo"]
    assert model["weights"] == "real" and model["weights_info"]["source"] == repo
    fetched = {d.removeprefix(repo + "/") for d in served.downloads}
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in fetched
    assert not any(f.endswith(("/model.safetensors", "/diffusion_pytorch_model.safetensors")) for f in fetched)
    assert not any(f.endswith((".onnx", ".png")) or f.startswith("sd_xl_turbo") for f in fetched)
    with serve_process(*args, "--offline", env=env) as port:  # the Hub is gone: the cache serves
        assert models_of(port)["framewire/sdxl-turbo"]["weights"] == "real"
