"""GPU timing of one diffusion configuration on random weights built in memory (``benchmarks/gpu_check.sh``).

    python -m framewire.bench.gpu_bench --arch sd15 --mode img2img --steps 4 --size 512 \\
        --batches 1,8 --backend compile --tiny-vae --baseline --check --out OUT.json

The models are built from the real SD1.5 (LCM) or SDXL configs straight on the device
(``--arch tiny`` / ``tiny-sdxl``: the test models, for a dry run on the CPU): nothing is
written to disk or read back. Per batch size, in order: warm-up (for ``compile``, the graph
capture), ``--repeat`` timed calls of ``DiffusionRunner.generate`` (it ends with the batch's
one host sync, so wall time is device time plus launch overhead), with ``--baseline`` the
diffusers pipeline ``__call__`` on an identical, untouched copy of the models; then the JSON
is rewritten and one line printed, so a phase stopped at its time limit keeps every batch
size it measured. ``--check`` compares the outputs with an eager runner's at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=("sd15", "sdxl", "tiny", "tiny-sdxl"), required=True)
    parser.add_argument("--mode", choices=("txt2img", "img2img"), default="img2img")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--backend", choices=("eager", "compile", "tensorrt"), default="eager")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--compiler", default="inductor", help="torch.compile's backend (aot_eager for a dry run)")
    parser.add_argument("--tiny-vae", action="store_true")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--baseline", action="store_true", help="also time the diffusers pipeline __call__")
    parser.add_argument("--check", action="store_true", help="compare with an eager runner's output")
    parser.add_argument("--cache-dir", default="/tmp/framewire-cache")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from framewire.engine.config import Backend, DiffusionConfig
    from framewire.engine.runner import BatchKey, DiffusionRunner, Sample
    from framewire.engine.weights import build_pipeline
    from framewire.kernels import runtime

    family = "sdxl" if "sdxl" in args.arch else "sd15"
    batches = [int(b) for b in args.batches.split(",")]
    config = DiffusionConfig(
        weights="random",  # unused: the pipeline is handed over built
        device=args.device,
        backend=Backend(args.backend),
        dtype=args.dtype,
        cache_dir=Path(args.cache_dir),
        batch_buckets=tuple(batches),
        compiler=args.compiler,
    )
    app = "lcm" if family == "sd15" else "sdxl-turbo"
    memory_key = f"{args.arch}-seed0-{args.dtype}-{'taesd' if args.tiny_vae else 'kl'}"

    def built() -> Any:
        pipe, taesd = build_pipeline(args.arch, dtype=args.dtype, device=args.device, tiny_vae=args.tiny_vae)
        if taesd is not None:
            pipe.vae = taesd
        return pipe

    t0 = time.perf_counter()
    runner = DiffusionRunner(family, config, app=app, pipeline=built(), memory_key=memory_key)
    load_s = time.perf_counter() - t0
    device = runner.device
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
                guidance_scale=1.0 if family == "sd15" else 0.0,
                image=images[i] if img2img else None,
            )
            for i in range(n)
        ]

    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "arch": args.arch,
        "mode": args.mode,
        "steps_requested": args.steps,
        "unet_steps": steps,
        "size": args.size,
        "backend": args.backend,
        "dtype": args.dtype,
        "tiny_vae": args.tiny_vae,
        "kernels": runtime.enabled(),  # FRAMEWIRE_KERNELS: the fused Triton kernels on the frame path
        "fused_norms": runner.fused_norms,
        "build_and_load_s": round(load_s, 1),
        "rows": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pipe = _pipeline(built(), family, img2img) if args.baseline else None  # untouched diffusers modules
    label = f"{args.arch} {args.mode} {args.size}px {steps} step(s) {args.backend}" + (
        " +tiny-vae" if args.tiny_vae else ""
    )

    for n in batches:
        batch = samples(n)
        t0 = time.perf_counter()
        runner.generate(key, batch)  # compiles / captures this bucket
        runner.generate(key, batch)
        warm_s = time.perf_counter() - t0
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            runner.generate(key, batch)
            times.append((time.perf_counter() - started) * 1000.0)
        row: dict[str, Any] = {
            "batch": n,
            "warm_s": round(warm_s, 1),
            "call_ms_p50": statistics.median(times),
            "call_ms_p90": sorted(times)[max(0, math.ceil(0.9 * len(times)) - 1)],
            "frame_ms_p50": statistics.median(times) / n,
            "frames_per_s": 1000.0 * n / statistics.median(times),
        }
        if pipe is not None:
            base = _time_pipeline(pipe, batch, args, img2img, device, repeat=max(3, args.repeat // 2))
            row["diffusers_frame_ms_p50"] = base / n
            row["ratio"] = row["frame_ms_p50"] / row["diffusers_frame_ms_p50"]
        result["rows"].append(row)
        _write(out, result)
        extra = f"  diffusers {row['diffusers_frame_ms_p50']:.2f} ms/frame (x{row['ratio']:.2f})" if pipe else ""
        calls = f"call p50 {row['call_ms_p50']:.1f}, p90 {row['call_ms_p90']:.1f}; {row['frames_per_s']:.0f} frames/s"
        print(f"{label} b{n}: {row['frame_ms_p50']:.2f} ms/frame ({calls}){extra}", flush=True)

    if args.check and args.backend != "eager":
        del pipe  # its copy of the models is the eager runner's now
        eager = DiffusionRunner(
            family,
            dataclasses.replace(config, backend=Backend.EAGER),
            app=app,
            pipeline=built(),
            memory_key=memory_key,
        )
        batch = samples(min(batches[-1], 4))
        diff = np.abs(runner.generate(key, batch).astype(np.int32) - eager.generate(key, batch)).max()
        result["max_abs_diff_vs_eager"] = int(diff)
        _write(out, result)
        print(f"check: max |{args.backend} - eager| = {diff} / 255", flush=True)
    return 0


def _write(path: Path, result: dict[str, Any]) -> None:
    """Replace ``path`` whole (a phase killed at its time limit never leaves half a file)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)


def _pipeline(pipe: Any, family: str, img2img: bool) -> Any:
    """The diffusers pipeline class for the mode, over ``pipe``'s own (untouched) components."""
    import diffusers

    if family == "sd15":
        name = "LatentConsistencyModelImg2ImgPipeline" if img2img else "LatentConsistencyModelPipeline"
    else:
        name = "StableDiffusionXLImg2ImgPipeline" if img2img else "StableDiffusionXLPipeline"
    made = getattr(diffusers, name)(**pipe.components)
    made.set_progress_bar_config(disable=True)
    return made


def _time_pipeline(
    pipe: Any, batch: list[Any], args: argparse.Namespace, img2img: bool, device: Any, repeat: int
) -> float:
    import torch
    from PIL import Image

    prompts = [s.prompt for s in batch]
    kwargs: dict[str, Any] = {"num_inference_steps": args.steps, "output_type": "pil"}
    kwargs["guidance_scale"] = 1.0 if "sdxl" not in args.arch else 0.0
    if img2img:
        kwargs.update(image=[Image.fromarray(s.image) for s in batch], strength=args.strength)
    else:
        kwargs.update(height=args.size, width=args.size)
    times = []
    for i in range(repeat + 2):
        gens = [torch.Generator(device).manual_seed(s.seed) for s in batch]
        _sync(device)
        started = time.perf_counter()
        pipe(prompts, generator=gens, **kwargs)
        _sync(device)
        if i >= 2:
            times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


if __name__ == "__main__":
    raise SystemExit(main())
