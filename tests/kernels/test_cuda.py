"""What only a GPU can check: CUDA graphs and inductor around the ops (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from framewire.kernels import group_norm_silu as gns
from framewire.kernels import postprocess as post
from framewire.kernels import preprocess as pre
from tests.kernels.conftest import DEVICE, TOLERANCES, require_kernel

pytestmark = pytest.mark.skipif(DEVICE.type != "cuda", reason="needs FRAMEWIRE_TEST_DEVICE=cuda and a GPU")


def test_ops_replay_inside_a_cuda_graph() -> None:
    """The runner's pattern: static buffers, capture once, copy new inputs in, replay."""
    for kernel in (pre._preprocess_kernel, post._postprocess_kernel, gns._apply_kernel):
        require_kernel(kernel)
    g = torch.Generator(device="cuda").manual_seed(0)
    images = [torch.randint(0, 256, (48, 40, 3), generator=g, dtype=torch.uint8, device="cuda") for _ in range(2)]
    model_in = torch.empty((2, 3, 32, 32), dtype=torch.float16, device="cuda")
    weight = torch.randn(3, device="cuda", dtype=torch.float16)
    pixels = torch.empty((2, 32, 32, 3), dtype=torch.uint8, device="cuda")

    def step() -> None:
        pre.preprocess(images, model_in)
        post.postprocess(gns.group_norm_silu(model_in, 3, weight, None).tanh(), pixels)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm up (compiles the kernels) outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    for seed in (1, 2):
        fresh = torch.Generator(device="cuda").manual_seed(seed)
        for image in images:
            image.copy_(torch.randint(0, 256, image.shape, generator=fresh, dtype=torch.uint8, device="cuda"))
        graph.replay()
        torch.cuda.synchronize()
        want_in = pre.preprocess_reference(images, torch.empty_like(model_in))
        torch.testing.assert_close(model_in, want_in, **TOLERANCES[torch.float16])
        activation = gns.group_norm_silu_reference(model_in, 3, weight, None).tanh()
        want = post.postprocess_reference(activation, torch.empty_like(pixels))
        assert (pixels.int() - want.int()).abs().max() <= 1  # fp16 activations may round apart by one level


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_swapped_block_compiles_with_inductor_and_cuda_graphs(memory_format: torch.memory_format) -> None:
    require_kernel(gns._apply_kernel)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU(), nn.Conv2d(32, 8, 1))
    model = model.to("cuda", torch.float16).to(memory_format=memory_format).eval()
    fused = nn.Sequential(model[0], gns.GroupNormSiLU(model[1]), model[3])
    x = torch.randn((2, 8, 24, 20), device="cuda", dtype=torch.float16).to(memory_format=memory_format)
    compiled = torch.compile(fused, fullgraph=True, mode="reduce-overhead")
    with torch.no_grad():
        for _ in range(3):  # record, then replay the graph
            got = compiled(x)
        torch.testing.assert_close(got, model(x), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("case", ["host images", "mixed sizes"])
def test_preprocess_refuses_what_a_graph_would_replay_stale(case: str) -> None:
    require_kernel(pre._preprocess_kernel)
    device = "cpu" if case == "host images" else "cuda"
    images = [torch.zeros((8, 8, 3), dtype=torch.uint8, device=device)]
    images.append(torch.zeros((8, 9 if case == "mixed sizes" else 8, 3), dtype=torch.uint8, device=device))
    out = torch.empty((2, 3, 8, 8), device="cuda")
    pre.preprocess(images, out)  # fine outside a capture
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="CUDA graph capture"), torch.cuda.graph(graph):
        pre.preprocess(images, out)
