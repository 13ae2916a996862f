"""Every launch the ops make compiles for Hopper (sm_90), here, without a GPU.

The interpreter checks what the kernels compute; this checks that the compiler accepts
them with the argument types and specialisations (ints equal to 1 become constants) that
real launches produce. The launches are captured from the ops themselves, not written out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from framewire.kernels import group_norm_silu as gns, postprocess as post, preprocess as pre

POINTER = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.uint8: "*u8",
           torch.int64: "*i64"}
OPTIONS = ("num_warps", "num_stages", "enable_fp_fusion")
launches = {}


def capture(kernel):
    def run(*args, grid, warmup, **kwargs):
        options = {k: kwargs.pop(k) for k in OPTIONS if k in kwargs}
        values = dict(zip([p.name for p in kernel.params], args)) | kwargs
        signature, constants = {}, {}
        for param in kernel.params:
            value = values[param.name]
            if param.is_constexpr or value is None or (
                isinstance(value, int) and value == 1 and not param.do_not_specialize
            ):
                signature[param.name], constants[param.name] = "constexpr", value
            elif isinstance(value, torch.Tensor):
                signature[param.name] = POINTER[value.dtype]
            elif isinstance(value, float):
                signature[param.name] = "fp32"
            else:
                signature[param.name] = "i32" if -2**31 <= value < 2**31 else "i64"
        key = (kernel.fn.__name__, tuple(signature.items()), tuple(constants.items()), tuple(options.items()))
        launches[key] = (kernel, signature, constants, options)
    kernel.run = run


for kernel in (pre._preprocess_kernel, post._postprocess_kernel, gns._stats_kernel, gns._finalize_kernel,
               gns._apply_kernel):
    capture(kernel)

images = [torch.zeros(5, 7, 3, dtype=torch.uint8), torch.zeros(9, 4, 1, dtype=torch.uint8)]
for dtype in (torch.float16, torch.bfloat16, torch.float32):
    for fmt in (torch.contiguous_format, torch.channels_last):
        pre._preprocess_triton(images, torch.empty(2, 3, 8, 6, dtype=dtype).to(memory_format=fmt))
        pre._preprocess_triton(images, torch.empty(2, 3, 1, 6, dtype=dtype).to(memory_format=fmt))
        pre._preprocess_triton(images[:1] * 2, torch.empty(2, 3, 8, 6, dtype=dtype).to(memory_format=fmt))
        pre._preprocess_triton(images[:1] * 2, torch.empty(2, 3, 5, 7, dtype=dtype).to(memory_format=fmt))
        x = torch.empty(2, 3, 8, 6, dtype=dtype).to(memory_format=fmt)
        post._postprocess_triton(x, torch.empty(2, 8, 6, 3, dtype=torch.uint8))
        post._postprocess_triton(x[:, :, :1], torch.empty(2, 1, 6, 3, dtype=torch.uint8))
        x = torch.empty(2, 64, 16, 16, dtype=dtype).to(memory_format=fmt)
        gns._group_norm_silu_triton(x, 32, torch.empty(64, dtype=dtype), torch.empty(64, dtype=dtype), 1e-5)
# 1 to 640 channels a group; one pixel (sizes specialised to 1)
for shape, groups in (((1, 32, 64, 64), 32), ((1, 640, 8, 8), 32), ((1, 640, 8, 8), 1), ((2, 8, 1, 1), 2)):
    for fmt in (torch.contiguous_format, torch.channels_last):
        gns._group_norm_silu_triton(torch.empty(shape).to(memory_format=fmt), groups, None, None, 1e-6)

target = GPUTarget("cuda", 90, 32)
for kernel, signature, constants, options in launches.values():
    try:
        triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constants), target=target, options=options)
    except Exception as exc:
        raise SystemExit(f"{kernel.fn.__name__} {signature} {constants} {options}: {exc}")
print(len(launches))
"""


@pytest.mark.slow
def test_every_launch_compiles_for_sm90(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    env = os.environ | {"TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path)}  # cold, and nothing left behind
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert int(done.stdout.split()[-1]) >= 20, "fewer kernel variants were captured than the script launches"
