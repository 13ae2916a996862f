"""Engine benchmark: FrameWire's batched runner vs the plain diffusers pipeline ``__call__``.

Same weights, same inputs, one process: per-frame time at batch 1/4/8 for the tiny
random LCM model (SD1.5 layout) at 64x64 (overhead-dominated) and 256x256, text-to-image
and image-to-image, eager and compiled. Prints a Markdown table and writes JSON.

    python -m framewire.bench.engine_bench                      # eager + compiled
    python -m framewire.bench.engine_bench --backends eager     # minutes less

FrameWire's time is ``DiffusionRunner.generate`` (uint8 images out); the pipeline's is
``__call__(output_type="pil")`` with one generator per frame, so both do the same work
(prompt encoding is cached by FrameWire, re-run by the pipeline: that is the point).
The "app" column adds FrameWire's input decode and JPEG encode (``LcmApp.generate``).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def machine() -> dict[str, Any]:
    import diffusers
    import torch
    import transformers

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def timed(fns: list[Any], *, warmup: int, repeat: int) -> list[list[float]]:
    """Call times in ms of each function, interleaved so that they share the machine's noise."""
    for fn in fns:  # at least ``warmup`` calls and 2 s: a new shape's first calls are slow on CPU
        deadline = time.perf_counter() + 2.0
        calls = 0
        while calls < warmup or time.perf_counter() < deadline:
            fn()
            calls += 1
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, out in zip(fns, times, strict=True):
            started = time.perf_counter()
            fn()
            out.append((time.perf_counter() - started) * 1000.0)
    return times


def _write(path: str, info: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    """Rewrite the JSON after every row, so an interrupted run keeps what it measured."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "command": " ".join(sys.argv), "rows": rows}, indent=1))
    return out


def bench_backend(
    backend: str, args: argparse.Namespace, folder: Path, tmp: Path, info: dict[str, Any], rows: list[dict[str, Any]]
) -> None:
    """Time every (size, mode, batch) on one backend; append rows (and rewrite the JSON)."""

    import numpy as np
    import torch
    from diffusers import LatentConsistencyModelImg2ImgPipeline, LatentConsistencyModelPipeline
    from PIL import Image

    from framewire.engine.api import NO_PROGRESS
    from framewire.engine.apps.lcm import LcmApp, LcmInput
    from framewire.engine.config import Backend, DiffusionConfig
    from framewire.engine.runner import BatchKey, DiffusionRunner, Sample

    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    modes = args.modes.split(",")
    config = DiffusionConfig(
        weights=str(folder), device="cpu", backend=Backend(backend), cache_dir=tmp, batch_buckets=tuple(batches)
    )
    runner = DiffusionRunner("sd15", config, app="lcm", scheduler="LCMScheduler")
    app = LcmApp(config)
    app.runner, app._pool = runner, ThreadPoolExecutor(2)
    pipe = LatentConsistencyModelPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    i2i = LatentConsistencyModelImg2ImgPipeline(**pipe.components)
    i2i.set_progress_bar_config(disable=True)
    # The pipelines as users run them (eager): the goal's baseline, timed in every pass.
    plain = LatentConsistencyModelPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)
    plain_i2i = LatentConsistencyModelImg2ImgPipeline(**plain.components)
    plain_i2i.set_progress_bar_config(disable=True)
    if backend == "compile":  # the same compiler settings for the pipeline's modules
        import torch._dynamo.config as dynamo_config

        # One graph per (size, batch) for the pipeline's modules: past dynamo's default of 8
        # recompiles it would stop (or run eager), which is not what is being measured.
        dynamo_config.recompile_limit = dynamo_config.accumulated_recompile_limit = 256
        pipe.unet = torch.compile(pipe.unet, fullgraph=True, dynamic=False)
        pipe.vae.decoder = torch.compile(pipe.vae.decoder, fullgraph=True, dynamic=False)
        pipe.vae.encoder = torch.compile(pipe.vae.encoder, fullgraph=True, dynamic=False)
        i2i.unet, i2i.vae = pipe.unet, pipe.vae
    for size in sizes:
        for mode in modes:
            for batch in batches:
                rng = np.random.default_rng(batch)
                prompts = [f"a photo of a cat {i}" for i in range(batch)]
                seeds = list(range(batch))
                images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(batch)]
                strength = 0.5 if mode == "img2img" else 1.0
                samples = [
                    Sample(p, s, args.steps, strength=strength, image=im if mode == "img2img" else None)
                    for p, s, im in zip(prompts, seeds, images, strict=True)
                ]
                key = BatchKey(mode, size, size, args.steps)
                jpegs = []
                for im in images:
                    buffer = io.BytesIO()
                    Image.fromarray(im).save(buffer, format="JPEG", quality=90)
                    jpegs.append(buffer.getvalue())
                inputs = [
                    LcmInput(
                        prompt=p,
                        seed=s,
                        num_inference_steps=args.steps,
                        image_size={"width": size, "height": size},
                        **({"image_url": j, "strength": strength} if mode == "img2img" else {}),
                    )
                    for p, s, j in zip(prompts, seeds, jpegs, strict=True)
                ]
                pil = [Image.fromarray(im) for im in images]

                def ours(samples: list[Sample] = samples, key: BatchKey = key) -> None:
                    runner.generate(key, samples)

                latent = torch.randn(batch, 4, size // 8, size // 8)
                hidden = torch.randn(batch, 77, runner.unet.config.cross_attention_dim)
                w_emb = torch.randn(batch, runner.unet.config.time_cond_proj_dim)
                pixels = torch.rand(batch, 3, size, size) * 2 - 1

                def floor(
                    mode: str = mode,
                    latent: Any = latent,
                    hidden: Any = hidden,
                    w_emb: Any = w_emb,
                    pixels: Any = pixels,
                ) -> None:
                    """The models alone: K UNet calls, the VAE (encode for img2img, decode), nothing else."""
                    with torch.inference_mode():
                        if mode == "img2img":
                            runner.backend.encode(pixels)
                        t = torch.full((latent.shape[0],), 499.0)
                        for _ in range(args.steps):
                            runner.unet(latent, t, encoder_hidden_states=hidden, timestep_cond=w_emb)
                        runner.backend.decode(latent)

                def whole_app(inputs: list[LcmInput] = inputs) -> None:
                    app.generate(inputs, NO_PROGRESS)  # type: ignore[arg-type]

                def theirs(
                    mode: str = mode,
                    size: int = size,
                    prompts: list[str] = prompts,
                    seeds: list[int] = seeds,
                    pil: list[Any] = pil,
                    t2i: Any = pipe,
                    i2i: Any = i2i,
                ) -> None:
                    gens = [torch.Generator().manual_seed(s) for s in seeds]
                    common = {
                        "num_inference_steps": args.steps,
                        "guidance_scale": 1.0,
                        "generator": gens,
                        "output_type": "pil",
                    }
                    if mode == "img2img":
                        i2i(prompts, image=pil, strength=0.5, **common)
                    else:
                        t2i(prompts, height=size, width=size, **common)

                fns: list[Callable[..., None]] = [ours, whole_app, theirs, floor]
                if backend != "eager":  # the eager pipeline too, interleaved with the rest
                    fns.append(functools.partial(theirs, t2i=plain, i2i=plain_i2i))

                warm = 2 if backend == "eager" else 3
                repeat = args.repeat if size <= 128 else max(5, args.repeat // 2)
                t_ours, t_app, t_theirs, t_floor, *t_eager = timed(fns, warmup=warm, repeat=repeat)
                row = {
                    "backend": backend,
                    "size": size,
                    "mode": mode,
                    "batch": batch,
                    "steps": args.steps,
                    "framewire_ms_per_frame": statistics.median(t_ours) / batch,
                    "app_ms_per_frame": statistics.median(t_app) / batch,
                    "diffusers_ms_per_frame": statistics.median(t_theirs) / batch,
                    "models_only_ms_per_frame": statistics.median(t_floor) / batch,
                    "framewire_min_ms_per_frame": min(t_ours) / batch,
                    "diffusers_min_ms_per_frame": min(t_theirs) / batch,
                    "framewire_call_ms": t_ours,
                    "app_call_ms": t_app,
                    "diffusers_call_ms": t_theirs,
                }
                row["ratio"] = row["framewire_ms_per_frame"] / row["diffusers_ms_per_frame"]
                row["ratio_of_minima"] = row["framewire_min_ms_per_frame"] / row["diffusers_min_ms_per_frame"]
                if t_eager:
                    eager_ms = row["diffusers_eager_ms_per_frame"] = statistics.median(t_eager[0]) / batch
                    row["ratio_vs_eager_diffusers"] = row["framewire_ms_per_frame"] / eager_ms
                    row["diffusers_eager_call_ms"] = t_eager[0]
                rows.append(row)
                _write(args.out, info, rows)
                print(
                    f"{backend:8s} {size:4d}px {mode:8s} b{batch}: framewire {row['framewire_ms_per_frame']:7.2f} "
                    f"app {row['app_ms_per_frame']:7.2f} diffusers {row['diffusers_ms_per_frame']:7.2f} "
                    f"models only {row['models_only_ms_per_frame']:7.2f} ms/frame "
                    f"ratio {row['ratio']:.2f} (of minima {row['ratio_of_minima']:.2f})"
                    + (
                        f"; eager diffusers {row['diffusers_eager_ms_per_frame']:7.2f}, "
                        f"ratio {row['ratio_vs_eager_diffusers']:.2f}"
                        if t_eager
                        else ""
                    ),
                    flush=True,
                )
    runner.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,256", help="square image sizes, comma separated")
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--modes", default="txt2img,img2img")
    parser.add_argument("--backends", default="eager,compile")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "engine_bench.json"))
    args = parser.parse_args()

    from framewire.engine.weights import init_weights

    tmp = Path(tempfile.mkdtemp(prefix="framewire-bench-"))
    folder = init_weights("tiny", tmp / "tiny")
    info = machine()
    print(json.dumps(info), flush=True)
    rows: list[dict[str, Any]] = []

    for backend in args.backends.split(","):
        bench_backend(backend, args, folder, tmp, info, rows)

    out = _write(args.out, info, rows)
    print()
    print(
        "| backend | px | mode | batch | FrameWire ms/frame (p50) | app: + decode, JPEG (p50) | "
        "diffusers ms/frame (p50), same backend | models only (p50) | ratio p50 | ratio of minima | "
        "eager diffusers ms/frame (p50) | ratio vs eager diffusers |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        eager = r.get("diffusers_eager_ms_per_frame", r["diffusers_ms_per_frame"])
        print(
            f"| {r['backend']} | {r['size']} | {r['mode']} | {r['batch']} | {r['framewire_ms_per_frame']:.2f} | "
            f"{r['app_ms_per_frame']:.2f} | {r['diffusers_ms_per_frame']:.2f} | {r['models_only_ms_per_frame']:.2f} | "
            f"{r['ratio']:.2f} | {r['ratio_of_minima']:.2f} | {eager:.2f} | {r['framewire_ms_per_frame'] / eager:.2f} |"
        )
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
