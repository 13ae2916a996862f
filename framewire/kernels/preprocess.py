"""Decoded images → the model's input: resize, normalise and lay out a batch in one kernel.

Contract (the kernel and :func:`preprocess_reference` alike):

- ``images``: ``n >= 1`` uint8 tensors ``[H_i, W_i, C_i]`` (rows, columns, channels, as an
  image decoder returns them), ``C_i`` in 1 (grey, replicated), 3 (RGB) or 4 (RGBA, alpha
  dropped). Sizes may differ within a batch; any device, any strides.
- ``out``: the caller's float16/bfloat16/float32 buffer ``[B, 3, H, W]`` with ``B >= n``,
  in any layout (contiguous and channels_last are the fast ones). Rows ``out[:n]`` are
  overwritten; rows ``out[n:]`` (padding up to a batch bucket) are left as they were.
- Resize: bilinear with half-pixel centres and no antialiasing, the same sampling as
  ``F.interpolate(mode="bilinear", align_corners=False)``; an image already ``H x W`` is
  copied exactly. Downscaling by more than 2x aliases; resize such inputs beforehand.
- Value: ``v * (2/255) - 1`` in float32 (so 0 → -1, 255 → 1), rounded once to ``out``'s dtype.

On CUDA, images still on the host travel in one host→device copy (a pinned staging buffer
with every image's bytes, after a small per-image table when sizes differ), then one kernel
launch writes ``out``; no host synchronisation. Inside a CUDA graph capture that copy would
replay stale host memory, so there the op refuses host images and mixed sizes: call it
before the replay (``out`` is the graph's static input) or pass device images of one size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from framewire.kernels import runtime

try:
    import triton
    import triton.language as tl
except ImportError:  # optional: CPU-only and non-Linux installs run the reference
    triton = None

OP = "framewire::preprocess"
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SCALE = 2.0 / 255.0
_META_FIELDS = 4  # per image: byte offset of its pixels in the staging buffer, height, width, channels
_BLOCK_PIXELS = 1024

if triton is not None:
    # Sizes are never specialised to constants: the kernel converts them to float.
    @triton.jit(do_not_specialize=["out_h", "out_w", "same_h", "same_w", "same_c"])
    def _preprocess_kernel(
        src,  # uint8: every image's HWC bytes (after the per-image table, when sizes differ)
        meta,  # int64 view of the table, [n, 4] = (byte offset, height, width, channels); unread if SAME_SIZE
        out,
        out_h,
        out_w,
        stride_b,
        stride_c,
        stride_h,
        stride_w,
        same_h,  # the one image size when SAME_SIZE
        same_w,
        same_c,
        SAME_SIZE: tl.constexpr,
        RESIZE: tl.constexpr,  # False only when every image is already out_h x out_w
        BLOCK: tl.constexpr,
    ):
        image = tl.program_id(0)
        block = tl.program_id(1)
        if SAME_SIZE:
            in_h = same_h.to(tl.int64)
            in_w = same_w.to(tl.int64)
            in_c = same_c.to(tl.int64)
            offset = image.to(tl.int64) * in_h * in_w * in_c
        else:
            offset = tl.load(meta + image * 4)
            in_h = tl.load(meta + image * 4 + 1)
            in_w = tl.load(meta + image * 4 + 2)
            in_c = tl.load(meta + image * 4 + 3)

        pixel = block * BLOCK + tl.arange(0, BLOCK)  # [BLOCK] output pixels, row-major
        inside = pixel < out_h * out_w
        oy = pixel // out_w
        ox = pixel % out_w

        channel = tl.arange(0, 4)  # 3 output channels, padded to a power of two
        source_channel = tl.minimum(channel, in_c - 1)  # grey → all three; RGBA → RGB
        mask = inside[:, None] & (channel[None, :] < 3)
        base = src + offset + source_channel[None, :]
        if RESIZE:
            # Source coordinates with half-pixel centres, clamped at 0 like F.interpolate.
            scale_y = tl.div_rn(in_h.to(tl.float32), out_h.to(tl.float32))
            scale_x = tl.div_rn(in_w.to(tl.float32), out_w.to(tl.float32))
            sy = tl.maximum(scale_y * (oy.to(tl.float32) + 0.5) - 0.5, 0.0)
            sx = tl.maximum(scale_x * (ox.to(tl.float32) + 0.5) - 0.5, 0.0)
            y0 = sy.to(tl.int64)  # truncation is floor here: sy >= 0
            x0 = sx.to(tl.int64)
            y1 = tl.where(y0 < in_h - 1, y0 + 1, y0)
            x1 = tl.where(x0 < in_w - 1, x0 + 1, x0)
            wy1 = sy - y0.to(tl.float32)
            wx1 = sx - x0.to(tl.float32)
            wy0 = 1.0 - wy1
            wx0 = 1.0 - wx1
            row0 = y0[:, None] * in_w
            row1 = y1[:, None] * in_w
            v00 = tl.load(base + (row0 + x0[:, None]) * in_c, mask=mask, other=0).to(tl.float32)
            v01 = tl.load(base + (row0 + x1[:, None]) * in_c, mask=mask, other=0).to(tl.float32)
            v10 = tl.load(base + (row1 + x0[:, None]) * in_c, mask=mask, other=0).to(tl.float32)
            v11 = tl.load(base + (row1 + x1[:, None]) * in_c, mask=mask, other=0).to(tl.float32)
            top = wx0[:, None] * v00 + wx1[:, None] * v01
            bottom = wx0[:, None] * v10 + wx1[:, None] * v11
            value = wy0[:, None] * top + wy1[:, None] * bottom
        else:  # every image is already out_h x out_w: one load per value, the same result
            value = tl.load(base + pixel[:, None].to(tl.int64) * in_c, mask=mask, other=0).to(tl.float32)
        value = value * (2.0 / 255.0) - 1.0

        target = (
            out
            + image.to(tl.int64) * stride_b
            + channel[None, :] * stride_c
            + oy[:, None] * stride_h
            + ox[:, None] * stride_w
        )
        tl.store(target, value.to(out.dtype.element_ty), mask=mask)

else:
    _preprocess_kernel = None


def validate(images: Sequence[torch.Tensor], out: torch.Tensor) -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument that breaks the contract."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out: expected a tensor, got {type(out).__name__}")
    if out.dim() != 4 or out.shape[1] != 3:
        raise ValueError(f"out: expected shape [B, 3, H, W], got {list(out.shape)}")
    if not out.is_floating_point():
        raise TypeError(f"out: expected a floating-point buffer, got {out.dtype}")
    if out.shape[2] == 0 or out.shape[3] == 0:
        raise ValueError(f"out: height and width must be at least 1, got {list(out.shape)}")
    if len(images) == 0:
        raise ValueError("images: expected at least one image")
    if len(images) > out.shape[0]:
        raise ValueError(f"images: {len(images)} images do not fit a buffer of batch {out.shape[0]}")
    for i, image in enumerate(images):
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"images[{i}]: expected a tensor, got {type(image).__name__}")
        if image.dtype != torch.uint8:
            raise TypeError(f"images[{i}]: expected uint8 pixels, got {image.dtype}")
        if image.dim() != 3 or image.shape[2] not in (1, 3, 4):
            raise ValueError(f"images[{i}]: expected shape [H, W, 1|3|4], got {list(image.shape)}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"images[{i}]: height and width must be at least 1, got {list(image.shape)}")


def preprocess_reference(images: Sequence[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """Plain torch, one image at a time: the definition the kernel is tested against."""
    validate(images, out)
    size = (out.shape[2], out.shape[3])
    for i, image in enumerate(images):
        x = image.to(out.device).permute(2, 0, 1).unsqueeze(0).to(torch.float32)  # [1, C, h, w]
        x = x[:, :3] if x.shape[1] == 4 else x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        if (x.shape[2], x.shape[3]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        out[i].copy_(x[0] * SCALE - 1.0)
    return out


def _pinned_copy(images: Sequence[torch.Tensor], header: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """``header`` and every image's bytes, back to back, on ``device``: one copy, queued without waiting on CUDA."""
    head = 0 if header is None else header.numel()
    staging = torch.empty(
        head + sum(image.numel() for image in images), dtype=torch.uint8, pin_memory=device.type == "cuda"
    )
    if header is not None:
        staging[:head].copy_(header)
    start = head
    for image in images:
        staging[start : start + image.numel()].view(image.shape).copy_(image)
        start += image.numel()
    return staging.to(device, non_blocking=device.type == "cuda")


def _stage_same_size(images: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Images of one size, back to back on ``device`` (no table: the kernel gets the size as arguments)."""
    if all(image.device == device for image in images):
        if len(images) == 1 and images[0].is_contiguous():
            return images[0].reshape(-1)
        return torch.cat([image.reshape(-1) for image in images])
    return _pinned_copy(images, None, device)


def _stage_mixed_sizes(images: Sequence[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-image table (offset, height, width, channels) followed by every image's bytes, on ``device``.

    Returns the uint8 buffer and an int64 view of its table; one host→device copy.
    """
    header = len(images) * _META_FIELDS * 8
    table: list[int] = []
    offset = header
    for image in images:
        table += [offset, image.shape[0], image.shape[1], image.shape[2]]
        offset += image.numel()
    header_bytes = torch.tensor(table, dtype=torch.int64).view(torch.uint8)
    if all(image.device == device for image in images):
        pin = device.type == "cuda"
        head = (header_bytes.pin_memory() if pin else header_bytes).to(device, non_blocking=pin)
        src = torch.cat([head] + [image.reshape(-1) for image in images])
    else:
        src = _pinned_copy(images, header_bytes, device)
    return src, src[:header].view(torch.int64)


def _preprocess_triton(images: Sequence[torch.Tensor], out: torch.Tensor) -> None:
    same_size = all(image.shape == images[0].shape for image in images)
    # A captured host→device copy would replay stale host memory: refuse rather than repeat old frames.
    capturing = out.device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    if capturing and (not same_size or any(image.device != out.device for image in images)):
        raise RuntimeError(
            "preprocess inside a CUDA graph capture needs images already on the device and of one size; "
            "run it before replaying the graph instead (its output buffer is static)"
        )
    if same_size:
        src = _stage_same_size(images, out.device)
        meta = src  # not read
        same_h, same_w, same_c = images[0].shape
    else:
        src, meta = _stage_mixed_sizes(images, out.device)
        same_h = same_w = same_c = 0
    out_h, out_w = out.shape[2], out.shape[3]
    grid = (len(images), triton.cdiv(out_h * out_w, _BLOCK_PIXELS))
    _preprocess_kernel[grid](
        src,
        meta,
        out,
        out_h,
        out_w,
        *out.stride(),
        same_h,
        same_w,
        same_c,
        SAME_SIZE=same_size,
        RESIZE=not (same_size and tuple(images[0].shape[:2]) == (out_h, out_w)),
        BLOCK=_BLOCK_PIXELS,
        num_warps=4,
        enable_fp_fusion=False,  # keep the float32 arithmetic exactly as the reference writes it
    )


@torch.library.custom_op(OP, mutates_args=("out",))
def _preprocess_op(images: list[torch.Tensor], out: torch.Tensor) -> None:
    validate(images, out)
    reason = runtime.triton_blocker(_preprocess_kernel, [out])
    if reason is None and out.dtype not in DTYPES:
        reason = "out dtype is not float16, bfloat16 or float32"
    if reason is not None:
        runtime.report_fallback(OP, reason)
        preprocess_reference(images, out)
        return
    _preprocess_triton(images, out)


@_preprocess_op.register_fake
def _(images: list[torch.Tensor], out: torch.Tensor) -> None:
    validate(images, out)


def preprocess(images: Sequence[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """Write ``images`` into ``out[:len(images)]`` as the model's normalised input; returns ``out``.

    See the module docstring for the contract. Runs the Triton kernel on CUDA when the
    kernels are on, else the torch reference (logged once).
    """
    torch.ops.framewire.preprocess(list(images), out)
    return out
