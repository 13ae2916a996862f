"""group_norm_silu: fused GroupNorm + SiLU against its float32 reference."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from framewire.kernels import group_norm_silu as gns
from framewire.kernels import runtime
from tests.kernels.conftest import DEVICE, FLOAT_DTYPES, TOLERANCES, require_kernel

# (shape, groups): channels per group 1..20, pixels not multiples of any block, 3-d to 5-d,
# one group split into several statistics chunks (2 channels x 4608 pixels > 8192 elements).
CASES = [
    ((2, 12, 7, 9), 4),
    ((1, 64, 16, 16), 32),
    ((1, 40, 33, 31), 2),
    ((1, 4, 64, 72), 2),
    ((2, 8, 1, 1), 2),
    ((3, 6, 5), 3),
    ((1, 8, 3, 4, 5), 2),
]


def sample(shape: tuple[int, ...], dtype: torch.dtype, layout: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3 + 2).to(dtype).to(DEVICE)
    if layout == "channels_last":
        x = x.to(
            memory_format={4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim(), torch.contiguous_format)
        )
    return x


def affine(channels: int, dtype: torch.dtype, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(channels, generator=g) + 1
    bias = torch.randn(channels, generator=g)
    return weight.to(dtype).to(DEVICE), bias.to(dtype).to(DEVICE)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize(
    ("shape", "groups"), CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else None
)
def test_kernel_matches_reference(shape: tuple[int, ...], groups: int, dtype: torch.dtype, layout: str) -> None:
    require_kernel(gns._apply_kernel)
    x = sample(shape, dtype, layout)
    weight, bias = affine(shape[1], dtype)
    y = gns._group_norm_silu_triton(x, groups, weight, bias, 1e-5)
    assert not y.isnan().any(), "some output elements were never written (empty_like leaves garbage)"
    torch.testing.assert_close(y, gns.group_norm_silu_reference(x, groups, weight, bias, 1e-5), **TOLERANCES[dtype])
    assert y.stride() == x.stride(), "the output keeps the input's layout"


@pytest.mark.parametrize("params", ["none", "weight", "bias"])
def test_without_weight_or_bias(params: str) -> None:
    require_kernel(gns._apply_kernel)
    x = sample((2, 6, 5, 7), torch.float32, "channels_last")
    weight, bias = affine(6, torch.float32)
    weight_arg = weight if params == "weight" else None
    bias_arg = bias if params == "bias" else None
    y = gns._group_norm_silu_triton(x, 3, weight_arg, bias_arg, 1e-6)
    torch.testing.assert_close(y, F.silu(F.group_norm(x, 3, weight_arg, bias_arg, 1e-6)), rtol=1e-5, atol=1e-5)


def test_statistics_stay_accurate_when_the_mean_dwarfs_the_spread() -> None:
    """At least as accurate as torch's own float32 group_norm, where a sum-of-squares variance is noise."""
    require_kernel(gns._apply_kernel)
    g = torch.Generator().manual_seed(3)
    x = (torch.randn((1, 4, 64, 72), generator=g) * 0.05 + 3000.0).to(DEVICE)
    exact = F.silu(F.group_norm(x.double(), 2, None, None, 1e-12))

    def error(y: torch.Tensor) -> float:
        return float((y.double() - exact).abs().max())

    grouped = x.view(1, 2, -1)
    mean = grouped.mean(-1, keepdim=True)
    naive_var = (grouped * grouped).mean(-1, keepdim=True) - mean * mean  # float32 cancellation
    naive = F.silu((grouped - mean) / (naive_var.clamp_min(0) + 1e-12).sqrt()).view_as(x)
    ours = error(gns._group_norm_silu_triton(x, 2, None, None, 1e-12))
    assert error(naive) > 10 * ours, "the input must be hard enough to tell the methods apart"
    assert ours <= 1.25 * error(F.silu(F.group_norm(x, 2, None, None, 1e-12))) + 1e-6


def test_op_runs_the_kernel(caplog: pytest.LogCaptureFixture) -> None:
    require_kernel(gns._apply_kernel)
    x = sample((2, 8, 6, 5), torch.float16, "channels_last")
    weight, bias = affine(8, torch.float16)
    with caplog.at_level(logging.INFO, logger="framewire.kernels"):
        y = gns.group_norm_silu(x, 4, weight, bias)
    assert not caplog.records
    torch.testing.assert_close(y, gns.group_norm_silu_reference(x, 4, weight, bias), **TOLERANCES[torch.float16])


def test_switched_off_the_op_equals_the_eager_pair_exactly(caplog: pytest.LogCaptureFixture) -> None:
    x = sample((2, 8, 6, 5), torch.float32, "contiguous")
    weight, bias = affine(8, torch.float32)
    runtime.configure(enabled=False)
    with caplog.at_level(logging.INFO, logger="framewire.kernels"):
        for _ in range(2):
            y = gns.group_norm_silu(x, 4, weight, bias, 1e-6)
    assert torch.equal(y, F.silu(F.group_norm(x, 4, weight, bias, 1e-6)))
    assert [r.getMessage() for r in caplog.records] == [f"{gns.OP} runs its torch reference: {runtime.OFF}"]


def test_strides_that_do_not_collapse_fall_back_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    x = sample((2, 8, 6, 5), torch.float32, "contiguous").transpose(2, 3)  # H and W swapped: no single stride
    weight, bias = affine(8, torch.float32)
    with caplog.at_level(logging.INFO, logger="framewire.kernels"):
        for _ in range(3):
            y = gns.group_norm_silu(x, 2, weight, bias)
    torch.testing.assert_close(y, gns.group_norm_silu_reference(x, 2, weight, bias), rtol=1e-6, atol=1e-6)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "do not collapse" in caplog.records[0].getMessage()


def test_gradients_flow_through_the_reference() -> None:
    x = sample((2, 6, 4, 3), torch.float32, "channels_last").requires_grad_()
    weight, bias = (t.requires_grad_() for t in affine(6, torch.float32))
    gns.group_norm_silu(x, 3, weight, bias).square().sum().backward()
    got = [t.grad.clone() for t in (x, weight, bias)]
    for t in (x, weight, bias):
        t.grad = None
    F.silu(F.group_norm(x, 3, weight, bias)).square().sum().backward()
    for mine, eager in zip(got, (x.grad, weight.grad, bias.grad), strict=True):
        torch.testing.assert_close(mine, eager, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("shape", "groups", "weight_shape", "message"),
    [
        ((2, 6, 4, 4), 4, (6,), "num_groups: 4 does not divide the 6 channels"),
        ((2, 6, 4, 4), 0, (6,), "num_groups: 0"),
        ((2, 6, 4, 4), 3, (5,), r"weight: expected shape \[6\]"),
        ((6,), 3, (6,), r"x: expected shape \[N, C, \*spatial\]"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(
    shape: tuple[int, ...], groups: int, weight_shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        gns.group_norm_silu(torch.randn(shape), groups, torch.ones(weight_shape), None)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_passes_torch_library_opcheck(layout: str) -> None:
    x = sample((2, 6, 5, 3), torch.float32, layout)
    weight, bias = affine(6, torch.float32)
    op = torch.ops.framewire.group_norm_silu.default
    torch.library.opcheck(op, (x, 3, weight, bias, 1e-5))
    torch.library.opcheck(op, (x, 2, None, None, 1e-6))
    torch.library.opcheck(op, (x.detach().requires_grad_(), 3, weight.requires_grad_(), bias, 1e-5))


def test_fused_module_traces_into_one_graph_under_torch_compile() -> None:
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), gns.GroupNormSiLU(nn.GroupNorm(4, 8)), nn.Conv2d(8, 4, 1))
    model = model.to(DEVICE).eval()
    x = sample((2, 4, 6, 7), torch.float32, "contiguous")
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
