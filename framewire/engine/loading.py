"""From an app's :class:`DiffusionConfig` to a diffusers pipeline with its weights in place.

The weights are resolved by :mod:`framewire.engine.weights`; then only the components the
app runs are loaded (a safety checker or feature extractor named in ``model_index.json`` is
never read), from the fp16 variant files when those are what the folder's plan chose.
LoRAs are fused into the weights on the device and unloaded again, so serving runs plain
modules (and the fused GroupNorm kernels and compiled graphs see ordinary weights). An
LCM-LoRA switches the app to the LCM scheduler, so an SD1.5 or SDXL base with an LCM-LoRA
samples as an LCM model. ``--tiny-vae`` swaps in TAESD/TAESDXL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from framewire.engine import weights as weights_mod
from framewire.engine.config import DiffusionConfig
from framewire.engine.hub import PIPELINE_COMPONENTS

log = logging.getLogger("framewire.engine")

LCM_SCHEDULER = "LCMScheduler"


@dataclass
class Loaded:
    """A loaded pipeline and what it was made from."""

    pipe: Any
    resolved: weights_mod.Resolved
    vae_folder: Path | None
    loras: list[tuple[str, float, Path]] = field(default_factory=list)  # (source, scale, file) fused
    skipped_loras: list[str] = field(default_factory=list)  # not fused (random weights)


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence loading chatter (progress bars, notes on unused components) for one load."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    verbosity = diffusers_logging.get_verbosity()
    bars = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(verbosity)
        if bars[0]:
            diffusers_logging.enable_progress_bar()
        if bars[1]:
            transformers_logging.enable_progress_bar()


def _model_index(folder: Path) -> dict[str, Any]:
    try:
        found = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _present(index: dict[str, Any]) -> set[str]:
    return {k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[:1] != [None]}


def unused_components(folder: Path, family: str) -> dict[str, None]:
    """``model_index.json`` components the app never runs (safety checker, feature extractor,
    image encoder): passed as None so that ``from_pretrained`` neither loads nor needs them."""
    return {name: None for name in _present(_model_index(folder)) - set(PIPELINE_COMPONENTS[family])}


def check_family(folder: Path, family: str, app: str) -> None:
    """Refuse, before loading, a pipeline of the other family (SDXL has a second text encoder)."""
    index = _model_index(folder)
    if not index:
        return
    sdxl = "text_encoder_2" in _present(index)
    if sdxl != (family == "sdxl"):
        kind = "an SDXL" if sdxl else "an SD1.5-class"
        raise ValueError(f"weights at {folder} are {kind} pipeline; {app} needs a {family} pipeline")


def scheduler_for(app_scheduler: str | None, config: DiffusionConfig) -> str | None:
    """The scheduler class the app samples with: an LCM-LoRA makes it LCM."""
    if any(lora.lcm for lora in config.loras):
        return LCM_SCHEDULER
    return app_scheduler


def load_pipeline(
    family: str, config: DiffusionConfig, *, app: str, scheduler: str | None, device: torch.device, dtype: torch.dtype
) -> Loaded:
    """Resolve, load and prepare ``app``'s pipeline; its UNet and text encoders end on ``device``."""
    from diffusers import AutoencoderTiny, DiffusionPipeline

    resolved = weights_mod.resolve(
        config.weights,
        family=family,
        cache_dir=Path(config.cache_dir),
        app=app,
        offline=config.offline,
        timeout_s=config.hub_timeout_s,
    )
    if resolved.random:
        log.warning(
            "%s runs on RANDOM weights, so its outputs are noise: %s. For real images: %s.",
            app,
            resolved.reason,
            resolved.fix,
        )
    check_family(resolved.folder, family, app)
    lora_files: list[tuple[str, float, Path]] = []
    skipped: list[str] = []
    for spec in config.loras:
        if resolved.random:
            skipped.append(spec.source)
            continue
        path = weights_mod.resolve_lora(spec, app=app, offline=config.offline, timeout_s=config.hub_timeout_s)
        lora_files.append((spec.source, spec.scale, path))
    if skipped:
        log.warning("%s: LoRAs %s are not fused: they fit the real weights, not random ones", app, ", ".join(skipped))

    kwargs: dict[str, Any] = {"dtype": dtype, **unused_components(resolved.folder, family)}
    if resolved.variant is not None:
        kwargs["variant"] = resolved.variant
    if "safety_checker" in kwargs:
        kwargs["requires_safety_checker"] = False
    with quiet_loading():
        pipe = DiffusionPipeline.from_pretrained(resolved.folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    wanted = scheduler_for(scheduler, config)
    if wanted is not None and type(pipe.scheduler).__name__ != wanted:
        import diffusers

        pipe.scheduler = getattr(diffusers, wanted).from_config(pipe.scheduler.config)
    for name in ("unet", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.to(device)
    if lora_files:
        fuse_loras(pipe, lora_files, app)
    vae_folder: Path | None = resolved.folder / "vae"
    if config.tiny_vae:
        vae_folder = weights_mod.resolve_tiny_vae(
            resolved.folder, family, app=app, offline=config.offline, timeout_s=config.hub_timeout_s
        )
        log.info("%s: tiny VAE from %s", app, vae_folder)
        pipe.vae = AutoencoderTiny.from_pretrained(vae_folder, dtype=dtype)
    return Loaded(pipe, resolved, vae_folder, lora_files, skipped)


def fuse_loras(pipe: Any, loras: list[tuple[str, float, Path]], app: str) -> None:
    """Fuse each LoRA into the pipeline's weights at its scale, then drop the adapters.

    LoRA deltas add, so one file given twice is fused once at the sum of its scales.
    """
    scales: dict[Path, float] = {}
    sources: dict[Path, str] = {}
    for source, scale, path in loras:
        key = path.resolve()
        scales[key] = scales.get(key, 0.0) + scale
        sources.setdefault(key, source)
    names = [f"lora{i}" for i in range(len(scales))]
    with quiet_loading(), warnings.catch_warnings():
        # peft warns when a second adapter joins a model: several LoRAs are the point here.
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
        for name, path in zip(names, scales, strict=True):
            try:
                pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
            except (ValueError, KeyError, RuntimeError) as exc:
                raise weights_mod.WeightsError(
                    f"--lora {sources[path]}: cannot apply it to {app}'s weights ({type(exc).__name__}: {exc})"
                ) from None
        pipe.set_adapters(names, adapter_weights=list(scales.values()))
        pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
        pipe.unload_lora_weights()
    log.info("%s: fused %s", app, ", ".join(f"{source} (scale {scale:g})" for source, scale, _ in loras))


def weights_key(loaded: Loaded | None, memory_key: str | None = None) -> list[Any]:
    """What identifies the weights a compiled artefact was built from (files, LoRAs, tiny VAE)."""
    from framewire.engine.aot import model_files

    if loaded is None:
        return [["memory", memory_key or ""]]
    folders = [loaded.resolved.folder / "unet"]
    if loaded.vae_folder is not None:
        folders.append(loaded.vae_folder)
    key: list[Any] = model_files(folders)
    for source, scale, path in loaded.loras:
        stat = path.stat()
        key.append(["lora", source, scale, str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    return key
