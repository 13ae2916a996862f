"""postprocess: float NCHW in [-1, 1] → uint8 NHWC for the JPEG encoder, bit-exact with its reference."""

from __future__ import annotations

import logging

import pytest
import torch

from framewire.kernels import postprocess as post
from framewire.kernels import runtime
from tests.kernels.conftest import DEVICE, FLOAT_DTYPES, poisoned, require_kernel


def decoded(batch: int, height: int, width: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """VAE-like output: mostly in [-1, 1], some beyond (to clamp), and NaN/±inf/exact ties planted."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, 3, height, width), generator=g) * 0.8
    flat = x.view(-1)
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), -1.0, 1.0, 0.0, 3.0, -3.0])
    planted = torch.cat([specials, ties()])[: flat.numel()]
    flat[: planted.numel()] = planted
    return x.to(dtype).to(DEVICE)


def ties() -> torch.Tensor:
    """Inputs whose scaled value lands exactly on k + 0.5 in float32: where round-half-even matters.

    Searched within a few float32 steps of ``(2k+1)/255 - 1``, the real-number ties.
    """
    near = ((2 * torch.arange(255, dtype=torch.float64) + 1) / 255 - 1).to(torch.float32)
    candidates, up, down = [near], near, near
    for _ in range(8):
        up = torch.nextafter(up, torch.full_like(up, 2.0))
        down = torch.nextafter(down, torch.full_like(down, -2.0))
        candidates += [up, down]
    values = torch.cat(candidates)
    scaled = (values / 2 + 0.5) * 255
    found = values[scaled - scaled.floor() == 0.5]
    assert found.numel() >= 16, "the tie search found too few ties to test with"
    return found[torch.randperm(found.numel(), generator=torch.Generator().manual_seed(1))][:64]


def reference(x: torch.Tensor) -> torch.Tensor:
    return post.postprocess_reference(x, torch.empty((x.shape[0], x.shape[2], x.shape[3], 3), dtype=torch.uint8))


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_kernel_matches_reference_bit_for_bit(dtype: torch.dtype, layout: str) -> None:
    require_kernel(post._postprocess_kernel)
    x = decoded(3, 33, 35, dtype)  # 1155 pixels: a full block of 1024 and a ragged one
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.cat([x, x], dim=3)[:, :, :, ::2]  # every other column: no simple layout
    want = reference(x.cpu())
    for fill in (0, 255):  # two poisons, so that no unwritten element can pass by luck
        out = poisoned((3, 33, 35, 3), torch.uint8).fill_(fill)
        post._postprocess_triton(x, out)
        assert torch.equal(out.cpu(), want)


def test_writes_into_a_strided_output_buffer() -> None:
    require_kernel(post._postprocess_kernel)
    x = decoded(2, 9, 7, torch.float32)
    wide = poisoned((2, 9, 7, 6), torch.uint8)
    out = wide[..., ::2]  # the caller's buffer need not be contiguous
    post._postprocess_triton(x, out)
    assert torch.equal(out.cpu(), reference(x.cpu()))
    assert (wide[..., 1::2] == 251).all(), "elements outside the view must be left alone"


def test_clamps_rounds_half_to_even_and_maps_nan_to_mid_grey() -> None:
    require_kernel(post._postprocess_kernel)
    values = [-5.0, -1.0, 1.0, 5.0, float("nan"), float("inf"), -float("inf"), 0.0]
    x = torch.tensor(values + ties().tolist()[:8], device=DEVICE).view(1, 1, 1, -1).expand(1, 3, 1, -1)
    out = poisoned((1, 1, x.shape[3], 3), torch.uint8)
    post._postprocess_triton(x, out)
    got = out[0, 0, :, 0].tolist()
    assert got[:8] == [0, 0, 255, 255, 128, 255, 0, 128]
    scaled = (ties()[:8] / 2 + 0.5) * 255
    assert got[8:] == [int(v) if int(v) % 2 == 0 else int(v) + 1 for v in scaled.floor().tolist()]


def test_reference_matches_diffusers_image_processor() -> None:
    """The contract is what the pipelines did: VaeImageProcessor.postprocess, then PIL's uint8."""
    image_processor = pytest.importorskip("diffusers.image_processor")
    x = decoded(2, 16, 12, torch.float32).cpu()
    x[torch.isnan(x) | torch.isinf(x)] = 0.25  # diffusers leaves NaN undefined
    pil = image_processor.VaeImageProcessor(do_resize=False).postprocess(x, output_type="pil")
    ours = reference(x)
    for i, picture in enumerate(pil):
        assert torch.equal(ours[i], torch.frombuffer(bytearray(picture.tobytes()), dtype=torch.uint8).view(16, 12, 3))


def test_op_runs_the_kernel_and_returns_the_buffer(caplog: pytest.LogCaptureFixture) -> None:
    require_kernel(post._postprocess_kernel)
    x = decoded(2, 8, 8, torch.bfloat16)
    out = poisoned((2, 8, 8, 3), torch.uint8)
    with caplog.at_level(logging.INFO, logger="framewire.kernels"):
        assert post.postprocess(x, out) is out
    assert not caplog.records
    assert torch.equal(out.cpu(), reference(x.cpu()))


def test_switched_off_the_op_runs_the_reference_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    x = decoded(2, 8, 8, torch.float16)
    runtime.configure(enabled=False)
    with caplog.at_level(logging.INFO, logger="framewire.kernels"):
        for _ in range(2):
            out = post.postprocess(x, poisoned((2, 8, 8, 3), torch.uint8))
    assert torch.equal(out.cpu(), reference(x.cpu()))
    assert [r.getMessage() for r in caplog.records] == [f"{post.OP} runs its torch reference: {runtime.OFF}"]


def test_float64_input_falls_back_to_the_reference() -> None:
    x = decoded(1, 4, 5, torch.float64)
    out = post.postprocess(x, poisoned((1, 4, 5, 3), torch.uint8))
    assert torch.equal(out.cpu(), reference(x.cpu()))


@pytest.mark.parametrize(
    ("x", "out", "message"),
    [
        (torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 3, dtype=torch.uint8), r"x: expected shape \[B, 3, H, W\]"),
        (torch.zeros(1, 3, 4, 4, dtype=torch.int32), torch.zeros(1, 4, 4, 3, dtype=torch.uint8), "x: expected float"),
        (torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, 3), "out: expected a uint8 buffer"),
        (torch.zeros(2, 3, 4, 5), torch.zeros(2, 5, 4, 3, dtype=torch.uint8), r"out: expected shape \[2, 4, 5, 3\]"),
        (
            torch.zeros(1, 3, 4, 4),
            torch.zeros(1, 4, 4, 3, dtype=torch.uint8, device="meta"),
            "out: expected a buffer on",
        ),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(x: torch.Tensor, out: torch.Tensor, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        post.postprocess(x, out)


def test_passes_torch_library_opcheck() -> None:
    x = decoded(2, 6, 5, torch.float32).to(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.framewire.postprocess.default, (x, poisoned((2, 6, 5, 3), torch.uint8)))


def test_traces_into_one_graph_under_torch_compile() -> None:
    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(latent_image: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return post.postprocess(latent_image * 0.5, out)

    x = decoded(2, 6, 5, torch.float32)
    out = poisoned((2, 6, 5, 3), torch.uint8)
    step(x, out)
    assert torch.equal(out.cpu(), reference(x.cpu() * 0.5))
