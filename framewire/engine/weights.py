"""Where a diffusion app's weights come from: a local folder, the hub, or random weights.

* ``--weights`` names a local diffusers folder or a hub repo id (``owner/name``).
* :func:`pull` downloads an app's default real weights with ``huggingface_hub``.
* :func:`init_weights` writes **random** weights built from a config (the real SD1.5 and
  SDXL configs for FLOP-faithful timing, tiny configs for tests) as a diffusers folder
  that loads through the same ``from_pretrained`` path as real weights. Outputs of random
  weights are noise.

A folder may hold a ``tiny_vae/`` subfolder (an ``AutoencoderTiny``); ``--tiny-vae`` uses
it before falling back to the family's hub repo. torch, diffusers and transformers are
imported inside the functions that need them.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("framewire.engine")

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

# Files of a diffusers folder worth downloading (no .bin/.ckpt duplicates, no samples).
_PULL_PATTERNS = ["model_index.json", "*/config.json", "*/*.safetensors", "*/*.json", "*/*.txt", "*.json"]


class WeightsError(ValueError):
    """Weights cannot be found or fetched; the message says what to do."""


def _offline_hint(repo: str, app: str | None) -> str:
    flag = f"--weights {app}=DIR" if app else "--weights DIR"
    return (
        f"download it where there is network (`huggingface-cli download {repo} --local-dir DIR` or "
        f"`framewire pull {app or '<app>'}`), copy DIR here, then start with {flag}"
    )


def _looks_like_repo_id(spec: str) -> bool:
    return not spec.startswith(("/", ".", "~")) and spec.count("/") == 1 and all(spec.split("/"))


def resolve(spec: str | None, *, family: str, cache_dir: Path, app: str | None = None) -> tuple[Path, bool]:
    """The local folder for ``spec``, and whether it holds random weights.

    ``None`` means tiny random weights, built once into ``cache_dir``. A path must exist.
    Anything else is a hub repo id, taken from the local hub cache or downloaded.
    """
    fam = FAMILIES[family]
    if spec is None:
        folder = cache_dir / "random" / f"{fam.tiny_arch}-v{TINY_VERSION}"
        if not (folder / "model_index.json").is_file():
            init_weights(fam.tiny_arch, folder, replace=False)  # another process may build it too
        return folder, True
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise WeightsError(f"weights folder {spec!r} has no model_index.json; give a diffusers pipeline folder")
        return path, is_random(path)
    if not _looks_like_repo_id(spec):
        raise WeightsError(f"weights folder {spec!r} does not exist (and it is not a hub repo id owner/name)")
    return download(spec, app=app), False


def is_random(folder: Path) -> bool:
    return (folder / "RANDOM_WEIGHTS").is_file()


def download(repo: str, *, app: str | None = None, local_dir: Path | None = None) -> Path:
    """Fetch a diffusers folder from the hub (or its local cache); clear errors offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        folder = snapshot_download(repo, allow_patterns=_PULL_PATTERNS, local_dir=local_dir)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise WeightsError(
            f"cannot fetch {repo!r}: no network or HF_HUB_OFFLINE=1 ({exc}); {_offline_hint(repo, app)}"
        ) from None
    except HfHubHTTPError as exc:
        raise WeightsError(f"cannot fetch {repo!r}: {exc}; {_offline_hint(repo, app)}") from None
    except OSError as exc:  # connection refused, DNS failure, disk full
        raise WeightsError(f"cannot fetch {repo!r} ({exc}); {_offline_hint(repo, app)}") from None
    return Path(folder)


def pull(app: str, *, local_dir: Path | None = None, tiny_vae: bool = True) -> list[Path]:
    """Download ``app``'s default real weights (and its tiny VAE); returns the folders."""
    if app not in APP_FAMILIES:
        raise WeightsError(f"no default weights for app {app!r}; choose from {', '.join(APP_FAMILIES)}")
    fam = FAMILIES[APP_FAMILIES[app]]
    folders = [download(fam.default_repo, app=app, local_dir=local_dir)]
    if tiny_vae:
        folders.append(
            download(fam.tiny_vae_repo, app=app, local_dir=None if local_dir is None else local_dir / "tiny_vae")
        )
    return folders


# -- random weights from config ------------------------------------------------------------


def _tokenizer(max_length: int = 77) -> Any:
    """A byte-level BPE CLIP tokenizer built in memory: every string encodes, no download."""
    from transformers import CLIPTokenizer

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
    """Write random weights for ``arch`` as a diffusers folder; returns the folder.

    Byte-identical for the same arguments on one machine. Built in a temporary folder
    beside ``folder`` and renamed into place, so a half-written folder is never loaded.
    With ``replace=False`` a folder that appeared meanwhile (another process) is kept.
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
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
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
        if cfg["sdxl"]:
            scheduler: Any = EulerAncestralDiscreteScheduler(
                **_SD_SCHEDULER, timestep_spacing="trailing", steps_offset=1
            )
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
            # Saved as an LCM pipeline, as the real LCM checkpoints are (AutoPipeline then picks LCM classes).
            pipe = LatentConsistencyModelPipeline(
                **components,
                scheduler=scheduler,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        pipe.save_pretrained(tmp, safe_serialization=True)
        if taesd is not None:
            (taesd if torch_dtype == torch.float32 else taesd.to(torch_dtype)).save_pretrained(
                tmp / "tiny_vae", safe_serialization=True
            )
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
