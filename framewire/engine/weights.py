"""Where a diffusion app's weights come from: its real default weights, a folder, a Hub repo, or random.

* No ``--weights``: the app's default repo (:data:`FAMILIES`), from the local Hugging Face
  cache, else downloaded on first use (:func:`framewire.engine.hub.fetch`: fp16 variants
  where the repo has them, only the components the app loads). When the Hub cannot be
  reached (or ``--offline``) and the cache lacks them, tiny random weights stand in, and
  :class:`Resolved` says why and what fixes it, for the catalog and the demo page.
* ``--weights random``: tiny random weights, built once into the cache folder.
* ``--weights APP=FOLDER`` or ``APP=OWNER/REPO``: that folder, or that repo (cache, then Hub);
  failing to get a repo named on purpose is an error, never a silent fallback.
* :func:`pull` downloads an app's weights ahead of time (its tiny VAE and LoRAs too).
* :func:`init_weights` writes **random** weights built from a config (the real SD1.5 and
  SDXL configs for FLOP-faithful timing, tiny configs for tests) as a diffusers folder
  that loads through the same ``from_pretrained`` path as real weights; :func:`build_pipeline`
  builds the same models in memory. Outputs of random weights are noise.

A folder may hold a ``tiny_vae/`` subfolder (an ``AutoencoderTiny``); ``--tiny-vae`` uses
it before the family's TAESD repo. torch, diffusers and transformers are imported inside
the functions that need them.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framewire.engine.config import LoraSpec
from framewire.engine.hub import (
    PIPELINE_COMPONENTS,
    HubUnavailable,
    Layout,
    WeightsError,
    fetch,
    local_listing,
    plan_files,
)

log = logging.getLogger("framewire.engine")

__all__ = ["HubUnavailable", "Resolved", "WeightsError"]

#: ``--weights random``: tiny random weights (tests; a machine that must not download).
RANDOM = "random"
#: Random-weight architectures ``framewire init-weights --arch`` can build.
ARCHS = ("tiny", "tiny-sdxl", "sd15", "sdxl")
#: Bumped when a tiny config changes, so cached random folders are rebuilt.
TINY_VERSION = 1


@dataclass(frozen=True)
class Family:
    """What a model family needs: its default weights and tiny VAE, and its random archs."""

    name: str  # "sd15" or "sdxl"
    default_repo: str
    tiny_vae_repo: str
    tiny_arch: str


FAMILIES = {
    "sd15": Family("sd15", "SimianLuo/LCM_Dreamshaper_v7", "madebyollin/taesd", "tiny"),
    "sdxl": Family("sdxl", "stabilityai/sdxl-turbo", "madebyollin/taesdxl", "tiny-sdxl"),
}
#: Which family each built-in diffusion app serves.
APP_FAMILIES = {"lcm": "sd15", "sdxl-turbo": "sdxl"}


@dataclass(frozen=True)
class Resolved:
    """The folder an app loads, and for people: where it came from and, for random weights, why."""

    folder: Path
    random: bool
    source: str  # a Hub repo id, a folder, or "tiny random weights"
    variant: str | None = None  # "fp16" when the folder's fp16 variant files are the ones to load
    reason: str = ""  # why random weights stand in (empty for real weights)
    fix: str = ""  # what to do for real weights


def download_hint(repo: str, app: str | None) -> str:
    """How to get ``repo`` onto a machine that cannot reach the Hub itself."""
    flag = f"--weights {app}=DIR" if app else "--weights DIR"
    return (
        f"where the Hub can be reached, run `framewire pull {app or '<app>'}` (or `hf download {repo} --local-dir DIR`"
        f" and copy DIR here, then start with {flag})"
    )


def looks_like_repo_id(spec: str) -> bool:
    return not spec.startswith(("/", ".", "~")) and spec.count("/") == 1 and all(spec.split("/"))


def _random(family: str, cache_dir: Path) -> Path:
    fam = FAMILIES[family]
    folder = cache_dir / "random" / f"{fam.tiny_arch}-v{TINY_VERSION}"
    if not (folder / "model_index.json").is_file():
        init_weights(fam.tiny_arch, folder, replace=False)  # another process may build it too
    return folder


def local_variant(folder: Path, family: str) -> str | None:
    """``"fp16"`` when every weight component of ``folder`` has fp16 variant files, else None."""
    try:
        plan = plan_files(local_listing(folder), Layout.PIPELINE, components=PIPELINE_COMPONENTS[family])
    except WeightsError:  # e.g. .bin weights only: from_pretrained reads what is there
        return None
    return plan.variant


def resolve(
    spec: str | None,
    *,
    family: str,
    cache_dir: Path,
    app: str | None = None,
    offline: bool = False,
    timeout_s: float = 10.0,
) -> Resolved:
    """The folder for ``spec`` (see the module's docstring for the forms it takes).

    Raises :class:`WeightsError` (with what to do) for a bad folder or an explicitly named
    repo that cannot be had; the default repo falls back to random weights instead.
    """
    fam = FAMILIES[family]
    components = PIPELINE_COMPONENTS[family]
    if spec == RANDOM:
        return Resolved(
            _random(family, cache_dir),
            True,
            "tiny random weights",
            reason="random weights were asked for (--weights random)",
            fix=f"start without --weights random (or with --weights {app or '<app>'}=DIR) for real images",
        )
    if spec is None:
        try:
            folder, plan = fetch(
                fam.default_repo,
                Layout.PIPELINE,
                components=components,
                offline=offline,
                timeout_s=timeout_s,
                label=app or "",
            )
        except WeightsError as exc:
            log.warning("%s: no real weights (%s); tiny random weights stand in", app or family, exc)
            return Resolved(
                _random(family, cache_dir),
                True,
                "tiny random weights",
                reason=f"the default weights {fam.default_repo} could not be had: {exc}",
                fix=f"{download_hint(fam.default_repo, app)}, then restart",
            )
        return Resolved(folder, False, fam.default_repo, plan.variant)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise WeightsError(f"weights folder {spec!r} has no model_index.json; give a diffusers pipeline folder")
        random = is_random(path)
        return Resolved(
            path,
            random,
            "tiny random weights" if random else str(path),
            local_variant(path, family),
            reason=f"the folder {spec} holds random weights" if random else "",
            fix=f"give real weights with --weights {app or '<app>'}=DIR" if random else "",
        )
    if not looks_like_repo_id(spec):
        raise WeightsError(f"weights folder {spec!r} does not exist (and it is not a hub repo id owner/name)")
    try:
        folder, plan = fetch(
            spec, Layout.PIPELINE, components=components, offline=offline, timeout_s=timeout_s, label=app or ""
        )
    except HubUnavailable as exc:
        raise WeightsError(f"cannot fetch {spec!r}: {exc}; {download_hint(spec, app)}") from None
    return Resolved(folder, False, spec, plan.variant)


def is_random(folder: Path) -> bool:
    return (folder / "RANDOM_WEIGHTS").is_file()


def _lora_source(spec: LoraSpec) -> tuple[str, str | None]:
    """A LoRA spec's Hub repo and file within it (None: the repo's one LoRA file)."""
    parts = spec.source.split("/")
    if len(parts) > 2 and parts[-1].endswith(".safetensors"):
        return "/".join(parts[:2]), "/".join(parts[2:])
    return spec.source, None


def resolve_lora(
    spec: LoraSpec,
    *,
    app: str | None = None,
    offline: bool = False,
    timeout_s: float = 10.0,
    local_dir: Path | None = None,
) -> Path:
    """The ``.safetensors`` file of a LoRA: a local file, a folder holding one, or a Hub repo's."""
    path = Path(spec.source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        plan = plan_files(local_listing(path), Layout.LORA, repo=str(path))
        return path / plan.files[0]
    if spec.source.startswith(("/", ".", "~")):
        raise WeightsError(f"--lora {spec.source!r}: no such file or folder")
    repo, filename = _lora_source(spec)
    if not looks_like_repo_id(repo):
        raise WeightsError(f"--lora {spec.source!r}: not a file, a folder, or a Hub repo OWNER/NAME[/FILE.safetensors]")
    try:
        folder, plan = fetch(
            repo,
            Layout.LORA,
            filename=filename,
            offline=offline,
            timeout_s=timeout_s,
            local_dir=local_dir,
            label=app or "",
        )
    except HubUnavailable as exc:
        raise WeightsError(f"cannot fetch the LoRA {repo!r}: {exc}; {download_hint(repo, app)}") from None
    return folder / plan.files[0]


def resolve_tiny_vae(
    folder: Path, family: str, *, app: str | None = None, offline: bool = False, timeout_s: float = 10.0
) -> Path:
    """The folder of the tiny VAE: ``folder/tiny_vae`` if there, else the family's TAESD repo."""
    local = folder / "tiny_vae"
    if (local / "config.json").is_file():
        return local
    repo = FAMILIES[family].tiny_vae_repo
    try:
        found, _ = fetch(repo, Layout.MODEL, offline=offline, timeout_s=timeout_s, label=app or "")
    except HubUnavailable as exc:
        raise WeightsError(f"--tiny-vae: cannot fetch {repo!r}: {exc}; {download_hint(repo, app)}") from None
    return found


def pull(
    app: str,
    *,
    repo: str | None = None,
    local_dir: Path | None = None,
    tiny_vae: bool = True,
    loras: tuple[LoraSpec, ...] = (),
    timeout_s: float = 30.0,
) -> list[tuple[str, Path]]:
    """Download ``app``'s weights (``repo`` or the default), its tiny VAE and ``loras``.

    Returns (what, local path) pairs. Into the Hugging Face cache, or ``local_dir`` (the
    tiny VAE in ``tiny_vae/``, LoRAs in ``loras/NAME/``). What is already there is kept.
    """
    if app not in APP_FAMILIES:
        raise WeightsError(f"no default weights for app {app!r}; choose from {', '.join(APP_FAMILIES)}")
    family = APP_FAMILIES[app]
    fam = FAMILIES[family]
    base = repo or fam.default_repo
    if not looks_like_repo_id(base):
        raise WeightsError(f"--repo {base!r} is not a Hub repo id OWNER/NAME")

    def get(repo_id: str, layout: Layout, into: Path | None, **kw: Any) -> Path:
        try:
            folder, _ = fetch(repo_id, layout, local_dir=into, timeout_s=timeout_s, label=app, **kw)
        except HubUnavailable as exc:
            raise WeightsError(f"cannot fetch {repo_id!r}: {exc}; {download_hint(repo_id, app)}") from None
        return folder

    pulled = [(base, get(base, Layout.PIPELINE, local_dir, components=PIPELINE_COMPONENTS[family]))]
    if tiny_vae:
        into = None if local_dir is None else local_dir / "tiny_vae"
        pulled.append((fam.tiny_vae_repo, get(fam.tiny_vae_repo, Layout.MODEL, into)))
    for spec in loras:
        lora_repo, _ = _lora_source(spec)
        into = None if local_dir is None else local_dir / "loras" / lora_repo.replace("/", "--")
        pulled.append((spec.source, resolve_lora(spec, app=app, timeout_s=timeout_s, local_dir=into)))
    return pulled


# -- random weights from config ------------------------------------------------------------


def tokenizer_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary and merges of a small byte-level BPE in CLIP's form: every string encodes."""
    # The 256 printable stand-ins for bytes, as CLIP's byte-level BPE maps them.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    symbols = [chr(c) for c in codes]
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(s, len(vocab))
    merges = []
    for word in ("a", "photo", "of", "cat", "dog", "the", "sketch"):  # a few words, to exercise merges
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            if merged not in vocab:
                merges.append((pieces[0], pieces[1]))
                vocab[merged] = len(vocab)
            pieces = [merged, *pieces[2:]]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def _tokenizer(max_length: int = 77) -> Any:
    """A CLIP tokenizer over :func:`tokenizer_vocab`, built in memory (no download)."""
    from transformers import CLIPTokenizer

    vocab, merges = tokenizer_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)  # type: ignore[arg-type]  # pairs are accepted


def _text_config(tok: Any, *, hidden: int, inter: int, heads: int, layers: int, proj: int, act: str, vocab: int) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=max(vocab, len(tok)),
        hidden_size=hidden,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        max_position_embeddings=77,
        projection_dim=proj,
        hidden_act=act,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,  # the real eos id: a legacy 2 would change how CLIP pools
        pad_token_id=tok.pad_token_id,
    )


_SD_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
}


#: CLIP ViT-L/14's text tower: SD1.5's text encoder and SDXL's first.
CLIP_VIT_L = {"hidden": 768, "inter": 3072, "heads": 12, "layers": 12, "proj": 768, "act": "quick_gelu", "vocab": 49408}


def _arch_configs(arch: str) -> dict[str, Any]:
    """UNet, VAE, text and tiny-VAE configs per architecture (real ones follow SD1.5/SDXL)."""
    if arch in ("tiny", "tiny-sdxl"):
        sdxl = arch == "tiny-sdxl"
        unet: dict[str, Any] = {
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "sample_size": 64,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "attention_head_dim": 8,
            "norm_num_groups": 32,
            "cross_attention_dim": 64 if sdxl else 32,
        }
        if sdxl:
            unet.update(
                use_linear_projection=True,
                addition_embed_type="text_time",
                addition_time_embed_dim=8,
                transformer_layers_per_block=(1, 1),
                projection_class_embeddings_input_dim=6 * 8 + 32,
            )
        else:
            unet["time_cond_proj_dim"] = 32  # LCM-distilled: guidance enters as an embedding
        vae = {"block_out_channels": (8, 16, 32, 32), "layers_per_block": 1, "norm_num_groups": 8}
        text = {"hidden": 32, "inter": 37, "heads": 4, "layers": 2, "proj": 32, "act": "quick_gelu", "vocab": 0}
        text2 = dict(text)
        taesd = {
            "encoder_block_out_channels": (16,) * 4,
            "decoder_block_out_channels": (16,) * 4,
            "num_encoder_blocks": (1,) * 4,
            "num_decoder_blocks": (1,) * 4,
        }
    elif arch == "sd15":
        unet = {
            "block_out_channels": (320, 640, 1280, 1280),
            "layers_per_block": 2,
            "sample_size": 64,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
            "time_cond_proj_dim": 256,
        }
        vae = {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "norm_num_groups": 32}
        text = dict(CLIP_VIT_L)
        text2 = {}
        taesd = {}  # the default AutoencoderTiny config is the TAESD architecture
    elif arch == "sdxl":
        unet = {
            "block_out_channels": (320, 640, 1280),
            "layers_per_block": 2,
            "sample_size": 64,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            "attention_head_dim": (5, 10, 20),
            "transformer_layers_per_block": (1, 2, 10),
            "cross_attention_dim": 2048,
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816,
        }
        vae = {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "norm_num_groups": 32}
        text = dict(CLIP_VIT_L)
        text2 = {"hidden": 1280, "inter": 5120, "heads": 20, "layers": 32, "proj": 1280, "act": "gelu", "vocab": 49408}
        taesd = {}
    else:
        raise WeightsError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    sdxl = arch in ("tiny-sdxl", "sdxl")
    vae.update(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        scaling_factor=0.13025 if sdxl else 0.18215,
        force_upcast=False,  # random weights are fp16-safe enough; avoids a per-frame fp32 round trip
    )
    return {"unet": unet, "vae": vae, "text": text, "text2": text2 if sdxl else None, "taesd": taesd, "sdxl": sdxl}


def build_pipeline(
    arch: str, *, seed: int = 0, dtype: str = "float32", device: str = "cpu", tiny_vae: bool = True
) -> tuple[Any, Any]:
    """Random weights for ``arch`` built in memory: ``(pipeline, tiny VAE or None)``.

    The same seed gives the same weights on one machine. The pipeline is an LCM pipeline
    (SD1.5 archs) or an SDXL pipeline with an Euler ancestral scheduler (SDXL archs), as
    the real default checkpoints are.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        AutoencoderTiny,
        EulerAncestralDiscreteScheduler,
        LatentConsistencyModelPipeline,
        LCMScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cfg = _arch_configs(arch)
    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    with torch.device(device):  # real-size models initialise much faster on a GPU
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**cfg["unet"])
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**cfg["vae"])
        tok = _tokenizer()
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(_text_config(tok, **cfg["text"]))
        components: dict[str, Any] = {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tok}
        if cfg["sdxl"]:
            torch.manual_seed(seed + 3)
            components["text_encoder_2"] = CLIPTextModelWithProjection(_text_config(tok, **cfg["text2"]))
            components["tokenizer_2"] = _tokenizer()
        taesd = None
        if tiny_vae:
            torch.manual_seed(seed + 4)
            taesd = AutoencoderTiny(**cfg["taesd"])
    for name, module in components.items():
        if isinstance(module, torch.nn.Module) and torch_dtype != torch.float32:
            components[name] = module.to(torch_dtype)
    if taesd is not None and torch_dtype != torch.float32:
        taesd = taesd.to(torch_dtype)
    if cfg["sdxl"]:
        scheduler: Any = EulerAncestralDiscreteScheduler(**_SD_SCHEDULER, timestep_spacing="trailing", steps_offset=1)
        pipe: Any = StableDiffusionXLPipeline(
            **components, scheduler=scheduler, force_zeros_for_empty_prompt=True, add_watermarker=False
        )
    else:
        scheduler = LCMScheduler(
            **_SD_SCHEDULER,
            timestep_spacing="leading",
            steps_offset=1,
            original_inference_steps=50,
            clip_sample=False,
            set_alpha_to_one=True,
        )
        # An LCM pipeline, as the real LCM checkpoints are (AutoPipeline then picks LCM classes).
        pipe = LatentConsistencyModelPipeline(
            **components,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    return pipe, taesd


def init_weights(
    arch: str,
    folder: Path | str,
    *,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    tiny_vae: bool = True,
    replace: bool = True,
) -> Path:
    """Write random weights for ``arch`` (:func:`build_pipeline`) as a diffusers folder; returns it.

    Byte-identical for the same arguments on one machine. Built in a temporary folder
    beside ``folder`` and renamed into place, so a half-written folder is never loaded.
    With ``replace=False`` a folder that appeared meanwhile (another process) is kept.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        pipe, taesd = build_pipeline(arch, seed=seed, dtype=dtype, device=device, tiny_vae=tiny_vae)
        pipe.save_pretrained(tmp, safe_serialization=True)
        if taesd is not None:
            taesd.save_pretrained(tmp / "tiny_vae", safe_serialization=True)
        (tmp / "RANDOM_WEIGHTS").write_text(
            f"arch={arch} seed={seed} dtype={dtype}\nRandom weights built from config: outputs are noise.\n"
        )
        if folder.exists():
            if not replace:
                shutil.rmtree(tmp)
                return folder
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote random %s weights to %s", arch, folder)
    return folder
