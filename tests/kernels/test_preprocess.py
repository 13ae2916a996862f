"""preprocess: uint8 HWC images of any size → normalised float NCHW, into the caller's buffer."""

from __future__ import annotations

import logging

import pytest
import torch

from framewire.kernels import preprocess as pre
from framewire.kernels import runtime
from tests.kernels.conftest import DEVICE, FLOAT_DTYPES, TOLERANCES, poisoned, require_kernel

OUT_H, OUT_W = 37, 29  # 1073 pixels: one full block of 1024 and a ragged one


def images(seed: int = 0, device: torch.device = DEVICE) -> list[torch.Tensor]:
    """Random (never constant) images covering the cases: at size, up, down, odd, 1x1, grey, RGBA, strided."""
    g = torch.Generator().manual_seed(seed)

    def image(h: int, w: int, c: int) -> torch.Tensor:
        return torch.randint(0, 256, (h, w, c), generator=g, dtype=torch.uint8)

    wide = image(OUT_H, 2 * OUT_W, 3)[:, ::2]  # a non-contiguous view, exactly at the bucket size
    made = [
        image(OUT_H, OUT_W, 3),  # at the bucket size: an exact copy
        image(19, 15, 3),  # upscaled
        image(70, 61, 3),  # downscaled (< 2x)
        image(1, 1, 3),  # a single pixel fills everything
        image(23, 40, 1),  # grey
        image(41, 30, 4),  # RGBA
        wide,
    ]
    return [m.to(device) for m in made]


def same_size_images(device: torch.device = DEVICE) -> list[torch.Tensor]:
    """One size for the whole batch (the common case: no per-image table), one of them a strided view."""
    g = torch.Generator().manual_seed(4)
    made = [torch.randint(0, 256, (19, 15, 3), generator=g, dtype=torch.uint8) for _ in range(3)]
    made.append(torch.randint(0, 256, (19, 30, 3), generator=g, dtype=torch.uint8)[:, ::2])
    return [m.to(device) for m in made]


def expected(batch: list[torch.Tensor], dtype: torch.dtype, rows: int, channels_last: bool) -> torch.Tensor:
    out = poisoned((rows, 3, OUT_H, OUT_W), dtype, channels_last)
    return pre.preprocess_reference(batch, out)


@pytest.mark.parametrize("sizes", ["mixed", "same", "at bucket size"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_kernel_matches_reference_for_every_size_dtype_and_layout(
    dtype: torch.dtype, channels_last: bool, sizes: str
) -> None:
    require_kernel(pre._preprocess_kernel)
    batch = {"mixed": images, "same": same_size_images, "at bucket size": lambda: images()[::6]}[sizes]()
    rows = len(batch) + 2  # two padding rows of a batch bucket
    out = poisoned((rows, 3, OUT_H, OUT_W), dtype, channels_last)
    pre._preprocess_triton(batch, out)

    written = out[: len(batch)]
    assert not written.isnan().any(), "some output elements were never written"
    torch.testing.assert_close(written, expected(batch, dtype, rows, channels_last)[: len(batch)], **TOLERANCES[dtype])
    assert out[len(batch) :].isnan().all(), "padding rows must be left as they were"
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_image_at_bucket_size_is_copied_exactly(dtype: torch.dtype) -> None:
    require_kernel(pre._preprocess_kernel)
    image = images()[0]
    out = poisoned((1, 3, OUT_H, OUT_W), dtype)
    pre._preprocess_triton([image], out)
    exact = (image.permute(2, 0, 1).to(torch.float32) * pre.SCALE - 1.0).to(dtype)
    assert torch.equal(out[0], exact)


def test_black_and_white_map_to_minus_one_and_one() -> None:
    require_kernel(pre._preprocess_kernel)
    image = torch.zeros((5, 6, 3), dtype=torch.uint8, device=DEVICE)
    image[:, 3:] = 255
    out = poisoned((1, 3, 5, 6), torch.float32)
    pre._preprocess_triton([image], out)
    assert (out[0, :, :, :3] == -1.0).all()
    assert (out[0, :, :, 3:] == 1.0).all()


def test_grey_is_replicated_and_alpha_is_dropped() -> None:
    require_kernel(pre._preprocess_kernel)
    rgb = images()[0]
    grey = rgb[:, :, :1]
    rgba = torch.cat([rgb, torch.randint(0, 256, (OUT_H, OUT_W, 1), dtype=torch.uint8, device=DEVICE)], dim=2)
    out = poisoned((3, 3, OUT_H, OUT_W), torch.float32)
    pre._preprocess_triton([rgb, grey.contiguous(), rgba], out)
    assert torch.equal(out[2], out[0]), "RGBA must equal its RGB"
    assert torch.equal(out[1], out[1, :1].expand(3, -1, -1)), "grey must fill all three channels"
    assert torch.equal(out[1, 0], out[0, 0]), "grey must be the given channel"


def test_images_already_on_the_device_and_on_the_host_give_the_same_input() -> None:
    """On CUDA the host images travel through one pinned staging copy, device images are concatenated."""
    require_kernel(pre._preprocess_kernel)
    host, here = images(device=torch.device("cpu")), images(device=DEVICE)
    out_host = poisoned((len(host), 3, OUT_H, OUT_W), torch.float32)
    out_here = poisoned((len(here), 3, OUT_H, OUT_W), torch.float32)
    pre._preprocess_triton(host, out_host)
    pre._preprocess_triton(here, out_here)
    assert torch.equal(out_host, out_here)


def test_op_runs_the_kernel_and_returns_the_buffer(caplog: pytest.LogCaptureFixture) -> None:
    require_kernel(pre._preprocess_kernel)
    batch = images()
    out = poisoned((len(batch), 3, OUT_H, OUT_W), torch.float16)
    with caplog.at_level(logging.INFO, logger="framewire.kernels"):
        assert pre.preprocess(batch, out) is out
    assert not caplog.records, "the kernel path must not report a fallback"
    torch.testing.assert_close(out, expected(batch, torch.float16, len(batch), False), **TOLERANCES[torch.float16])


def test_switched_off_the_op_runs_the_reference_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    batch = images()
    runtime.configure(enabled=False)
    with caplog.at_level(logging.INFO, logger="framewire.kernels"):
        for _ in range(2):
            out = pre.preprocess(batch, poisoned((len(batch), 3, OUT_H, OUT_W), torch.float32))
    assert torch.equal(out, expected(batch, torch.float32, len(batch), False))
    assert [r.getMessage() for r in caplog.records] == [f"{pre.OP} runs its torch reference: {runtime.OFF}"]


def test_float64_buffers_fall_back_to_the_reference(caplog: pytest.LogCaptureFixture) -> None:
    batch = images()[:2]
    with caplog.at_level(logging.INFO, logger="framewire.kernels"):
        out = pre.preprocess(batch, poisoned((2, 3, OUT_H, OUT_W), torch.float64))
    assert torch.equal(out, expected(batch, torch.float64, 2, False))
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "out dtype is not float16, bfloat16 or float32" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("batch", "out", "message"),
    [
        ([], torch.zeros(1, 3, 4, 4), "images: expected at least one"),
        ([torch.zeros(4, 4, 3, dtype=torch.uint8)] * 3, torch.zeros(2, 3, 4, 4), "images: 3 images do not fit"),
        ([torch.zeros(4, 4, 3, dtype=torch.uint8), torch.zeros(4, 4, 3)], torch.zeros(2, 3, 4, 4), r"images\[1\]"),
        ([torch.zeros(4, 4, 2, dtype=torch.uint8)], torch.zeros(1, 3, 4, 4), r"images\[0\].*\[H, W, 1\|3\|4\]"),
        ([torch.zeros(3, 4, 4, 3, dtype=torch.uint8)], torch.zeros(1, 3, 4, 4), r"images\[0\]"),
        ([torch.zeros(0, 4, 3, dtype=torch.uint8)], torch.zeros(1, 3, 4, 4), r"images\[0\]: height and width"),
        ([torch.zeros(4, 4, 3, dtype=torch.uint8)], torch.zeros(1, 4, 4, 4), r"out: expected shape \[B, 3, H, W\]"),
        (
            [torch.zeros(4, 4, 3, dtype=torch.uint8)],
            torch.zeros(1, 3, 4, 4, dtype=torch.uint8),
            "out: expected a float",
        ),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(
    batch: list[torch.Tensor], out: torch.Tensor, message: str
) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        pre.preprocess(batch, out)


def test_passes_torch_library_opcheck() -> None:
    batch = images()[:3]
    out = poisoned((4, 3, OUT_H, OUT_W), torch.float32)
    torch.library.opcheck(torch.ops.framewire.preprocess.default, (batch, out))


def test_traces_into_one_graph_under_torch_compile() -> None:
    batch = images()[:2]

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return pre.preprocess([a, b], out) * 2.0

    out = poisoned((2, 3, OUT_H, OUT_W), torch.float32)
    doubled = step(batch[0], batch[1], out)
    reference = expected(batch, torch.float32, 2, False)
    torch.testing.assert_close(out, reference, **TOLERANCES[torch.float32])
    torch.testing.assert_close(doubled, reference * 2.0, **TOLERANCES[torch.float32])
