"""Which files of a Hugging Face Hub repo an app needs, and getting them: cache first, then the Hub.

A repo is read in one of three layouts (:class:`Layout`): a diffusers pipeline (a
``model_index.json`` and one folder per component), one diffusers model at the repo's root
(TAESD, TAESDXL), or a LoRA (a ``.safetensors`` file at the root). :func:`plan_files` turns a
repo's file listing into the files to fetch: only the components the app loads (never a
safety checker, ONNX exports, single-file checkpoints, ``.bin`` duplicates or images), and
of the weights only the fp16 variant when every weight component has one. It is pure: the
same plan reads the Hub's listing before a download and a local folder's before a load.

:func:`fetch` returns a local folder holding a plan's files. A complete copy in the local
Hugging Face cache (or in ``local_dir``) is used without any network access. Otherwise the
Hub is asked for the repo's listing within ``timeout_s`` (a thread that does not answer in
time is left behind, so an unreachable network never holds a start for longer), the size is
logged, and the files are downloaded with huggingface_hub's progress bars.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

log = logging.getLogger("framewire.engine")

T = TypeVar("T")

#: What each diffusion family loads from a pipeline repo; the rest of the repo is never fetched.
PIPELINE_COMPONENTS = {
    "sd15": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
}
#: Components that hold weights (the others are configuration and vocabulary only).
WEIGHT_COMPONENTS = frozenset({"unet", "vae", "text_encoder", "text_encoder_2"})
#: The file a LoRA repo's weights are in when it has several ``.safetensors`` files.
LORA_FILE = "pytorch_lora_weights.safetensors"

_STEMS = r"(?:diffusion_pytorch_model|model)"
_SHARD = r"(?:-\d{5}-of-\d{5})?"
_PLAIN = re.compile(rf"^{_STEMS}{_SHARD}\.safetensors$|^{_STEMS}\.safetensors\.index\.json$")
_FP16 = re.compile(rf"^{_STEMS}\.fp16{_SHARD}\.safetensors$|^{_STEMS}\.safetensors\.index\.fp16\.json$")
_CONFIG = re.compile(r"^[^/]+\.(?:json|txt)$")


class WeightsError(ValueError):
    """Weights cannot be found, fetched or used; the message says what to do."""


class HubUnavailable(WeightsError):
    """The Hub cannot be reached (no network, offline mode, no answer in time)."""


class Layout(enum.StrEnum):
    PIPELINE = "pipeline"  # model_index.json + one folder per component
    MODEL = "model"  # one diffusers model at the root: config.json + weights (TAESD)
    LORA = "lora"  # a .safetensors file at the root


@dataclass(frozen=True)
class FilePlan:
    """The files to fetch or load, and whether they are the fp16 variant (``variant="fp16"``)."""

    files: tuple[str, ...]
    variant: str | None
    total_bytes: int  # of the files whose size is known
    unknown_sizes: int = 0

    @property
    def size_text(self) -> str:
        text = format_bytes(self.total_bytes)
        return f"{text} + {self.unknown_sizes} file(s) of unknown size" if self.unknown_sizes else text


def format_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _children(listing: Collection[str], folder: str) -> list[str]:
    prefix = f"{folder}/" if folder else ""
    return sorted(p[len(prefix) :] for p in listing if p.startswith(prefix) and "/" not in p[len(prefix) :])


def plan_files(
    listing: Mapping[str, int | None],
    layout: Layout,
    *,
    components: Collection[str] = (),
    filename: str | None = None,
    repo: str = "",
) -> FilePlan:
    """The files of ``listing`` (path → size in bytes, None if unknown) that ``layout`` needs.

    Raises :class:`WeightsError` naming ``repo`` and the missing piece when the listing
    cannot serve: no ``model_index.json``, a component folder missing or without weights,
    no LoRA file (or several, none named ``pytorch_lora_weights.safetensors``).
    """
    name = repo or "the folder"
    chosen: list[str]
    variant: str | None = None
    if layout == Layout.LORA:
        if filename is not None:
            if filename not in listing:
                raise WeightsError(f"{name} has no file {filename!r}")
            chosen = [filename]
        else:
            candidates = [p for p in _children(listing, "") if p.endswith(".safetensors")]
            if LORA_FILE in candidates:
                chosen = [LORA_FILE]
            elif len(candidates) == 1:
                chosen = candidates
            else:
                found = ", ".join(candidates) or "none"
                raise WeightsError(
                    f"{name} has no single LoRA .safetensors file at its root (found: {found}); "
                    "name the file: --lora APP=OWNER/REPO/FILE.safetensors"
                )
    else:
        folders = [""] if layout == Layout.MODEL else list(components)
        weighted = [""] if layout == Layout.MODEL else [c for c in components if c in WEIGHT_COMPONENTS]
        if layout == Layout.PIPELINE and "model_index.json" not in listing:
            raise WeightsError(f"{name} is not a diffusers pipeline: it has no model_index.json")
        files = {folder: _children(listing, folder) for folder in folders}
        for folder in folders:
            if layout == Layout.PIPELINE and not files[folder]:
                raise WeightsError(f"{name} has no {folder}/ folder, which this app needs")
        plain = {f: [n for n in files[f] if _PLAIN.match(n)] for f in weighted}
        fp16 = {f: [n for n in files[f] if _FP16.match(n)] for f in weighted}
        if all(fp16[f] for f in weighted):
            variant, weights = "fp16", fp16
        else:
            weights = plain
        for f in weighted:
            if not weights[f]:
                where = f"{f}/" if f else "its root"
                raise WeightsError(f"{name} has no .safetensors weights in {where}")
        chosen = ["model_index.json"] if layout == Layout.PIPELINE else []
        for folder in folders:
            configs = [n for n in files[folder] if _CONFIG.match(n) and not _PLAIN.match(n) and not _FP16.match(n)]
            if layout == Layout.MODEL:
                configs = [n for n in configs if n == "config.json"]
                if not configs:
                    raise WeightsError(f"{name} has no config.json at its root")
            picked = configs + weights.get(folder, [])
            chosen += [f"{folder}/{n}" if folder else n for n in picked]
    sizes = [listing[p] for p in chosen]
    return FilePlan(
        tuple(chosen),
        variant,
        sum(s for s in sizes if s is not None),
        sum(1 for s in sizes if s is None),
    )


def local_listing(folder: Path) -> dict[str, int | None]:
    """Every file under ``folder`` (links followed) by relative path, with its size."""
    found: dict[str, int | None] = {}
    for root, _, names in os.walk(folder, followlinks=True):
        for n in names:
            path = Path(root, n)
            try:
                size: int | None = path.stat().st_size
            except OSError:  # a dangling link in the cache: not a usable file
                continue
            found[path.relative_to(folder).as_posix()] = size
    return found


def hub_offline() -> bool:
    """Whether huggingface_hub is in offline mode (``HF_HUB_OFFLINE=1``)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def cache_location() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _within(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """``fn()`` on a daemon thread, waited for at most ``timeout_s`` (name resolution and
    connecting can block past any socket timeout; a thread still stuck is left behind)."""
    box: dict[str, object] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="framewire-hub", daemon=True).start()
    if not done.wait(timeout_s):
        raise HubUnavailable(f"{what}: no answer from {endpoint()} within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def _hub_error(repo: str, exc: Exception) -> WeightsError:
    """A huggingface_hub error as ours: the Hub said no (WeightsError), or it was not reached."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, GatedRepoError):
        return WeightsError(f"{repo} is gated: accept its terms on the Hub and log in (`hf auth login`)")
    if isinstance(exc, RepositoryNotFoundError):
        return WeightsError(f"{repo} does not exist on the Hub (or is private): {first_line}")
    if isinstance(exc, HfHubHTTPError) and exc.response is not None and exc.response.status_code < 500:
        return WeightsError(f"the Hub refused {repo}: {first_line}")
    return HubUnavailable(f"cannot reach {endpoint()} ({first_line})")


def hub_listing(repo: str, timeout_s: float) -> dict[str, int | None]:
    """The files of ``repo``'s main revision with their sizes, asked within ``timeout_s``."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HTTPError

    try:
        info = _within(
            lambda: HfApi().model_info(repo, files_metadata=True, timeout=timeout_s),
            timeout_s,
            f"listing {repo}",
        )
    except (HTTPError, OSError) as exc:
        raise _hub_error(repo, exc) from None
    return {s.rfilename: s.size for s in info.siblings or ()}


def cached_snapshot(repo: str) -> Path | None:
    """The Hugging Face cache's snapshot folder of ``repo``'s main revision, if one is recorded.

    Read from the cache's documented layout (``models--OWNER--NAME/refs/main`` names the
    commit, ``snapshots/COMMIT/`` holds the files), so that a snapshot holding only the
    files a plan needs counts as complete: huggingface_hub's own offline lookup wants all.
    """
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    root = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")
    try:
        commit = (root / "refs" / "main").read_text().strip()
    except OSError:
        return None
    return root / "snapshots" / commit if commit else None


def _local_plan(
    repo: str, layout: Layout, components: Collection[str], filename: str | None, local_dir: Path | None
) -> tuple[Path, FilePlan] | None:
    """A complete local copy of the plan's files (the cache's snapshot, or ``local_dir``), if any."""
    folder = local_dir if local_dir is not None else cached_snapshot(repo)
    if folder is None or not folder.is_dir():
        return None
    try:
        return folder, plan_files(local_listing(folder), layout, components=components, filename=filename, repo=repo)
    except WeightsError:  # an incomplete copy: fetch what is missing
        return None


def fetch(
    repo: str,
    layout: Layout,
    *,
    components: Collection[str] = (),
    filename: str | None = None,
    offline: bool = False,
    timeout_s: float = 10.0,
    local_dir: Path | None = None,
    label: str = "",
) -> tuple[Path, FilePlan]:
    """A local folder holding the files ``layout`` needs from ``repo``, and the plan they follow.

    Cache (or ``local_dir``) first, without network; then, unless ``offline`` or
    ``HF_HUB_OFFLINE=1``, the Hub: the listing (within ``timeout_s``), the size logged, the
    download. Raises :class:`HubUnavailable` when the Hub is needed but cannot be reached,
    :class:`WeightsError` when it answers that the repo cannot serve.
    """
    found = _local_plan(repo, layout, components, filename, local_dir)
    if found is not None:
        return found
    where = f"in {local_dir}" if local_dir is not None else f"in the Hugging Face cache ({cache_location()})"
    if offline:
        raise HubUnavailable(f"{repo} is not {where}, and --offline keeps the Hub out of reach")
    if hub_offline():
        raise HubUnavailable(f"{repo} is not {where}, and HF_HUB_OFFLINE=1 keeps the Hub out of reach")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HTTPError

    listing = hub_listing(repo, timeout_s)
    plan = plan_files(listing, layout, components=components, filename=filename, repo=repo)
    precision = "fp16 variant" if plan.variant else "no fp16 variant in the repo: float32 files"
    log.info(
        "%sdownloading %s: %d files, %s (%s) into %s",
        f"{label}: " if label else "",
        repo,
        len(plan.files),
        plan.size_text,
        precision,
        local_dir or cache_location(),
    )
    try:
        # main (not the listed commit): then the cache records main, and later starts find it offline.
        folder = snapshot_download(repo, allow_patterns=list(plan.files), local_dir=local_dir)
    except (HTTPError, OSError) as exc:
        raise _hub_error(repo, exc) from None
    # What is on disk now, checked as a later start will check it (a partial download fails here).
    got = Path(folder)
    return got, plan_files(local_listing(got), layout, components=components, filename=filename, repo=repo)
