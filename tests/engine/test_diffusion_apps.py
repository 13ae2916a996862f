"""The LCM and SDXL-turbo apps: inputs, image rules, per-frame errors, previews, memory."""

from __future__ import annotations

import asyncio
import base64
import gc
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel, ValidationError

from framewire.engine.api import AppError, Progress
from framewire.engine.apps.lcm import LcmApp, LcmInput
from framewire.engine.apps.sdxl_turbo import SdxlTurboApp, TurboInput
from framewire.engine.media import ImageOutput, sniff_size
from framewire.engine.sampler import BatchKey
from tests.engine.conftest import jpeg, noise_image


def decoded(out: Any) -> np.ndarray:
    assert isinstance(out, ImageOutput), out
    data = out.images[0].content
    assert data is not None and data[:2] == b"\xff\xd8"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def run(app: Any, *inputs: BaseModel, progress: Progress | None = None) -> list[Any]:
    return list(app.generate(list(inputs), progress or Progress()))


def png(width: int, height: int, alpha: bool = False) -> bytes:
    mode = "RGBA" if alpha else "RGB"
    img = Image.new(mode, (width, height), (20, 40, 60, 0) if alpha else (20, 40, 60))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def test_text_to_image_returns_a_jpeg_of_the_requested_size_with_fal_fields(lcm_app: LcmApp) -> None:
    (out,) = run(
        lcm_app, LcmInput(prompt="a cat", image_size={"width": 96, "height": 64}, seed=5, num_inference_steps=2)
    )
    assert decoded(out).shape == (64, 96, 3)
    assert out.seed == 5 and out.prompt == "a cat" and out.has_nsfw_concepts == [False]
    assert out.images[0].width == 96 and out.images[0].height == 64 and out.images[0].content_type == "image/jpeg"
    assert {"prepare_ms", "generate_ms", "jpeg_ms"} <= set(out.timings)


def test_strength_zero_returns_the_input_image_resized(lcm_app: LcmApp) -> None:
    source = noise_image(128, 128, seed=3)
    blurred = np.asarray(Image.fromarray(source).resize((64, 64), Image.Resampling.BICUBIC))
    data = io.BytesIO()
    Image.fromarray(source).save(data, format="PNG")
    (out,) = run(lcm_app, LcmInput(prompt="x", image_url=data.getvalue(), strength=0.0, image_size="square", seed=1))
    got = decoded(out)
    assert got.shape == (512, 512, 3)
    small = np.asarray(Image.fromarray(got).resize((64, 64), Image.Resampling.BICUBIC)).astype(int)
    assert np.abs(small - blurred.astype(int)).mean() < 12  # the input, through two resizes and JPEG
    assert "generate_ms" not in out.timings  # no model ran


def test_strength_one_ignores_the_image_and_equals_text_to_image(lcm_app: LcmApp) -> None:
    common = {"prompt": "a dog", "seed": 9, "num_inference_steps": 2, "image_size": {"width": 64, "height": 64}}
    with_image, without = run(lcm_app, LcmInput(**common, image_url=jpeg(64, 64), strength=1.0), LcmInput(**common))
    assert with_image.images[0].content == without.images[0].content


def test_partial_strength_changes_the_output_with_the_image(lcm_app: LcmApp) -> None:
    common = {"prompt": "a dog", "seed": 9, "num_inference_steps": 2, "strength": 0.5}
    a, b = run(lcm_app, LcmInput(**common, image_url=jpeg(64, 64, 1)), LcmInput(**common, image_url=jpeg(64, 64, 2)))
    assert a.images[0].content != b.images[0].content


def test_a_sketch_of_the_wrong_size_is_resized_not_rejected(lcm_app: LcmApp) -> None:
    sketch = png(100, 37, alpha=True)
    (out,) = run(lcm_app, LcmInput(prompt="a house", image_url=sketch, image_size={"width": 64, "height": 64}))
    assert decoded(out).shape == (64, 64, 3)


def test_without_image_size_the_output_follows_the_input_image(lcm_app: LcmApp) -> None:
    (out,) = run(lcm_app, LcmInput(prompt="x", image_url=jpeg(96, 64), num_inference_steps=1))
    assert decoded(out).shape == (64, 96, 3)
    large = LcmInput(prompt="x", image_url=png(2000, 1000))
    assert lcm_app.key_for(large) == BatchKey("img2img", 768, 384, 4)  # scaled down to max_auto_side
    assert lcm_app.key_for(LcmInput(prompt="x")) == BatchKey("txt2img", 512, 512, 4)


def test_undecodable_image_bytes_fail_only_their_own_frame(lcm_app: LcmApp) -> None:
    size = {"width": 64, "height": 64}
    bad, good = run(
        lcm_app,
        LcmInput(prompt="x", image_url=b"\xff\xd8 this is not a jpeg", image_size=size),
        LcmInput(prompt="x", image_url=jpeg(64, 64), image_size=size, num_inference_steps=1),
    )
    assert isinstance(bad, AppError) and bad.code == "INVALID_INPUT" and bad.field == "image_url"
    assert "cannot decode" in bad.reason
    assert decoded(good).shape == (64, 64, 3)


def test_images_arrive_as_bytes_or_data_uris_and_urls_are_never_fetched_here(lcm_app: LcmApp) -> None:
    """Fetching is the gateway's job, before the batch: a URL reaching the engine is refused."""
    body = jpeg(64, 64, 7)
    common = {"prompt": "x", "seed": 2, "num_inference_steps": 1, "image_size": {"width": 64, "height": 64}}
    raw, uri, url = run(
        lcm_app,
        LcmInput(**common, image_url=body),
        LcmInput(**common, image_url="data:image/jpeg;base64," + base64.b64encode(body).decode()),
        LcmInput(**common, image_url="http://127.0.0.1:9/img.jpg"),
    )
    assert raw.images[0].content == uri.images[0].content
    assert isinstance(url, AppError) and url.field == "image_url" and "fetched by the server" in url.reason


def test_num_images_use_consecutive_seeds_and_a_missing_seed_is_returned(lcm_app: LcmApp) -> None:
    size = {"width": 64, "height": 64}
    pair, second, unseeded = run(
        lcm_app,
        LcmInput(prompt="x", seed=20, num_images=2, image_size=size, num_inference_steps=1),
        LcmInput(prompt="x", seed=21, image_size=size, num_inference_steps=1),
        LcmInput(prompt="x", image_size=size, num_inference_steps=1),
    )
    assert len(pair.images) == 2 and pair.has_nsfw_concepts == [False, False]
    assert pair.images[1].content == second.images[0].content
    assert isinstance(unseeded.seed, int) and 0 <= unseeded.seed < 2**32


def test_batch_keys_separate_size_steps_mode_and_guidance(lcm_app: LcmApp, turbo_app: SdxlTurboApp) -> None:
    key = lcm_app.key_for
    base = key(LcmInput(prompt="a"))
    assert key(LcmInput(prompt="b", seed=3, guidance_scale=4.0)) == base  # per-frame settings share a batch
    assert key(LcmInput(prompt="a", num_inference_steps=2)) != base
    assert key(LcmInput(prompt="a", image_size="square_hd")) != base
    assert key(LcmInput(prompt="a", image_url=jpeg(512, 512), strength=0.4)).mode == "img2img"
    assert key(LcmInput(prompt="a", image_url=jpeg(512, 512), strength=0.0)).mode == "copy"
    turbo = turbo_app.key_for
    assert turbo(TurboInput(prompt="a", image_url=jpeg(512, 512), num_inference_steps=4, strength=0.5)).steps == 2
    assert turbo(TurboInput(prompt="a", guidance_scale=3.0)).cfg and not turbo(TurboInput(prompt="a")).cfg


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"strength": 1.5}, "strength"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"image_size": "huge"}, "image_size"),
        ({"image_size": {"width": 32, "height": 512}}, "image_size"),
        ({"seed": -1}, "seed"),
        ({"num_images": 9}, "num_images"),
    ],
)
def test_validation_errors_name_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        LcmInput(prompt="x", **fields)
    assert {str(err["loc"][0]) for err in info.value.errors()} == {field}


def test_a_missing_prompt_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="prompt"):
        TurboInput.model_validate({"image_url": b"x"})


class RecordingProgress(Progress):
    def __init__(self, wanted: set[int], cancelled: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self._wanted, self._cancelled = wanted, cancelled
        self.partials: list[tuple[int, ImageOutput]] = []

    def wanted(self, index: int) -> bool:
        return index in self._wanted

    def cancelled(self, index: int) -> bool:
        return index in self._cancelled

    def __call__(self, index: int, partial: BaseModel) -> None:
        assert isinstance(partial, ImageOutput)
        self.partials.append((index, partial))


def test_previews_go_once_per_step_to_the_inputs_that_want_them(lcm_app: LcmApp) -> None:
    progress = RecordingProgress(wanted={1})
    size = {"width": 64, "height": 64}
    outs = run(
        lcm_app,
        LcmInput(prompt="a", image_size=size, num_inference_steps=3),
        LcmInput(prompt="b", image_size=size, num_inference_steps=3, seed=4),
        progress=progress,
    )
    assert all(isinstance(o, ImageOutput) for o in outs)
    assert [i for i, _ in progress.partials] == [1, 1, 1]
    assert [p.timings["step"] for _, p in progress.partials] == [1, 2, 3]
    preview = progress.partials[0][1].images[0]
    assert (
        (preview.width, preview.height) == (8, 8) and preview.content is not None and preview.content[:2] == b"\xff\xd8"
    )


def test_a_batch_whose_callers_all_gave_up_stops_early(lcm_app: LcmApp) -> None:
    seen: list[int] = []
    assert lcm_app.runner is not None
    handle = lcm_app.runner.unet.register_forward_pre_hook(lambda module, args: seen.append(1))
    try:
        outs = run(
            lcm_app,
            LcmInput(prompt="a", image_size={"width": 64, "height": 64}, num_inference_steps=4),
            progress=RecordingProgress(wanted=set(), cancelled={0}),
        )
    finally:
        handle.remove()
    assert seen == []
    assert isinstance(outs[0], AppError) and outs[0].code == "CANCELLED"


def test_sdxl_turbo_makes_text_and_image_to_image_jpegs(turbo_app: SdxlTurboApp) -> None:
    size = {"width": 64, "height": 64}
    t2i, i2i, cfg = run(
        turbo_app,
        TurboInput(prompt="a cat", image_size=size, num_inference_steps=1, seed=1),
        TurboInput(prompt="a cat", image_url=jpeg(80, 80), strength=0.5, image_size=size, seed=1),
        TurboInput(prompt="a cat", negative_prompt="blurry", guidance_scale=2.0, image_size=size, seed=1),
    )
    for out in (t2i, i2i, cfg):
        assert decoded(out).shape == (64, 64, 3)
    assert len({t2i.images[0].content, i2i.images[0].content, cfg.images[0].content}) == 3


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_memory_stays_flat_over_300_frames(lcm_app: LcmApp) -> None:
    size = {"width": 64, "height": 64}
    image = jpeg(64, 64)

    def frames(start: int, count: int) -> None:
        for first in range(start, start + count, 4):
            batch = [
                LcmInput(
                    prompt=f"prompt {n}", image_url=image, strength=0.5, image_size=size, seed=n, num_inference_steps=1
                )
                for n in range(first, first + 4)
            ]
            assert all(isinstance(o, ImageOutput) for o in run(lcm_app, *batch))

    frames(0, 40)  # warm: buffers, allocator pools, prompt cache churn
    gc.collect()
    before = _rss_bytes()
    frames(40, 300)
    gc.collect()
    grown_mb = (_rss_bytes() - before) / 2**20
    assert grown_mb < 24, f"resident memory grew {grown_mb:.1f} MiB over 300 frames"
    assert lcm_app.runner is not None and len(lcm_app.runner.prompts) <= lcm_app.config.prompt_cache_size


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (png(123, 45), (123, 45)),
        (jpeg(96, 64), (96, 64)),
        (
            b"RIFF\x00\x00\x00\x00WEBPVP8X" + bytes(8) + (99).to_bytes(3, "little") + (49).to_bytes(3, "little"),
            (100, 50),
        ),
        (b"not an image", None),
    ],
)
def test_image_sizes_are_read_from_headers(data: bytes, size: tuple[int, int] | None) -> None:
    assert sniff_size(data) == size


@pytest.fixture
def cold_app(lcm_config: Any) -> Iterator[LcmApp]:
    app = LcmApp(lcm_config)
    yield app
    app.teardown()


def test_apps_import_and_key_frames_without_setup(cold_app: LcmApp) -> None:
    assert cold_app.runner is None
    assert cold_app.key_for(LcmInput(prompt="x", num_inference_steps=2)) == BatchKey("txt2img", 512, 512, 2)
    # Text- and image-to-image frames of one size and step count share a batch.
    text = cold_app.batch_key("", LcmInput(prompt="x", num_inference_steps=2))
    image = cold_app.batch_key("", LcmInput(prompt="x", image_url=jpeg(512, 512), num_inference_steps=2))
    assert text == image == BatchKey("mixed", 512, 512, 2)


def test_the_degradation_ladder_lowers_steps_then_size(cold_app: LcmApp) -> None:
    assert cold_app.degradation("") == ("num_inference_steps<=2", "num_inference_steps=1", "half size")
    inp = LcmInput(prompt="x", num_inference_steps=4, image_size={"width": 512, "height": 384})
    first, second, third = (cold_app.degrade("", inp, level) for level in (1, 2, 3))
    assert first is not None and first.input.num_inference_steps == 2  # type: ignore[attr-defined]
    assert first.note == "num_inference_steps 4→2"
    assert second is not None and second.input.num_inference_steps == 1  # type: ignore[attr-defined]
    assert third is not None and cold_app.key_for(third.input) == BatchKey("txt2img", 256, 192, 1)  # type: ignore[arg-type]
    assert third.note == "num_inference_steps 4→1; image_size 512x384→256x192"
    assert inp.num_inference_steps == 4  # the input as sent is left alone
    one_step = LcmInput(prompt="x", num_inference_steps=1)
    assert cold_app.degrade("", one_step, 1) is None and cold_app.degrade("", one_step, 2) is None
    copy = LcmInput(prompt="x", image_url=jpeg(64, 64), strength=0.0)
    assert cold_app.degrade("", copy, 3) is None  # no model runs: nothing to save
    assert cold_app.frame_cost("", third.input) < cold_app.frame_cost("", second.input) < cold_app.frame_cost("", inp)


def test_a_static_shape_backend_degrades_only_to_warmed_sizes(lcm_config: Any) -> None:
    from dataclasses import replace

    from framewire.engine.config import Backend

    compiled = LcmApp(replace(lcm_config, backend=Backend.COMPILE, warmup_sizes=((512, 512), (256, 256))))
    assert compiled.degrade("", LcmInput(prompt="x", image_size="square", num_inference_steps=1), 3) is not None
    unwarmed = LcmInput(prompt="x", image_size={"width": 384, "height": 384}, num_inference_steps=1)
    assert compiled.degrade("", unwarmed, 3) is None  # 192x192 would compile on the frame path


def test_a_frame_has_an_identity_only_when_its_output_is_determined(cold_app: LcmApp) -> None:
    image = jpeg(64, 64)
    base = {"prompt": "x", "image_url": image, "seed": 3, "strength": 0.5}
    identity = cold_app.frame_identity("", LcmInput(**base))
    assert identity is not None and identity.image == image
    same = cold_app.frame_identity(
        "", LcmInput(**{**base, "image_url": "data:image/jpeg;base64," + base64.b64encode(image).decode()})
    )
    assert same == identity
    assert cold_app.frame_identity("", LcmInput(**{**base, "strength": 0.6})) != identity
    assert cold_app.frame_identity("", LcmInput(**{**base, "seed": None})) is None  # a random seed
    assert cold_app.frame_identity("", LcmInput(**{**base, "image_url": "https://example.com/a.jpg"})) is None


def test_a_degraded_image_frame_runs_at_the_smaller_size(lcm_app: LcmApp) -> None:
    inp = LcmInput(prompt="x", image_url=jpeg(128, 128), strength=0.5, seed=4, image_size={"width": 128, "height": 128})
    degraded = lcm_app.degrade("", inp, 3)
    assert degraded is not None
    prepared = lcm_app.prepare(inp)  # decoded at the size as sent
    assert prepared.image is not None and prepared.image.shape == (128, 128, 3)
    ran = lcm_app.run_batch([degraded.input], [prepared], Progress())  # type: ignore[list-item]
    (out,) = lcm_app.finish(ran, Progress())
    assert decoded(out).shape == (64, 64, 3)


async def test_the_engine_overlapping_stages_gives_the_serial_images_and_answers_repeats(
    lcm_app: LcmApp, lcm_config: Any
) -> None:
    from framewire.engine.api import AppRegistry
    from framewire.engine.host import LocalEngine

    size = {"width": 64, "height": 64}
    inputs = [
        LcmInput(
            prompt=f"p{i}",
            seed=i,
            num_inference_steps=2,
            image_size=size,
            **({"image_url": jpeg(80, 80, i), "strength": 0.6} if i % 2 else {}),
        )
        for i in range(6)
    ]
    serial = [run(lcm_app, inp)[0] for inp in inputs]  # batches of one
    engine = LocalEngine(AppRegistry([LcmApp(lcm_config)]), max_batch_size_cap=1)  # sets up its own app
    await engine.start()
    try:
        ep = engine.registry.resolve("framewire/lcm", realtime=True)
        got: list[Any] = []
        streams = [engine.open_stream(ep, 8, got.append) for _ in range(2)]
        for i, inp in enumerate(inputs):
            engine.submit(streams[i % 2], inp, tag=i)
        await _wait_for(got, len(inputs))
        # The last frame of stream 1 again: answered from its output; then with a new prompt: run.
        engine.submit(streams[1], inputs[5], tag=6)
        await _wait_for(got, 7)
        engine.submit(streams[1], inputs[5].model_copy(update={"prompt": "changed"}), tag=7)
        await _wait_for(got, 8)
    finally:
        await engine.stop()
    by_tag = {r.tag: r for r in got}
    assert sorted(by_tag) == list(range(8))
    assert by_tag[6].skipped == "exact" and by_tag[6].output.images[0].content == serial[5].images[0].content
    assert by_tag[7].skipped == "" and by_tag[7].output.images[0].content != serial[5].images[0].content
    got = got[:6]
    for i, expected in enumerate(serial):
        assert by_tag[i].output.images[0].content == expected.images[0].content
    for stream_tags in ([r.tag for r in got if r.tag % 2 == k] for k in (0, 1)):
        assert stream_tags == sorted(stream_tags)  # each stream's results in its order


async def _wait_for(got: list[Any], count: int) -> None:
    deadline = asyncio.get_running_loop().time() + 60
    while len(got) < count and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    assert len(got) >= count
