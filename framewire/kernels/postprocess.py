"""Decoded images → pixels for the JPEG encoder: clamp, scale, round and lay out in one kernel.

Contract (the kernel and :func:`postprocess_reference` alike):

- ``x``: float16/bfloat16/float32 ``[B, 3, H, W]`` in [-1, 1] (a VAE decoder's output), in
  any layout; values outside are clamped, NaN counts as 0 (mid-grey).
- ``out``: the caller's uint8 buffer ``[B, H, W, 3]`` on ``x``'s device, in any layout
  (contiguous is what an encoder wants). Every element is overwritten.
- Value: ``round(clamp(x/2 + 0.5, 0, 1) * 255)`` in float32, ties to even, exactly as
  diffusers' image processor computes it; kernel and reference agree bit for bit.
"""

from __future__ import annotations

import torch

from framewire.kernels import runtime

try:
    import triton
    import triton.language as tl
except ImportError:  # optional: CPU-only and non-Linux installs run the reference
    triton = None

OP = "framewire::postprocess"
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_BLOCK_PIXELS = 1024

if triton is not None:

    @triton.jit
    def _postprocess_kernel(
        x,
        out,
        height,
        width,
        sx_b,
        sx_c,
        sx_h,
        sx_w,
        so_b,
        so_h,
        so_w,
        so_c,
        BLOCK: tl.constexpr,
    ):
        image = tl.program_id(0).to(tl.int64)
        pixel = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK] row-major
        inside = pixel < height * width
        py = pixel // width
        px = pixel % width
        channel = tl.arange(0, 4)  # 3 channels, padded to a power of two
        mask = inside[:, None] & (channel[None, :] < 3)

        source = x + image * sx_b + channel[None, :] * sx_c + py[:, None] * sx_h + px[:, None] * sx_w
        value = tl.load(source, mask=mask, other=0.0).to(tl.float32)
        value = tl.where(value == value, value, 0.0)  # NaN → 0, before the clamp decides anything
        unit = tl.minimum(tl.maximum(value * 0.5 + 0.5, 0.0), 1.0)
        scaled = unit * 255.0
        # Round half to even, as torch.round and numpy do; floor() alone would round ties up.
        rounded = tl.floor(scaled + 0.5)
        tie = (rounded - scaled) == 0.5
        odd = (rounded - 2.0 * tl.floor(rounded * 0.5)) == 1.0
        rounded = tl.where(tie & odd, rounded - 1.0, rounded)

        target = out + image * so_b + py[:, None] * so_h + px[:, None] * so_w + channel[None, :] * so_c
        tl.store(target, rounded.to(tl.uint8), mask=mask)

else:
    _postprocess_kernel = None


def validate(x: torch.Tensor, out: torch.Tensor) -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument that breaks the contract."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a tensor, got {type(x).__name__}")
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out: expected a tensor, got {type(out).__name__}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"x: expected shape [B, 3, H, W], got {list(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected floating-point values in [-1, 1], got {x.dtype}")
    if out.dtype != torch.uint8:
        raise TypeError(f"out: expected a uint8 buffer, got {out.dtype}")
    batch, _, height, width = x.shape
    if list(out.shape) != [batch, height, width, 3]:
        raise ValueError(
            f"out: expected shape {[batch, height, width, 3]} for x of {list(x.shape)}, got {list(out.shape)}"
        )
    if out.device != x.device:
        raise ValueError(f"out: expected a buffer on {x.device} (x's device), got {out.device}")


def postprocess_reference(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Plain torch: the definition the kernel is tested against."""
    validate(x, out)
    unit = (torch.nan_to_num(x.to(torch.float32), nan=0.0) / 2 + 0.5).clamp(0, 1)
    out.copy_((unit * 255).round().to(torch.uint8).permute(0, 2, 3, 1))
    return out


def _postprocess_triton(x: torch.Tensor, out: torch.Tensor) -> None:
    batch, _, height, width = x.shape
    if batch == 0 or height * width == 0:
        return
    grid = (batch, triton.cdiv(height * width, _BLOCK_PIXELS))
    _postprocess_kernel[grid](
        x,
        out,
        height,
        width,
        *x.stride(),
        *out.stride(),
        BLOCK=_BLOCK_PIXELS,
        num_warps=4,
        enable_fp_fusion=False,  # x*255 then +0.5 must round twice, as the reference does
    )


@torch.library.custom_op(OP, mutates_args=("out",))
def _postprocess_op(x: torch.Tensor, out: torch.Tensor) -> None:
    validate(x, out)
    reason = runtime.triton_blocker(_postprocess_kernel, [x, out])
    if reason is None and x.dtype not in DTYPES:
        reason = "x dtype is not float16, bfloat16 or float32"
    if reason is not None:
        runtime.report_fallback(OP, reason)
        postprocess_reference(x, out)
        return
    _postprocess_triton(x, out)


@_postprocess_op.register_fake
def _(x: torch.Tensor, out: torch.Tensor) -> None:
    validate(x, out)


def unavailable(device: torch.device) -> str | None:
    """Why the kernel cannot run on ``device`` (switched off, no Triton, not CUDA), or None when it can.

    For callers that decide once, at load, between the op and :func:`postprocess_reference`
    inlined into a graph that a compiler then fuses (what the op would run anyway)."""
    return runtime.triton_blocker(_postprocess_kernel, [torch.empty(0, device=device)])


def postprocess(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Write ``x`` (float NCHW in [-1, 1]) into ``out`` (uint8 NHWC); returns ``out``.

    See the module docstring for the contract. Runs the Triton kernel on CUDA when the
    kernels are on, else the torch reference (logged once).
    """
    torch.ops.framewire.postprocess(x, out)
    return out
