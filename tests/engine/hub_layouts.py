"""Tiny random stand-ins for the Hub repos the apps use, file for file.

:func:`write_repo` lays out a folder with every path of a repo's real listing
(``fixtures/hub_listings.json``): tiny random weights where the real repo has loadable
diffusers weights, and a few bytes of junk everywhere else (safety checker, ONNX exports,
single-file checkpoints, ``.bin`` files, images). A loader that reads any file it should
not read fails on the junk. Where a repo has an fp16 variant, the variant files hold the
weights and the float32 files are junk, so a load that ignores the variant fails too.

:func:`install_in_cache` puts such a folder into a Hugging Face cache as that repo's main
snapshot, the shape huggingface_hub itself writes, so the cache-first path is exercised.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from framewire.engine import weights

LISTINGS: dict[str, Any] = json.loads((Path(__file__).parent / "fixtures" / "hub_listings.json").read_text())["repos"]
JUNK = b"not a model file: a loader must not read this\n"


def listing(repo: str) -> dict[str, int | None]:
    return dict(LISTINGS[repo]["files"])


def _junk(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(JUNK)


def _save_tokenizer(folder: Path) -> None:
    """A CLIP tokenizer as the real repos ship it: vocab.json, merges.txt and two configs."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = weights.tokenizer_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps({**special, "pad_token": "<|endoftext|>"}))
    config = {**special, "pad_token": "<|endoftext|>", "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def _save_module(module: Any, folder: Path, *, fp16_variant: bool) -> None:
    """``save_pretrained`` into ``folder``; as the fp16 variant (the float32 files junk) if asked."""
    if not fp16_variant:
        module.save_pretrained(folder, safe_serialization=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        module.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        module.to(torch.float32)
        folder.mkdir(parents=True, exist_ok=True)
        for item in Path(tmp).iterdir():
            if item.name.endswith(".safetensors"):
                stem = item.name.removesuffix(".safetensors")
                shutil.copy(item, folder / f"{stem}.fp16.safetensors")
                _junk(folder / item.name)
            else:
                shutil.copy(item, folder / item.name)


def _pipeline_repo(pipe: Any, folder: Path, files: dict[str, int | None], *, fp16: bool, index: dict[str, Any]) -> None:
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is not None:
            _save_module(module, folder / name, fp16_variant=fp16)
    for name in ("tokenizer", "tokenizer_2"):
        if getattr(pipe, name, None) is not None:
            _save_tokenizer(folder / name)
    pipe.scheduler.save_pretrained(folder / "scheduler")
    model_index = {"_class_name": type(pipe).__name__, "_diffusers_version": "0.42.1"}
    for name in ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae"):
        module = getattr(pipe, name, None)
        if module is not None:
            library = "transformers" if name.startswith(("text_encoder", "tokenizer")) else "diffusers"
            model_index[name] = [library, "CLIPTokenizer" if name.startswith("tokenizer") else type(module).__name__]
    (folder / "model_index.json").write_text(json.dumps({**model_index, **index}, indent=2))
    written = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    for path in files:
        if path not in written:
            _junk(folder / path)


def _kohya_lora(unet: Any, seed: int, rank: int = 4) -> dict[str, torch.Tensor]:
    """A LoRA over the UNet's attention, feed-forward and resnet layers, in the kohya form the
    LCM-LoRA files use (``lora_unet_<module>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``)."""
    gen = torch.Generator().manual_seed(seed)
    found: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if not any(part in name for part in ("attentions", "resnets")):
            continue
        key = "lora_unet_" + name.replace(".", "_")
        if isinstance(module, torch.nn.Linear):
            down = torch.randn(rank, module.in_features, generator=gen)
            up = torch.randn(module.out_features, rank, generator=gen)
        elif isinstance(module, torch.nn.Conv2d) and name.endswith(("conv1", "conv2")):
            down = torch.randn(rank, module.in_channels, *module.kernel_size, generator=gen)
            up = torch.randn(module.out_channels, rank, 1, 1, generator=gen)
        else:
            continue
        found[f"{key}.lora_down.weight"] = down * 0.2
        found[f"{key}.lora_up.weight"] = up * 0.2
        found[f"{key}.alpha"] = torch.tensor(float(rank))
    return found


def tiny_base(arch: str, *, seed: int = 0) -> Any:
    """A tiny SD1.5 base (plain UNet, PNDM scheduler, as stable-diffusion-v1-5) or SDXL base
    (Euler scheduler, as stable-diffusion-xl-base-1.0): the bases an LCM-LoRA turns into LCMs."""
    from diffusers import (
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    pipe, _ = weights.build_pipeline(arch, seed=seed, tiny_vae=False)
    schedule = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}
    parts = dict(pipe.components)
    if arch == "tiny":
        unet_config = {k: v for k, v in weights._arch_configs(arch)["unet"].items() if k != "time_cond_proj_dim"}
        torch.manual_seed(seed)
        parts["unet"] = UNet2DConditionModel(**unet_config)
        parts["scheduler"] = PNDMScheduler(**schedule, skip_prk_steps=True)
        return StableDiffusionPipeline(**parts, requires_safety_checker=False)
    parts["scheduler"] = EulerDiscreteScheduler(**schedule, timestep_spacing="leading")
    return StableDiffusionXLPipeline(**parts)


def write_repo(repo: str, folder: Path, *, seed: int = 0) -> Path:
    """Lay out ``repo``'s real file listing in ``folder`` with tiny random weights; returns it."""
    from diffusers import AutoencoderTiny

    files = listing(repo)
    folder.mkdir(parents=True, exist_ok=True)
    if repo == "SimianLuo/LCM_Dreamshaper_v7":
        pipe, _ = weights.build_pipeline("tiny", seed=seed, tiny_vae=False)
        index = {
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "requires_safety_checker": True,
            "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        }
        _pipeline_repo(pipe, folder, files, fp16=False, index=index)
    elif repo == "stabilityai/sdxl-turbo":
        pipe, _ = weights.build_pipeline("tiny-sdxl", seed=seed, tiny_vae=False)
        index = {"feature_extractor": [None, None], "image_encoder": [None, None], "force_zeros_for_empty_prompt": True}
        _pipeline_repo(pipe, folder, files, fp16=True, index=index)
    elif repo in ("madebyollin/taesd", "madebyollin/taesdxl"):
        torch.manual_seed(seed)
        AutoencoderTiny(**weights._arch_configs("tiny")["taesd"]).save_pretrained(folder, safe_serialization=True)
        for path in files:
            if not (folder / path).exists():
                _junk(folder / path)
    elif repo in ("latent-consistency/lcm-lora-sdv1-5", "latent-consistency/lcm-lora-sdxl"):
        base = tiny_base("tiny" if repo.endswith("sdv1-5") else "tiny-sdxl")
        save_file(_kohya_lora(base.unet, seed), str(folder / "pytorch_lora_weights.safetensors"))
        for path in files:
            if not (folder / path).exists():
                _junk(folder / path)
    else:
        raise KeyError(f"no tiny layout for {repo}")
    return folder


def write_base(arch: str, folder: Path, *, seed: int = 0) -> Path:
    """A tiny base pipeline (:func:`tiny_base`) as a diffusers folder; SD1.5's with a junk safety checker."""
    pipe = tiny_base(arch, seed=seed)
    files: dict[str, int | None] = {}
    index: dict[str, Any] = {}
    if arch == "tiny":
        files = {"safety_checker/config.json": None, "safety_checker/model.safetensors": None}
        index = {
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "requires_safety_checker": True,
            "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        }
    _pipeline_repo(pipe, folder, files, fp16=False, index=index)
    return folder


def install_in_cache(folder: Path, repo: str, cache: Path, commit: str | None = None) -> Path:
    """Copy ``folder`` into the Hugging Face cache at ``cache`` as ``repo``'s main snapshot."""
    commit = commit or LISTINGS.get(repo, {}).get("commit") or "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    return snapshot
