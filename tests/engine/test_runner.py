"""The batched runner against diffusers' own pipelines, on tiny random models (CPU)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from framewire.engine.api import EngineError, EngineFault
from framewire.engine.runner import BatchKey, DiffusionRunner, PromptCache, Sample
from tests.engine.conftest import noise_image


def as_uint8(images: np.ndarray) -> np.ndarray:
    return (images * 255).round().astype(np.int32)


def max_diff(ours: np.ndarray, ref: np.ndarray) -> int:
    return int(np.abs(ours.astype(np.int32) - ref).max())


def unet_batches(runner: DiffusionRunner) -> tuple[list[int], Any]:
    seen: list[int] = []
    handle = runner.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    return seen, handle


def lcm_pipes(runner: DiffusionRunner) -> tuple[Any, Any]:
    from diffusers import LatentConsistencyModelImg2ImgPipeline, LatentConsistencyModelPipeline

    components = {k: v for k, v in runner.pipe.components.items()}
    t2i = LatentConsistencyModelPipeline(**components)
    i2i = LatentConsistencyModelImg2ImgPipeline(**components)
    for pipe in (t2i, i2i):
        pipe.set_progress_bar_config(disable=True)
    return t2i, i2i


@pytest.mark.parametrize("steps", [1, 4])
def test_lcm_text_to_image_batch_matches_the_diffusers_pipeline(lcm_runner: DiffusionRunner, steps: int) -> None:
    t2i, _ = lcm_pipes(lcm_runner)
    prompts, seeds = ["a photo of a cat", "a dog"], [7, 1234]
    ours = lcm_runner.generate(
        BatchKey("txt2img", 64, 64, steps),
        [Sample(p, s, steps, guidance_scale=6.0) for p, s in zip(prompts, seeds, strict=True)],
    )
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    ref = t2i(
        prompts, num_inference_steps=steps, guidance_scale=6.0, height=64, width=64, generator=gens, output_type="np"
    )
    assert ours.shape == (2, 64, 64, 3) and ours.dtype == np.uint8
    assert max_diff(ours, as_uint8(ref.images)) <= 1


def test_lcm_image_to_image_matches_the_diffusers_pipeline(lcm_runner: DiffusionRunner) -> None:
    _, i2i = lcm_pipes(lcm_runner)
    image = noise_image(64, 64)
    ours = lcm_runner.generate(
        BatchKey("img2img", 64, 64, 4), [Sample("a sketch", 3, 4, strength=0.6, guidance_scale=1.5, image=image)]
    )
    ref = i2i(
        "a sketch",
        image=Image.fromarray(image),
        strength=0.6,
        num_inference_steps=4,
        guidance_scale=1.5,
        generator=torch.Generator().manual_seed(3),
        output_type="np",
    )
    assert max_diff(ours, as_uint8(ref.images)) <= 1


@pytest.mark.parametrize(("steps", "guidance"), [(1, 0.0), (2, 3.0)])
def test_sdxl_text_to_image_matches_the_diffusers_pipeline(
    turbo_runner: DiffusionRunner, steps: int, guidance: float
) -> None:
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**turbo_runner.pipe.components)
    pipe.set_progress_bar_config(disable=True)
    key = BatchKey("txt2img", 64, 64, steps, cfg=guidance > 1)
    ours = turbo_runner.generate(key, [Sample("a cat", 5, steps, guidance_scale=guidance)])
    ref = pipe(
        "a cat",
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(5),
        output_type="np",
    )
    assert max_diff(ours, as_uint8(ref.images)) <= 1


def test_sdxl_image_to_image_matches_the_pipeline_and_runs_steps_times_strength(turbo_runner: DiffusionRunner) -> None:
    from diffusers import StableDiffusionXLImg2ImgPipeline

    pipe = StableDiffusionXLImg2ImgPipeline(**turbo_runner.pipe.components)
    pipe.set_progress_bar_config(disable=True)
    image = noise_image(64, 64, seed=4)
    steps = turbo_runner.sampler.steps_for(4, 0.75, img2img=True)
    seen, handle = unet_batches(turbo_runner)
    try:
        ours = turbo_runner.generate(
            BatchKey("img2img", 64, 64, steps), [Sample("cat", 3, 4, strength=0.75, guidance_scale=0.0, image=image)]
        )
    finally:
        handle.remove()
    ref = pipe(
        "cat",
        image=Image.fromarray(image),
        strength=0.75,
        num_inference_steps=4,
        guidance_scale=0.0,
        generator=torch.Generator().manual_seed(3),
        output_type="np",
    )
    assert steps == 3 and len(seen) == 3
    assert max_diff(ours, as_uint8(ref.images)) <= 1


def test_lcm_image_to_image_takes_all_steps_whatever_the_strength(lcm_runner: DiffusionRunner) -> None:
    image = noise_image(64, 64)
    for strength in (0.3, 0.9):
        seen, handle = unet_batches(lcm_runner)
        try:
            lcm_runner.generate(BatchKey("img2img", 64, 64, 3), [Sample("x", 1, 3, strength=strength, image=image)])
        finally:
            handle.remove()
        assert seen == [1, 1, 1]


def test_a_batch_of_n_frames_equals_n_single_runs(lcm_runner: DiffusionRunner) -> None:
    samples = [
        Sample("a cat", 11, 2, strength=0.3, guidance_scale=1.0, image=noise_image(64, 64, 1)),
        Sample("a dog", 12, 2, strength=0.7, guidance_scale=4.0, image=noise_image(64, 64, 2)),
        Sample("a photo of the sea", 13, 2, strength=0.5, guidance_scale=8.0, image=noise_image(64, 64, 3)),
        Sample("a cat", 14, 2, strength=0.9, guidance_scale=2.0, image=noise_image(64, 64, 4)),
    ]
    key = BatchKey("img2img", 64, 64, 2)
    seen, handle = unet_batches(lcm_runner)
    try:
        batched = lcm_runner.generate(key, samples)
    finally:
        handle.remove()
    singles = np.concatenate([lcm_runner.generate(key, [s]) for s in samples])
    assert seen == [4, 4]  # one UNet call per step for the whole batch
    assert max_diff(batched, singles.astype(np.int32)) <= 2
    assert len({batched[i].tobytes() for i in range(4)}) == 4


def test_same_seed_gives_the_same_image_and_another_seed_does_not(lcm_runner: DiffusionRunner) -> None:
    key = BatchKey("txt2img", 64, 64, 2)
    first = lcm_runner.generate(key, [Sample("a cat", 42, 2)])
    again = lcm_runner.generate(key, [Sample("a cat", 42, 2)])
    other = lcm_runner.generate(key, [Sample("a cat", 43, 2)])
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_a_static_shape_backend_pads_the_batch_to_its_bucket(
    lcm_runner: DiffusionRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples = [Sample(f"prompt {i}", i, 1) for i in range(3)]
    key = BatchKey("txt2img", 64, 64, 1)
    plain = lcm_runner.generate(key, samples)
    monkeypatch.setattr(lcm_runner.backend, "static_shapes", True)
    seen, handle = unet_batches(lcm_runner)
    try:
        padded = lcm_runner.generate(key, samples)
    finally:
        handle.remove()
    assert seen == [4]  # buckets are 1, 2, 4, 8
    assert padded.shape == (3, 64, 64, 3)
    assert max_diff(padded, plain.astype(np.int32)) <= 2


def test_out_of_memory_halves_the_batch_and_retries(
    lcm_runner: DiffusionRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples = [Sample("a cat", i, 1) for i in range(4)]
    key = BatchKey("txt2img", 64, 64, 1)
    expected = lcm_runner.generate(key, samples)
    real_step = lcm_runner.backend.step
    tried: list[int] = []

    def small_memory(x: torch.Tensor, *args: Any) -> Any:
        tried.append(x.shape[0])
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_step(x, *args)

    monkeypatch.setattr(lcm_runner.backend, "step", small_memory)
    got = lcm_runner.generate(key, samples)
    assert tried == [4, 2, 1, 1, 2, 1, 1]
    assert np.array_equal(got, expected)


def test_out_of_memory_on_one_frame_is_an_engine_error(
    lcm_runner: DiffusionRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_memory(*args: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(lcm_runner.backend, "step", no_memory)
    with pytest.raises(EngineError, match="out of GPU memory"):
        lcm_runner.generate(BatchKey("txt2img", 64, 64, 1), [Sample("a cat", 1, 1)])


def test_a_device_error_asks_for_a_restart(lcm_runner: DiffusionRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> Any:
        raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered (simulated)")

    monkeypatch.setattr(lcm_runner.backend, "step", broken)
    with pytest.raises(EngineFault, match="illegal memory access"):
        lcm_runner.generate(BatchKey("txt2img", 64, 64, 1), [Sample("a cat", 1, 1)])


def test_prompt_embeddings_are_cached_per_prompt_and_bounded() -> None:
    encoded: list[list[str]] = []

    def encode(prompts: list[str]) -> list[tuple[torch.Tensor, None]]:
        encoded.append(prompts)
        return [(torch.full((2,), float(len(p))), None) for p in prompts]

    cache = PromptCache(encode, size=2)
    cache.get(["a", "bb", "a"])
    cache.get(["bb"])
    cache.get(["ccc"])  # evicts "a", the least recently used
    cache.get(["a"])
    assert encoded == [["a", "bb"], ["ccc"], ["a"]]
    assert len(cache) == 2 and cache.hits == 2


def test_previews_are_rgb_at_latent_resolution(lcm_runner: DiffusionRunner) -> None:
    latents = torch.randn(3, 4, 8, 8)
    preview = lcm_runner.preview(latents)
    assert preview.shape == (3, 8, 8, 3) and preview.dtype == np.uint8


def test_the_tiny_vae_runs_image_to_image_as_the_pipeline_does(lcm_config: Any) -> None:
    from dataclasses import replace

    from diffusers import AutoencoderTiny

    runner = DiffusionRunner("sd15", replace(lcm_config, tiny_vae=True), app="lcm", scheduler="LCMScheduler")
    try:
        assert isinstance(runner.vae, AutoencoderTiny) and not runner.kl
        _, i2i = lcm_pipes(runner)
        image = noise_image(64, 64, seed=8)
        ours = runner.generate(BatchKey("img2img", 64, 64, 2), [Sample("a cat", 6, 2, strength=0.7, image=image)])
        ref = i2i(
            "a cat",
            image=Image.fromarray(image),
            strength=0.7,
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(6),
            output_type="np",
        )
        # TAESD is deterministic (no posterior draw); the pipeline normalises pixels as x/255*2-1,
        # the runner as x/127.5-1: a rounding apart.
        assert max_diff(ours, as_uint8(ref.images)) <= 2
    finally:
        runner.close()


def _record_graphs(runner: DiffusionRunner, monkeypatch: pytest.MonkeyPatch) -> set[tuple[Any, ...]]:
    """Every (stage, input shape, guidance) the backend is called with: what a compiled
    backend would trace or capture one graph for."""
    seen: set[tuple[Any, ...]] = set()
    backend = runner.backend
    step, decode, encode = backend.step, backend.decode, backend.encode

    def record_step(x: torch.Tensor, t: torch.Tensor, coefs: torch.Tensor, noise: torch.Tensor, cond: Any) -> Any:
        seen.add(("step", tuple(x.shape), cond.get("neg_emb") is not None))
        return step(x, t, coefs, noise, cond)

    def record_decode(x: torch.Tensor) -> Any:
        seen.add(("decode", tuple(x.shape)))
        return decode(x)

    def record_encode(pixels: torch.Tensor) -> Any:
        seen.add(("encode", tuple(pixels.shape)))
        return encode(pixels)

    monkeypatch.setattr(backend, "static_shapes", True)
    monkeypatch.setattr(backend, "step", record_step)
    monkeypatch.setattr(backend, "decode", record_decode)
    monkeypatch.setattr(backend, "encode", record_encode)
    return seen


def test_warm_up_covers_every_graph_a_request_can_hit(
    turbo_runner: DiffusionRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each size and bucket, with and without guidance (the doubled batch), image-to-image too."""
    seen = _record_graphs(turbo_runner, monkeypatch)
    sizes = [(64, 64), (96, 64)]
    turbo_runner.warmup(sizes, cfg=True)
    warmed = set(seen)
    seen.clear()
    image = {size: noise_image(*size) for size in sizes}
    for width, height in sizes:
        for n in (1, 3, 8):
            for guidance in (0.0, 3.0):
                for strength in (1.0, 0.5):
                    img2img = strength < 1
                    steps = turbo_runner.sampler.steps_for(2, strength, img2img)
                    key = BatchKey("img2img" if img2img else "txt2img", width, height, steps, cfg=guidance > 1)
                    frame = Sample("cat", 1, 2, strength, guidance, image=image[(width, height)] if img2img else None)
                    turbo_runner.generate(key, [frame] * n)
        for n in (2, 5):  # mixed batches: image frames encoded alone, in their own bucket
            frames = [
                # 4 steps at strength 0.5 and 2 steps of text-to-image both take 2 UNet steps
                Sample(
                    "cat",
                    i,
                    4 if i % 2 else 2,
                    0.5 if i % 2 else 1.0,
                    0.0,
                    image=image[(width, height)] if i % 2 else None,
                )
                for i in range(n)
            ]
            turbo_runner.generate(BatchKey("mixed", width, height, 2), frames)
    assert seen and seen <= warmed, f"graphs first met by requests: {sorted(seen - warmed)}"
    assert ("step", (8, 4, 8, 12), True) in warmed  # the widest bucket, guided, at the non-square size


def test_sdxl_non_square_text_to_image_matches_the_diffusers_pipeline(turbo_runner: DiffusionRunner) -> None:
    """SDXL's time ids carry (height, width): a width != height frame must match the pipeline's."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**turbo_runner.pipe.components)
    pipe.set_progress_bar_config(disable=True)
    for width, height in ((96, 64), (64, 112)):
        ours = turbo_runner.generate(BatchKey("txt2img", width, height, 1), [Sample("a cat", 9, 1, guidance_scale=0.0)])
        ref = pipe(
            "a cat",
            num_inference_steps=1,
            guidance_scale=0.0,
            height=height,
            width=width,
            generator=torch.Generator().manual_seed(9),
            output_type="np",
        )
        assert ours.shape == (1, height, width, 3)
        assert max_diff(ours, as_uint8(ref.images)) <= 1


def test_sdxl_time_ids_order_changes_the_output(turbo_runner: DiffusionRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above can fail: the UNet reads the time ids, so a swapped order shows."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**turbo_runner.pipe.components)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        "a cat",
        num_inference_steps=1,
        guidance_scale=0.0,
        height=64,
        width=96,
        generator=torch.Generator().manual_seed(9),
        original_size=(96, 64),  # swapped: (width, height)
        target_size=(96, 64),
        output_type="np",
    )
    ours = turbo_runner.generate(BatchKey("txt2img", 96, 64, 1), [Sample("a cat", 9, 1, guidance_scale=0.0)])
    assert max_diff(ours, as_uint8(ref.images)) > 1


def _mixed_samples(steps: int) -> list[Sample]:
    return [
        Sample("a cat", 21, steps, guidance_scale=2.0),
        Sample("a dog", 22, steps, strength=0.6, image=noise_image(64, 64, 5)),
        Sample("the sea", 23, steps, guidance_scale=1.0),
        Sample("a cat", 24, steps, strength=0.8, image=noise_image(64, 64, 6)),
    ]


@pytest.mark.parametrize("static", [False, True])
def test_a_mixed_batch_equals_separate_text_and_image_runs(
    lcm_runner: DiffusionRunner, monkeypatch: pytest.MonkeyPatch, static: bool
) -> None:
    samples = _mixed_samples(2)
    text = lcm_runner.generate(BatchKey("txt2img", 64, 64, 2), [samples[0], samples[2]])
    image = lcm_runner.generate(BatchKey("img2img", 64, 64, 2), [samples[1], samples[3]])
    monkeypatch.setattr(lcm_runner.backend, "static_shapes", static)
    seen, handle = unet_batches(lcm_runner)
    try:
        mixed = lcm_runner.generate(BatchKey("mixed", 64, 64, 2), samples[:3] if static else samples)
    finally:
        handle.remove()
    assert seen == [4, 4]  # one UNet call per step (3 frames padded to the bucket of 4)
    separate = np.stack([text[0], image[0], text[1], image[1]])[: len(mixed)]
    assert max_diff(mixed, separate.astype(np.int32)) <= 1  # within 1/255


def test_a_mixed_batch_with_an_ancestral_sampler_equals_separate_runs(turbo_runner: DiffusionRunner) -> None:
    samples = [
        Sample("a cat", 31, 2, strength=1.0),
        Sample("a dog", 32, 4, strength=0.5, image=noise_image(64, 64, 7)),  # 4 steps x 0.5 = 2 UNet calls
    ]
    text = turbo_runner.generate(BatchKey("txt2img", 64, 64, 2), [samples[0]])
    image = turbo_runner.generate(BatchKey("img2img", 64, 64, 2), [samples[1]])
    mixed = turbo_runner.generate(BatchKey("mixed", 64, 64, 2), samples)
    assert max_diff(mixed, np.concatenate([text, image]).astype(np.int32)) <= 1


def test_a_mixed_batch_of_only_text_frames_draws_as_a_text_batch(lcm_runner: DiffusionRunner) -> None:
    samples = [Sample("a cat", 41, 1), Sample("a dog", 42, 1)]
    text = lcm_runner.generate(BatchKey("txt2img", 64, 64, 1), samples)
    mixed = lcm_runner.generate(BatchKey("mixed", 64, 64, 1), samples)
    assert np.array_equal(mixed, text)
