"""What is fetched from the Hub: the file plans against the real repos' listings, cache first, bounded waits."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from framewire.engine import hub
from framewire.engine.hub import PIPELINE_COMPONENTS, Layout, WeightsError, plan_files
from tests.engine import fake_hub, hub_layouts

GB = 1e9


def test_lcm_dreamshaper_plan_takes_the_five_components_and_no_safety_checker() -> None:
    plan = plan_files(
        hub_layouts.listing("SimianLuo/LCM_Dreamshaper_v7"), Layout.PIPELINE, components=PIPELINE_COMPONENTS["sd15"]
    )
    assert set(plan.files) == {
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    }
    # The repo has no fp16 variant: its float32 files, 4.27 GB, not the 1.2 GB safety checker,
    # the 3.4 GB single-file checkpoint or the ONNX exports.
    assert plan.variant is None and 4.2 * GB < plan.total_bytes < 4.3 * GB and plan.unknown_sizes == 0


def test_sdxl_turbo_plan_takes_only_the_fp16_variant() -> None:
    listing = hub_layouts.listing("stabilityai/sdxl-turbo")
    plan = plan_files(listing, Layout.PIPELINE, components=PIPELINE_COMPONENTS["sdxl"])
    weights = sorted(p for p in plan.files if p.endswith(".safetensors"))
    assert weights == [
        "text_encoder/model.fp16.safetensors",
        "text_encoder_2/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ]
    assert plan.variant == "fp16" and 6.9 * GB < plan.total_bytes < 7.0 * GB
    assert not any(p.endswith((".onnx", ".onnx_data", ".png")) or p.startswith("sd_xl_turbo") for p in plan.files)
    # What the old patterns (every */*.safetensors) took: both precisions, about 21 GB.
    both = sum(size or 0 for path, size in listing.items() if path.count("/") == 1 and path.endswith(".safetensors"))
    assert both > 20 * GB


def test_plans_pass_through_huggingface_hubs_own_pattern_filter_unchanged() -> None:
    """The plan goes to snapshot_download as allow_patterns: they must select exactly the plan."""
    from huggingface_hub.utils import filter_repo_objects

    for repo, layout, components in [
        ("SimianLuo/LCM_Dreamshaper_v7", Layout.PIPELINE, PIPELINE_COMPONENTS["sd15"]),
        ("stabilityai/sdxl-turbo", Layout.PIPELINE, PIPELINE_COMPONENTS["sdxl"]),
        ("madebyollin/taesd", Layout.MODEL, ()),
        ("madebyollin/taesdxl", Layout.MODEL, ()),
        ("latent-consistency/lcm-lora-sdxl", Layout.LORA, ()),
    ]:
        listing = hub_layouts.listing(repo)
        plan = plan_files(listing, layout, components=components, repo=repo)
        assert sorted(filter_repo_objects(list(listing), allow_patterns=list(plan.files))) == sorted(plan.files)


@pytest.mark.parametrize("repo", ["madebyollin/taesd", "madebyollin/taesdxl"])
def test_tiny_vae_plan_takes_the_root_diffusers_files(repo: str) -> None:
    plan = plan_files(hub_layouts.listing(repo), Layout.MODEL, repo=repo)
    assert plan.files == ("config.json", "diffusion_pytorch_model.safetensors")


@pytest.mark.parametrize("repo", ["latent-consistency/lcm-lora-sdv1-5", "latent-consistency/lcm-lora-sdxl"])
def test_lora_plan_takes_the_lora_file(repo: str) -> None:
    plan = plan_files(hub_layouts.listing(repo), Layout.LORA, repo=repo)
    assert plan.files == ("pytorch_lora_weights.safetensors",)


def test_plans_name_what_a_listing_lacks() -> None:
    sd15 = PIPELINE_COMPONENTS["sd15"]
    listing = hub_layouts.listing("SimianLuo/LCM_Dreamshaper_v7")
    with pytest.raises(WeightsError, match=r"no model_index\.json"):
        plan_files({k: v for k, v in listing.items() if k != "model_index.json"}, Layout.PIPELINE, components=sd15)
    with pytest.raises(WeightsError, match=r"x/y has no \.safetensors weights in unet/"):
        plan_files(
            {k: v for k, v in listing.items() if not k.startswith("unet/diffusion")},
            Layout.PIPELINE,
            components=sd15,
            repo="x/y",
        )
    with pytest.raises(WeightsError, match="no text_encoder/ folder"):
        plan_files(
            {k: v for k, v in listing.items() if not k.startswith("text_encoder/")}, Layout.PIPELINE, components=sd15
        )
    with pytest.raises(WeightsError, match="name the file"):
        plan_files({"a.safetensors": 1, "b.safetensors": 1}, Layout.LORA)
    assert plan_files({"a.safetensors": 1, "b.safetensors": 1}, Layout.LORA, filename="b.safetensors").files == (
        "b.safetensors",
    )


def test_one_component_without_fp16_makes_the_whole_plan_float32() -> None:
    """diffusers loads one variant for all components: fp16 only when every weight component has it."""
    listing = hub_layouts.listing("stabilityai/sdxl-turbo")
    del listing["vae/diffusion_pytorch_model.fp16.safetensors"]
    plan = plan_files(listing, Layout.PIPELINE, components=PIPELINE_COMPONENTS["sdxl"])
    assert plan.variant is None and "unet/diffusion_pytorch_model.safetensors" in plan.files


def test_sharded_fp16_weights_come_with_their_index() -> None:
    listing: dict[str, int | None] = {
        "config.json": 1,
        "diffusion_pytorch_model.safetensors.index.fp16.json": 1,
        "diffusion_pytorch_model.fp16-00001-of-00002.safetensors": 5,
        "diffusion_pytorch_model.fp16-00002-of-00002.safetensors": 5,
        "diffusion_pytorch_model-00001-of-00002.safetensors": 10,
        "diffusion_pytorch_model-00002-of-00002.safetensors": 10,
        "diffusion_pytorch_model.safetensors.index.json": 1,
    }
    plan = plan_files(listing, Layout.MODEL)
    assert plan.variant == "fp16" and plan.total_bytes == 12 and len(plan.files) == 4


# -- fetching ---------------------------------------------------------------------------------


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache for this test (huggingface_hub reads the path at import)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_complete_cached_snapshot_is_used_without_the_network(hub_cache: Path, tmp_path: Path) -> None:
    repo = "madebyollin/taesd"
    snapshot = hub_layouts.install_in_cache(hub_layouts.write_repo(repo, tmp_path / "taesd"), repo, hub_cache)
    folder, plan = hub.fetch(repo, Layout.MODEL, offline=True)
    assert folder == snapshot and plan.files == ("config.json", "diffusion_pytorch_model.safetensors")


def test_an_incomplete_cached_snapshot_is_not_used(hub_cache: Path, tmp_path: Path) -> None:
    repo = "madebyollin/taesd"
    folder = hub_layouts.write_repo(repo, tmp_path / "taesd")
    (folder / "diffusion_pytorch_model.safetensors").unlink()  # an interrupted download
    hub_layouts.install_in_cache(folder, repo, hub_cache)
    with pytest.raises(hub.HubUnavailable, match="--offline"):
        hub.fetch(repo, Layout.MODEL, offline=True)


@pytest.fixture
def silent_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Hub endpoint that accepts connections and never answers (a black-holed network)."""
    from huggingface_hub import constants

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # connections complete in the kernel's backlog; nothing ever reads them
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    try:
        yield url
    finally:
        sock.close()


def test_a_hub_that_never_answers_is_given_up_on_within_the_timeout(hub_cache: Path, silent_hub: str) -> None:
    started = time.monotonic()
    with pytest.raises(hub.HubUnavailable) as info:
        hub.fetch("madebyollin/taesd", Layout.MODEL, timeout_s=1.0)
    assert time.monotonic() - started < 5.0
    assert silent_hub in str(info.value)


def test_a_call_stuck_past_any_socket_timeout_is_abandoned_at_the_deadline() -> None:
    """Name resolution can block longer than socket timeouts: the wait itself is bounded."""
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(hub.HubUnavailable, match=r"within 0\.2 s"):
        hub._within(lambda: release.wait(30), 0.2, "listing")
    assert time.monotonic() - started < 2.0
    release.set()


def test_offline_mode_never_asks_the_hub(hub_cache: Path, silent_hub: str) -> None:
    started = time.monotonic()
    with pytest.raises(hub.HubUnavailable, match="--offline"):
        hub.fetch("madebyollin/taesd", Layout.MODEL, offline=True, timeout_s=30.0)
    assert time.monotonic() - started < 1.0  # a request to the silent Hub would wait 30 s


@pytest.fixture
def fake_hub_at(hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[fake_hub.FakeHub]:
    """The tiny layouts served by a local Hub; huggingface_hub pointed at it, online."""
    from huggingface_hub import constants

    repos = ("stabilityai/sdxl-turbo", "madebyollin/taesdxl", "latent-consistency/lcm-lora-sdxl")
    folders = {repo: hub_layouts.write_repo(repo, tmp_path / "src" / repo.replace("/", "--")) for repo in repos}
    commits = {repo: hub_layouts.LISTINGS[repo]["commit"] for repo in repos}
    with fake_hub.serve(folders, commits) as (served, url):
        monkeypatch.setattr(constants, "ENDPOINT", url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield served


def test_a_download_fetches_the_planned_files_only_and_states_the_size_first(
    fake_hub_at: fake_hub.FakeHub, hub_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = "stabilityai/sdxl-turbo"
    with caplog.at_level("INFO", logger="framewire.engine"):
        folder, plan = hub.fetch(repo, Layout.PIPELINE, components=PIPELINE_COMPONENTS["sdxl"], label="sdxl-turbo")
    downloaded = {d.removeprefix(repo + "/") for d in fake_hub_at.downloads}
    assert downloaded <= set(plan.files) and plan.variant == "fp16"
    assert set(plan.files) <= set(hub.local_listing(folder))  # complete (identical blobs are fetched once)
    assert not any(d.endswith(("model.safetensors", "diffusion_pytorch_model.safetensors")) for d in downloaded)
    announce = [r.getMessage() for r in caplog.records if "downloading" in r.getMessage()]
    assert announce and f"{len(plan.files)} files, {plan.size_text} (fp16 variant)" in announce[0]
    assert folder.is_relative_to(hub_cache)

    fake_hub_at.downloads.clear()
    asked = len(fake_hub_at.listings)
    again, _ = hub.fetch(repo, Layout.PIPELINE, components=PIPELINE_COMPONENTS["sdxl"], timeout_s=0.5)
    assert again == folder and not fake_hub_at.downloads and len(fake_hub_at.listings) == asked  # the cache alone


def test_an_unknown_repo_is_an_error_saying_so_not_an_unreachable_hub(fake_hub_at: fake_hub.FakeHub) -> None:
    with pytest.raises(WeightsError, match="does not exist") as info:
        hub.fetch("nobody/nothing", Layout.MODEL)
    assert not isinstance(info.value, hub.HubUnavailable)
