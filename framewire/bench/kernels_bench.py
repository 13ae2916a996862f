"""Each fused kernel against its torch reference (eager and torch.compile'd), as time and bandwidth.

    python -m framewire.bench.kernels_bench [--out results.json] [--quick] [--no-compile]

On CUDA: median kernel time (Triton's do_bench, which flushes L2 between runs), bytes each op
must move at the least, and the bandwidth that gives; the baseline is a device-to-device
copy measured in the same run. Goals (on an H100): preprocess and postprocess at >= 70 % of
the copy's bandwidth, group_norm_silu >= 1.5x faster than the eager GroupNorm + SiLU pair.

Without CUDA it runs every case once at toy sizes through Triton's interpreter, to show that
it runs; those timings mean nothing and are labelled so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined


from framewire.kernels import group_norm_silu as gns  # noqa: E402
from framewire.kernels import postprocess as post  # noqa: E402
from framewire.kernels import preprocess as pre  # noqa: E402
from framewire.kernels import runtime  # noqa: E402

GOAL_BANDWIDTH_SHARE = 0.70
GOAL_GNS_SPEEDUP = 1.5


def measure_ms(fn: Callable[[], Any], quick: bool) -> float:
    """Median milliseconds per call."""
    if CUDA:
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=10 if quick else 50, rep=30 if quick else 200, return_mode="median"))
    fn()  # first call pays one-time set-up
    times = []
    for _ in range(1 if quick else 5):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def compiled(fn: Callable[..., Any], enabled: bool) -> Callable[..., Any] | None:
    return torch.compile(fn, dynamic=False) if enabled else None


def copy_bandwidth_gbs(device: torch.device, quick: bool) -> float:
    """Device-to-device copy, bytes read plus written per second: the ceiling for memory-bound ops."""
    n = (1 << 22) if quick or not CUDA else (1 << 28)  # 256 MiB on the GPU
    src = torch.empty(n, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    ms = measure_ms(partial(dst.copy_, src), quick)
    return 2 * n / ms / 1e6


def row(name: str, variant: str, ms: float, nbytes: int, **extra: Any) -> dict[str, Any]:
    return {"case": name, "variant": variant, "ms": ms, "bytes": nbytes, "gbs": nbytes / ms / 1e6, **extra}


def bench_preprocess(device: torch.device, quick: bool, use_compile: bool) -> list[dict[str, Any]]:
    rows = []
    size = 32 if quick else 512
    batch = 2 if quick else 4
    for label, source in (("at size", size), ("resize 1.5x down", size * 3 // 2)):
        g = torch.Generator().manual_seed(0)
        images = [torch.randint(0, 256, (source, source, 3), generator=g, dtype=torch.uint8) for _ in range(batch)]
        on_device = [im.to(device) for im in images]
        out = torch.empty((batch, 3, size, size), dtype=torch.float16, device=device)
        nbytes = sum(im.numel() for im in images) + out.numel() * out.element_size()
        name = f"preprocess {batch}x{source}² → {size}² fp16 ({label})"
        rows.append(row(name, "kernel", measure_ms(partial(pre.preprocess, on_device, out), quick), nbytes))
        rows.append(
            row(name, "reference eager", measure_ms(partial(pre.preprocess_reference, on_device, out), quick), nbytes)
        )
        ref = compiled(pre.preprocess_reference, use_compile)
        if ref is not None:
            rows.append(row(name, "reference compiled", measure_ms(partial(ref, on_device, out), quick), nbytes))
        if CUDA:  # what the runner pays with decoded images still on the host: one pinned copy + the kernel
            rows.append(
                row(name, "kernel, images from host", measure_ms(partial(pre.preprocess, images, out), quick), nbytes)
            )
    return rows


def bench_postprocess(device: torch.device, quick: bool, use_compile: bool) -> list[dict[str, Any]]:
    size = 32 if quick else 512
    batch = 2 if quick else 4
    x = (torch.randn((batch, 3, size, size), device=device) * 0.7).to(torch.float16)
    out = torch.empty((batch, size, size, 3), dtype=torch.uint8, device=device)
    nbytes = x.numel() * x.element_size() + out.numel()
    name = f"postprocess {batch}x3x{size}² fp16 → uint8 HWC"
    rows = [
        row(name, "kernel", measure_ms(partial(post.postprocess, x, out), quick), nbytes),
        row(name, "reference eager", measure_ms(partial(post.postprocess_reference, x, out), quick), nbytes),
    ]
    ref = compiled(post.postprocess_reference, use_compile)
    if ref is not None:
        rows.append(row(name, "reference compiled", measure_ms(partial(ref, x, out), quick), nbytes))
    return rows


def eager_pair(x: torch.Tensor, groups: int, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """What the UNet and VAE run without the swap: two modules, two kernels on CUDA."""
    return F.silu(F.group_norm(x, groups, w, b, 1e-5))


GNS_SHAPES = [  # SD1.5 UNet at 512 px (latents 64²), its VAE decoder at 512 px
    ((2, 320, 64, 64), 32, "UNet down 0"),
    ((2, 1280, 16, 16), 32, "UNet mid"),
    ((1, 512, 64, 64), 32, "VAE decoder 64²"),
    ((1, 256, 256, 256), 32, "VAE decoder 256²"),
    ((1, 128, 512, 512), 32, "VAE decoder 512²"),
]


def bench_group_norm_silu(device: torch.device, quick: bool, use_compile: bool) -> list[dict[str, Any]]:
    rows = []
    shapes = [((1, 16, 8, 8), 4, "toy")] if quick else GNS_SHAPES
    pair = compiled(eager_pair, use_compile)
    for shape, groups, label in shapes:
        for layout in ("NCHW", "channels_last"):
            x = torch.randn(shape, device=device, dtype=torch.float16)
            if layout == "channels_last":
                x = x.to(memory_format=torch.channels_last)
            w = torch.randn(shape[1], device=device, dtype=torch.float16)
            b = torch.randn(shape[1], device=device, dtype=torch.float16)
            nbytes = 2 * x.numel() * x.element_size()  # the least any implementation moves: read x, write y
            name = f"group_norm_silu {label} {list(shape)} G{groups} fp16 {layout}"
            fused = measure_ms(partial(gns.group_norm_silu, x, groups, w, b), quick)
            eager = measure_ms(partial(eager_pair, x, groups, w, b), quick)
            rows.append(row(name, "kernel", fused, nbytes, speedup_vs_eager=eager / fused))
            rows.append(row(name, "eager GroupNorm + SiLU", eager, nbytes))
            if pair is not None:
                rows.append(
                    row(name, "compiled GroupNorm + SiLU", measure_ms(partial(pair, x, groups, w, b), quick), nbytes)
                )
    return rows


def environment(device: torch.device) -> dict[str, Any]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": torch.cuda.get_device_name(device) if CUDA else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "interpreter": os.environ.get("TRITON_INTERPRET") == "1",
    }


def goals(rows: list[dict[str, Any]], copy_gbs: float) -> list[str]:
    lines = []
    for r in rows:
        if r["variant"] != "kernel":
            continue
        if r["case"].startswith(("preprocess", "postprocess")):
            share = r["gbs"] / copy_gbs
            verdict = "met" if share >= GOAL_BANDWIDTH_SHARE else "missed"
            lines.append(f"{verdict}: {r['case']}: {share:.0%} of copy bandwidth (goal {GOAL_BANDWIDTH_SHARE:.0%})")
        else:
            speedup = r["speedup_vs_eager"]
            verdict = "met" if speedup >= GOAL_GNS_SPEEDUP else "missed"
            lines.append(f"{verdict}: {r['case']}: {speedup:.2f}x the eager pair (goal {GOAL_GNS_SPEEDUP}x)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="toy sizes and few repetitions (a smoke run)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd references")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if CUDA else "cpu")
    quick = args.quick or not CUDA
    use_compile = CUDA and not args.no_compile  # inductor on the CPU compiles C++ for minutes: pointless here
    runtime.configure(enabled=True)
    runtime.allow_cpu_interpreter(not CUDA)
    if device.type == "cuda" and runtime.triton_blocker(gns._apply_kernel, [torch.empty(0, device=device)]):
        print("the Triton kernels cannot run here; nothing to measure", file=sys.stderr)
        return 1

    copy_gbs = copy_bandwidth_gbs(device, quick)
    rows = bench_preprocess(device, quick, use_compile)
    rows += bench_postprocess(device, quick, use_compile)
    rows += bench_group_norm_silu(device, quick, use_compile)
    env = environment(device)

    print(f"# kernels on {env['device']}: torch {env['torch']}, triton {env['triton']}")
    if not CUDA:
        print("# no CUDA: Triton's interpreter at toy sizes; these timings show it runs and mean nothing else")
    print(f"copy baseline: {copy_gbs:,.0f} GB/s (read + write)")
    width = max(len(r["case"]) for r in rows)
    for r in rows:
        extra = f"  {r['speedup_vs_eager']:.2f}x eager" if "speedup_vs_eager" in r else ""
        print(f"{r['case']:<{width}}  {r['variant']:<26} {r['ms']:9.4f} ms {r['gbs']:9.1f} GB/s{extra}")
    verdicts = goals(rows, copy_gbs) if CUDA else []
    for line in verdicts:
        print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = {"environment": env, "copy_gbs": copy_gbs, "rows": rows, "goals": verdicts, "quick": quick}
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
