"""GroupNorm followed by SiLU as one op, and a swap that puts it into diffusers' UNets and VAEs.

Contract (the kernels and :func:`group_norm_silu_reference` alike):
``silu(group_norm(x, num_groups, weight, bias, eps))`` for ``x`` of shape ``[N, C, *spatial]``,
statistics and arithmetic in float32, rounded once to ``x``'s dtype. The result has ``x``'s
layout (contiguous in, contiguous out; channels_last in, channels_last out).

The Triton path makes three launches and reads ``x`` twice, writes it once — against five
passes for the eager pair (norm: read for the statistics, read and write to normalise;
SiLU: read and write):

1. statistics: each (sample, group) is cut into chunks of pixels so that even a batch of one
   fills the GPU; each program reduces its chunk to (count, mean, M2) from sums of
   deviations from a pivot, which stay accurate where a plain sum of squares would cancel;
2. finalise: one program per (sample, group) merges its chunks (Chan et al.) into mean and 1/std;
3. apply: centre, scale, shift and SiLU in one pass over ``x``, in ``x``'s layout.

Accuracy: at least that of torch's own float32 GroupNorm, also when |mean| >> std.

Any layout whose spatial dimensions collapse to one stride (contiguous, channels_last and
their 3-d/5-d kin) runs the kernels; other strides fall back to the reference (logged once).
"""

from __future__ import annotations

import logging
import math
from typing import Any, TypeGuard, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from framewire.kernels import runtime

_M = TypeVar("_M", bound=nn.Module)

try:
    import triton
    import triton.language as tl
except ImportError:  # optional: CPU-only and non-Linux installs run the reference
    triton = None

OP = "framewire::group_norm_silu"
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_CHUNK_ELEMENTS = 8192  # elements one statistics program reduces: ~100s of programs for a 64x64 latent
_MAX_CHUNKS = 1024
_TILE_ELEMENTS = 2048  # elements one program holds at a time (registers)

log = logging.getLogger("framewire.kernels")

if triton is not None:

    @triton.jit
    def _stats_kernel(
        x,
        partial,  # float32 [N*G, num_chunks, 3]: count, mean, M2 of each chunk
        groups,
        group_channels,
        pixels,
        chunk_pixels,
        num_chunks,
        sx_n,
        sx_c,
        sx_p,
        BLOCK_C: tl.constexpr,
        BLOCK_P: tl.constexpr,
    ):
        sample_group = tl.program_id(0)
        chunk = tl.program_id(1)
        n = sample_group // groups
        g = sample_group % groups
        base = x + n.to(tl.int64) * sx_n + (g * group_channels).to(tl.int64) * sx_c
        p_start = chunk * chunk_pixels
        p_end = tl.minimum(p_start + chunk_pixels, pixels)

        # Sums of deviations from a pivot (the chunk's first value) rather than of raw values:
        # accurate when |mean| >> std, where a plain sum of squares cancels to noise.
        pivot = tl.load(base + p_start.to(tl.int64) * sx_p).to(tl.float32)
        sum1 = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
        sum2 = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
        for c0 in range(0, group_channels, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            c_ok = c < group_channels
            for p0 in range(p_start, p_end, BLOCK_P):
                p = p0 + tl.arange(0, BLOCK_P)
                mask = c_ok[:, None] & (p < p_end)[None, :]
                offsets = c[:, None].to(tl.int64) * sx_c + p[None, :].to(tl.int64) * sx_p
                v = tl.load(base + offsets, mask=mask, other=0.0).to(tl.float32)
                d = tl.where(mask, v - pivot, 0.0)
                sum1 += d
                sum2 += d * d
        count = ((p_end - p_start) * group_channels).to(tl.float32)
        s1 = tl.sum(tl.sum(sum1, axis=1), axis=0)
        s2 = tl.sum(tl.sum(sum2, axis=1), axis=0)
        mean = pivot + s1 / count
        m2 = tl.maximum(s2 - s1 * (s1 / count), 0.0)
        out = partial + (sample_group.to(tl.int64) * num_chunks + chunk) * 3
        tl.store(out, count)
        tl.store(out + 1, mean)
        tl.store(out + 2, m2)

    @triton.jit
    def _finalize_kernel(partial, mean_out, rstd_out, num_chunks, eps, BLOCK_K: tl.constexpr):
        sample_group = tl.program_id(0)
        k = tl.arange(0, BLOCK_K)
        ok = k < num_chunks
        row = partial + (sample_group.to(tl.int64) * num_chunks + k) * 3
        count = tl.load(row, mask=ok, other=0.0)
        mean_k = tl.load(row + 1, mask=ok, other=0.0)
        m2_k = tl.load(row + 2, mask=ok, other=0.0)
        # Chan et al.'s merge, with chunk 0's mean as the pivot of the weighted mean.
        pivot = tl.load(partial + sample_group.to(tl.int64) * num_chunks * 3 + 1)
        total = tl.sum(count, axis=0)
        mean = pivot + tl.sum(count * (mean_k - pivot), axis=0) / total
        delta = mean_k - mean
        m2 = tl.sum(m2_k + count * delta * delta, axis=0)
        variance = tl.maximum(m2 / total, 0.0)  # biased, as GroupNorm
        tl.store(mean_out + sample_group, mean)
        tl.store(rstd_out + sample_group, 1.0 / tl.sqrt_rn(variance + eps))

    @triton.jit
    def _apply_kernel(
        x,
        y,
        mean,
        rstd,
        weight,
        bias,
        channels,
        groups,
        group_channels,
        pixels,
        sx_n,
        sx_c,
        sx_p,
        sy_n,
        sy_c,
        sy_p,
        HAS_WEIGHT: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK_P: tl.constexpr,
    ):
        n = tl.program_id(0).to(tl.int64)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
        c_ok = c < channels
        mask = c_ok[:, None] & (p < pixels)[None, :]

        stat = n * groups + c // group_channels
        mu = tl.load(mean + stat, mask=c_ok, other=0.0)
        scale = tl.load(rstd + stat, mask=c_ok, other=0.0)
        if HAS_WEIGHT:
            scale = scale * tl.load(weight + c, mask=c_ok, other=0.0).to(tl.float32)
        shift = tl.zeros([BLOCK_C], dtype=tl.float32)
        if HAS_BIAS:
            shift = tl.load(bias + c, mask=c_ok, other=0.0).to(tl.float32)

        c64 = c[:, None].to(tl.int64)
        p64 = p[None, :].to(tl.int64)
        v = tl.load(x + n * sx_n + c64 * sx_c + p64 * sx_p, mask=mask, other=0.0).to(tl.float32)
        # Centre first: folding the mean into the shift (v*scale + shift) cancels badly when |mean| >> std.
        z = (v - mu[:, None]) * scale[:, None] + shift[:, None]
        out = z * tl.sigmoid(z)
        tl.store(y + n * sy_n + c64 * sy_c + p64 * sy_p, out.to(y.dtype.element_ty), mask=mask)

else:
    _stats_kernel = _finalize_kernel = _apply_kernel = None


def validate(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument that breaks the contract."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x: expected shape [N, C, *spatial], got {list(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected floating point, got {x.dtype}")
    channels = x.shape[1]
    if num_groups < 1 or channels % num_groups:
        raise ValueError(f"num_groups: {num_groups} does not divide the {channels} channels of x")
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and list(param.shape) != [channels]:
            raise ValueError(f"{name}: expected shape [{channels}], got {list(param.shape)}")
        if param is not None and param.device != x.device:
            raise ValueError(f"{name}: expected a tensor on {x.device} (x's device), got {param.device}")
    if not eps >= 0:
        raise ValueError(f"eps: expected a non-negative number, got {eps}")


def group_norm_silu_reference(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Plain torch in float32, rounded once to ``x.dtype``: the definition the kernels are tested against."""
    validate(x, num_groups, weight, bias, eps)
    w = None if weight is None else weight.to(torch.float32)
    b = None if bias is None else bias.to(torch.float32)
    return F.silu(F.group_norm(x.to(torch.float32), num_groups, w, b, eps)).to(x.dtype)


def _pixel_stride(x: torch.Tensor) -> int | None:
    """The one stride that walks every spatial position in order, or None if the spatial dims don't collapse."""
    stride = None
    expected = None
    for size, step in reversed(list(zip(x.shape[2:], x.stride()[2:], strict=True))):
        if size == 1:
            continue
        if expected is not None and step != expected:
            return None
        stride = step if stride is None else stride
        expected = step * size
    return 1 if stride is None else stride


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _group_norm_silu_triton(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    y = torch.empty_like(x)
    batch, channels = x.shape[0], x.shape[1]
    pixels = math.prod(x.shape[2:])
    if x.numel() == 0:
        return y
    group_channels = channels // num_groups
    sx_p = _pixel_stride(x)
    sy_p = _pixel_stride(y)
    assert sx_p is not None and sy_p is not None  # guarded by the caller; empty_like keeps x's layout

    # Statistics: chunks of whole pixels (all of a group's channels), ~_CHUNK_ELEMENTS each.
    block_c = min(_next_power_of_2(group_channels), 64)
    block_p = max(16, min(_TILE_ELEMENTS // block_c, _next_power_of_2(pixels)))
    chunk_pixels = max(1, _CHUNK_ELEMENTS // group_channels)
    chunk_pixels = max(chunk_pixels, triton.cdiv(pixels, _MAX_CHUNKS))
    chunk_pixels = triton.cdiv(chunk_pixels, block_p) * block_p
    num_chunks = triton.cdiv(pixels, chunk_pixels)
    rows = batch * num_groups
    partial = torch.empty((rows, num_chunks, 3), device=x.device, dtype=torch.float32)
    _stats_kernel[(rows, num_chunks)](
        x,
        partial,
        num_groups,
        group_channels,
        pixels,
        chunk_pixels,
        num_chunks,
        x.stride(0),
        x.stride(1),
        sx_p,
        BLOCK_C=block_c,
        BLOCK_P=block_p,
        num_warps=4,
        enable_fp_fusion=True,  # tolerances, not bits, bind this op to its reference
    )
    mean = torch.empty(rows, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    _finalize_kernel[(rows,)](
        partial, mean, rstd, num_chunks, eps, BLOCK_K=_next_power_of_2(num_chunks), num_warps=4, enable_fp_fusion=True
    )

    # Apply: tiles long along whichever of channels or pixels is contiguous in memory.
    if sx_p == 1 and x.stride(1) != 1:
        apply_c, apply_p = 8, 256
    else:
        apply_c, apply_p = 64, 32
    apply_c = min(apply_c, _next_power_of_2(channels))
    apply_p = min(apply_p, _next_power_of_2(pixels))
    grid = (batch, triton.cdiv(channels, apply_c), triton.cdiv(pixels, apply_p))
    _apply_kernel[grid](
        x,
        y,
        mean,
        rstd,
        weight if weight is not None else x,  # a placeholder pointer, never read
        bias if bias is not None else x,
        channels,
        num_groups,
        group_channels,
        pixels,
        x.stride(0),
        x.stride(1),
        sx_p,
        y.stride(0),
        y.stride(1),
        sy_p,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        BLOCK_C=apply_c,
        BLOCK_P=apply_p,
        num_warps=4,
        enable_fp_fusion=True,
    )
    return y


def _blocker(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> str | None:
    tensors = [t for t in (x, weight, bias) if t is not None]
    reason = runtime.triton_blocker(_apply_kernel, tensors)
    if reason is None and x.dtype not in DTYPES:
        reason = "x dtype is not float16, bfloat16 or float32"
    if reason is None and any(t.dtype not in DTYPES for t in tensors):
        reason = "weight or bias dtype is not float16, bfloat16 or float32"
    if reason is None and _pixel_stride(x) is None:
        reason = "x's spatial dimensions do not collapse to one stride (neither contiguous nor channels_last)"
    return reason


@torch.library.custom_op(OP, mutates_args=())
def _group_norm_silu_op(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    validate(x, num_groups, weight, bias, eps)
    reason = _blocker(x, weight, bias)
    if reason is None:
        return _group_norm_silu_triton(x, num_groups, weight, bias, eps)
    runtime.report_fallback(OP, reason)
    y = torch.empty_like(x)  # the layout the op promises, whatever the reference returns
    y.copy_(group_norm_silu_reference(x, num_groups, weight, bias, eps))
    return y


@_group_norm_silu_op.register_fake
def _(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> Any:
    validate(x, num_groups, weight, bias, eps)
    return torch.empty_like(x)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    x, num_groups, weight, bias, eps = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.num_groups = num_groups
    ctx.eps = eps


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
    # Inference is the purpose; gradients recompute through the reference so that training
    # or fine-tuning a swapped model stays correct rather than silently wrong.
    x, weight, bias = ctx.saved_tensors
    with torch.enable_grad():
        leaves = [None if t is None else t.detach().requires_grad_(t.requires_grad) for t in (x, weight, bias)]
        assert leaves[0] is not None  # the input itself is always saved
        y = group_norm_silu_reference(leaves[0], ctx.num_groups, leaves[1], leaves[2], ctx.eps)
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(y, wanted, grad) if wanted else ())
    dx, dw, db = (next(grads) if t is not None and t.requires_grad else None for t in leaves)
    return dx, None, dw, db, None


_group_norm_silu_op.register_autograd(_backward, setup_context=_setup_context)


def group_norm_silu(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``silu(group_norm(x, ...))`` as one op (see the module docstring); a new tensor in ``x``'s layout."""
    return torch.ops.framewire.group_norm_silu(x, num_groups, weight, bias, eps)


class GroupNormSiLU(nn.Module):
    """An ``nn.GroupNorm`` followed by SiLU, fused. Holds the norm's own parameters, so the
    state-dict keys of a swapped model are unchanged."""

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.num_groups = norm.num_groups
        self.num_channels = norm.num_channels
        self.eps = norm.eps
        self.affine = norm.affine
        self.weight = norm.weight
        self.bias = norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm_silu(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


class _SiLUOnEmbedding(nn.Module):
    """What a swapped ``ResnetBlock2D`` keeps of its shared activation: SiLU on the time
    embedding (2-d ``[B, C]``); identity on feature maps, whose SiLU the fused norms now apply."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x) if x.dim() == 2 else x


# Where diffusers (0.3x-0.4x) follows a GroupNorm directly with a SiLU that is used for
# nothing else: the module's norm and activation attributes, by fully qualified class name
# (a class diffusers moves or renames is simply not swapped).
_NORM_THEN_ACT: dict[str, tuple[str, str]] = {
    "diffusers.models.unets.unet_2d_condition.UNet2DConditionModel": ("conv_norm_out", "conv_act"),
    "diffusers.models.unets.unet_2d.UNet2DModel": ("conv_norm_out", "conv_act"),
    "diffusers.models.autoencoders.vae.Encoder": ("conv_norm_out", "conv_act"),
    "diffusers.models.autoencoders.vae.Decoder": ("conv_norm_out", "conv_act"),
}
_RESNET = "diffusers.models.resnet.ResnetBlock2D"


def _qualified(module: Any) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _is(module: Any, cls: type[_M]) -> TypeGuard[_M]:
    return type(module) is cls  # subclasses may compute something else


def _swap_resnet(block: nn.Module) -> int:
    """``ResnetBlock2D``: norm1 → act and norm2 → act, where the same act also runs on the
    time embedding. Both norms are fused and the act keeps only its embedding role.

    Its ``time_embedding_norm`` "default" (UNet: the embedding is added before norm2) and
    "group" (VAE decoder: no embedding) keep norm2 → act adjacent; "scale_shift" does not."""
    norm1, norm2, act = block.norm1, block.norm2, block.nonlinearity
    if not (_is(norm1, nn.GroupNorm) and _is(norm2, nn.GroupNorm) and _is(act, nn.SiLU)):
        return 0
    if getattr(block, "time_embedding_norm", None) not in ("default", "group"):
        return 0  # "scale_shift" modulates between norm2 and the activation: not the pattern
    block.norm1 = GroupNormSiLU(norm1)
    block.norm2 = GroupNormSiLU(norm2)
    block.nonlinearity = _SiLUOnEmbedding()
    return 2


def swap_group_norm_silu(model: nn.Module) -> int:
    """Replace every GroupNorm→SiLU pair in a diffusers UNet/VAE module tree with the fused op.

    Returns how many norms were fused. Recognises ``ResnetBlock2D`` (whose activation also
    runs on the time embedding, which keeps its SiLU) and the ``conv_norm_out``/``conv_act``
    tail of ``UNet2DConditionModel``, ``UNet2DModel`` and the VAE's ``Encoder``/``Decoder``;
    anything else is left alone. Swaps nothing when the kernels cannot run for the model's
    device (switch off, no Triton, not CUDA), so the model stays exactly as it was. Run it
    again and it finds nothing more to do.
    """
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    reason = runtime.triton_blocker(_apply_kernel, [torch.empty(0, device=device)])
    if reason is not None:
        log.log(runtime.fallback_level(reason), "GroupNorm+SiLU left unfused in %s: %s", type(model).__name__, reason)
        return 0
    swapped = 0
    for module in list(model.modules()):
        name = _qualified(module)
        if name == _RESNET:
            swapped += _swap_resnet(module)
        elif name in _NORM_THEN_ACT:
            norm_attr, act_attr = _NORM_THEN_ACT[name]
            norm, act = getattr(module, norm_attr, None), getattr(module, act_attr, None)
            if _is(norm, nn.GroupNorm) and _is(act, nn.SiLU):
                setattr(module, norm_attr, GroupNormSiLU(norm))
                setattr(module, act_attr, nn.Identity())
                swapped += 1
    log.info("fused %d GroupNorm+SiLU pairs in %s", swapped, type(model).__name__)
    return swapped
