"""GPU timing of one diffusion app configuration (run by ``benchmarks/gpu_check.sh``).

    python -m framewire.bench.gpu_bench --family sd15 --weights DIR --mode img2img --steps 4 \\
        --size 512 --batches 1,4,8 --backend compile --tiny-vae --out OUT.json

Times ``DiffusionRunner.generate`` per batch (it ends with the batch's one host sync, so
wall time is device time plus launch overhead), warm-up excluded, median/p90 of
``--repeat`` calls. With ``--baseline`` it also times the diffusers pipeline ``__call__``
on the same components, and with ``--check`` it compares the outputs with eager ones.
Prints one line per batch and rewrites ``--out`` after each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("sd15", "sdxl"), required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--mode", choices=("txt2img", "img2img"), default="img2img")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--backend", choices=("eager", "compile", "tensorrt"), default="eager")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--tiny-vae", action="store_true")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--baseline", action="store_true", help="also time the diffusers pipeline __call__")
    parser.add_argument("--check", action="store_true", help="compare with an eager runner's output")
    parser.add_argument("--cache-dir", default="/tmp/framewire-cache")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import numpy as np
    import torch

    from framewire.engine.config import Backend, DiffusionConfig
    from framewire.engine.runner import BatchKey, DiffusionRunner, Sample
    from framewire.kernels import runtime

    batches = [int(b) for b in args.batches.split(",")]
    config = DiffusionConfig(
        weights=args.weights,
        device="cuda",
        backend=Backend(args.backend),
        dtype=args.dtype,
        tiny_vae=args.tiny_vae,
        cache_dir=Path(args.cache_dir),
        batch_buckets=tuple(batches),
    )
    app = "lcm" if args.family == "sd15" else "sdxl-turbo"
    scheduler = "LCMScheduler" if args.family == "sd15" else None
    t0 = time.perf_counter()
    runner = DiffusionRunner(args.family, config, app=app, scheduler=scheduler)
    load_s = time.perf_counter() - t0
    img2img = args.mode == "img2img"
    steps = runner.sampler.steps_for(args.steps, args.strength, img2img)
    key = BatchKey(args.mode, args.size, args.size, steps)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(max(batches))]

    def samples(n: int) -> list[Sample]:
        return [
            Sample(
                f"a photo of a cat, {i}",
                i,
                args.steps,
                strength=args.strength if img2img else 1.0,
                image=images[i] if img2img else None,
            )
            for i in range(n)
        ]

    t0 = time.perf_counter()
    for n in batches:  # compiles / captures each bucket
        runner.generate(key, samples(n))
        runner.generate(key, samples(n))
    warm_s = time.perf_counter() - t0
    props = torch.cuda.get_device_properties(0)
    result: dict[str, Any] = {
        "gpu": props.name,
        "torch": torch.__version__,
        "family": args.family,
        "mode": args.mode,
        "steps_requested": args.steps,
        "unet_steps": steps,
        "size": args.size,
        "backend": args.backend,
        "dtype": args.dtype,
        "tiny_vae": args.tiny_vae,
        "kernels": runtime.enabled(),  # FRAMEWIRE_KERNELS: the fused Triton kernels on the frame path
        "fused_norms": runner.fused_norms,
        "load_s": round(load_s, 1),
        "warm_s": round(warm_s, 1),
        "rows": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    pipe = None
    if args.baseline:
        pipe = _pipeline(runner, args.family, img2img)

    for n in batches:
        batch = samples(n)
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            runner.generate(key, batch)
            times.append((time.perf_counter() - started) * 1000.0)
        row: dict[str, Any] = {
            "batch": n,
            "call_ms_p50": statistics.median(times),
            "call_ms_p90": sorted(times)[int(0.9 * (len(times) - 1))],
            "frame_ms_p50": statistics.median(times) / n,
        }
        if pipe is not None:
            base = _time_pipeline(pipe, batch, args, img2img, repeat=max(5, args.repeat // 2))
            row["diffusers_frame_ms_p50"] = base / n
            row["ratio"] = row["frame_ms_p50"] / row["diffusers_frame_ms_p50"]
        result["rows"].append(row)
        out.write_text(json.dumps(result, indent=1))
        extra = f"  diffusers {row['diffusers_frame_ms_p50']:.2f} ms/frame (x{row['ratio']:.2f})" if pipe else ""
        label = f"{args.family} {args.mode} {args.size}px {steps} step(s) {args.backend}"
        label += " +tiny-vae" if args.tiny_vae else ""
        calls = f"call p50 {row['call_ms_p50']:.1f}, p90 {row['call_ms_p90']:.1f}"
        print(f"{label} b{n}: {row['frame_ms_p50']:.2f} ms/frame ({calls}){extra}", flush=True)

    if args.check and args.backend != "eager":
        eager = DiffusionRunner(args.family, replace(config, backend=Backend.EAGER), app=app, scheduler=scheduler)
        batch = samples(min(batches[-1], 4))
        diff = np.abs(runner.generate(key, batch).astype(np.int32) - eager.generate(key, batch)).max()
        result["max_abs_diff_vs_eager"] = int(diff)
        out.write_text(json.dumps(result, indent=1))
        print(f"check: max |{args.backend} - eager| = {diff} / 255", flush=True)
    return 0


def _pipeline(runner: Any, family: str, img2img: bool) -> Any:
    import diffusers

    if family == "sd15":
        name = "LatentConsistencyModelImg2ImgPipeline" if img2img else "LatentConsistencyModelPipeline"
    else:
        name = "StableDiffusionXLImg2ImgPipeline" if img2img else "StableDiffusionXLPipeline"
    # The runner's text encoders, tokenizers and scheduler, but the UNet and VAE as diffusers
    # loads them: the runner's may hold the fused GroupNorm+SiLU, which is not diffusers' own code.
    components = dict(runner.pipe.components)
    components["unet"] = _plain(runner.unet, diffusers.UNet2DConditionModel, "unet", runner)
    components["vae"] = _plain(runner.vae, type(runner.vae), "vae", runner)
    pipe = getattr(diffusers, name)(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _plain(module: Any, cls: Any, subfolder: str, runner: Any) -> Any:
    """``module`` itself if the kernels swapped nothing into it, else a fresh copy from the weights."""
    import torch

    from framewire.kernels.group_norm_silu import GroupNormSiLU

    if not any(isinstance(m, GroupNormSiLU) for m in module.modules()):
        return module
    folder = runner.folder / "tiny_vae" if subfolder == "vae" and runner.config.tiny_vae else runner.folder / subfolder
    fresh = cls.from_pretrained(folder, dtype=module.dtype).to(runner.device).eval().requires_grad_(False)
    return fresh.to(memory_format=torch.channels_last)  # as the runner lays out its own (CUDA)


def _time_pipeline(pipe: Any, batch: list[Any], args: argparse.Namespace, img2img: bool, repeat: int) -> float:
    import torch
    from PIL import Image

    prompts = [s.prompt for s in batch]
    kwargs: dict[str, Any] = {"num_inference_steps": args.steps, "output_type": "pil"}
    kwargs["guidance_scale"] = 1.0 if args.family == "sd15" else 0.0
    if img2img:
        kwargs.update(image=[Image.fromarray(s.image) for s in batch], strength=args.strength)
    else:
        kwargs.update(height=args.size, width=args.size)
    times = []
    for i in range(repeat + 2):
        gens = [torch.Generator("cuda").manual_seed(s.seed) for s in batch]
        torch.cuda.synchronize()
        started = time.perf_counter()
        pipe(prompts, generator=gens, **kwargs)
        torch.cuda.synchronize()
        if i >= 2:
            times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


if __name__ == "__main__":
    raise SystemExit(main())
