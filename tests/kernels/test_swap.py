"""swap_group_norm_silu on tiny diffusers models built from config: same outputs, fewer ops."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import pytest
import torch
from torch import nn

from framewire.kernels import group_norm_silu as gns
from framewire.kernels import runtime
from tests.kernels.conftest import DEVICE, require_kernel

diffusers = pytest.importorskip("diffusers")
resnet = pytest.importorskip("diffusers.models.resnet")


def tiny_unet() -> nn.Module:
    """SD1.5's layout at toy width (groups of 4-8 channels keep the interpreter quick)."""
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
        norm_num_groups=8,
        cross_attention_dim=32,
    ).eval()


def tiny_vae() -> nn.Module:
    """AutoencoderKL with the real 8x geometry (latents are H/8 x W/8)."""
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        force_upcast=False,
    ).eval()


@pytest.fixture(scope="module")
def unet() -> nn.Module:
    return tiny_unet().to(DEVICE)


@pytest.fixture(scope="module")
def vae() -> nn.Module:
    return tiny_vae().to(DEVICE)


def run_unet(model: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    latents = torch.randn((2, 4, 8, 8), generator=g).to(DEVICE)
    prompts = torch.randn((2, 77, 32), generator=g).to(DEVICE)
    timesteps = torch.tensor([999, 400], device=DEVICE)  # a different timestep (embedding) per sample
    with torch.no_grad():
        return model(latents, timesteps, encoder_hidden_states=prompts).sample


def run_vae(model: nn.Module, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    image = torch.rand((1, 3, 32, 40), generator=torch.Generator().manual_seed(6)).to(DEVICE) * 2 - 1
    with torch.no_grad():
        latents = model.encode(image.to(memory_format=memory_format)).latent_dist.mode()
        return model.decode(latents).sample


def count(model: nn.Module, predicate: Callable[[nn.Module], bool]) -> int:
    return sum(1 for m in model.modules() if predicate(m))


def is_resnet(m: nn.Module) -> bool:
    return isinstance(m, resnet.ResnetBlock2D)


def test_swap_fuses_both_norms_of_every_resnet_and_the_output_norm(unet: nn.Module) -> None:
    require_kernel(gns._apply_kernel)
    swapped = copy.deepcopy(unet)
    resnets = count(unet, is_resnet)
    assert resnets >= 5
    assert gns.swap_group_norm_silu(swapped) == 2 * resnets + 1
    assert count(swapped, lambda m: isinstance(m, gns.GroupNormSiLU)) == 2 * resnets + 1
    assert isinstance(swapped.conv_act, nn.Identity)
    # GroupNorms that SiLU does not follow (attention, transformer inputs) are left alone.
    assert count(swapped, lambda m: type(m) is nn.GroupNorm) == count(unet, lambda m: type(m) is nn.GroupNorm) - (
        2 * resnets + 1
    )


def test_swap_keeps_parameters_and_state_dict_keys(unet: nn.Module) -> None:
    require_kernel(gns._apply_kernel)
    swapped = copy.deepcopy(unet)
    before = {k: v.clone() for k, v in swapped.state_dict().items()}
    gns.swap_group_norm_silu(swapped)
    after = swapped.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    swapped.load_state_dict(before)  # a checkpoint still loads into the swapped model


def test_swapped_unet_gives_the_same_noise_prediction(unet: nn.Module) -> None:
    require_kernel(gns._apply_kernel)
    swapped = copy.deepcopy(unet)
    gns.swap_group_norm_silu(swapped)
    torch.testing.assert_close(run_unet(swapped), run_unet(unet), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_swapped_vae_gives_the_same_round_trip(vae: nn.Module, channels_last: bool) -> None:
    require_kernel(gns._apply_kernel)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    original = copy.deepcopy(vae).to(memory_format=memory_format)
    swapped = copy.deepcopy(original)
    assert gns.swap_group_norm_silu(swapped) == 2 * count(vae, is_resnet) + 2  # encoder and decoder tails
    torch.testing.assert_close(run_vae(swapped, memory_format), run_vae(original, memory_format), rtol=1e-5, atol=1e-5)


def test_resnet_time_embedding_keeps_its_silu() -> None:
    """ResnetBlock2D applies its one SiLU module to the time embedding too; that path must not change."""
    require_kernel(gns._apply_kernel)
    torch.manual_seed(2)
    block = resnet.ResnetBlock2D(in_channels=8, out_channels=16, temb_channels=12, groups=4).to(DEVICE).eval()
    swapped = copy.deepcopy(block)
    assert gns.swap_group_norm_silu(swapped) == 2
    g = torch.Generator().manual_seed(3)
    x = torch.randn((2, 8, 5, 6), generator=g).to(DEVICE)
    temb = (torch.randn((2, 12), generator=g) * 3).to(DEVICE)
    with torch.no_grad():
        want = block(x, temb)
        torch.testing.assert_close(swapped(x, temb), want, rtol=1e-5, atol=1e-5)
        # The check has teeth: dropping the embedding's SiLU changes the output.
        broken = copy.deepcopy(swapped)
        broken.nonlinearity = nn.Identity()
        assert not torch.allclose(broken(x, temb), want, rtol=1e-3, atol=1e-3)


def test_scale_shift_resnets_are_left_alone() -> None:
    """With time_embedding_norm="scale_shift" a modulation sits between norm2 and the SiLU."""
    block = resnet.ResnetBlock2D(in_channels=8, temb_channels=12, groups=4, time_embedding_norm="scale_shift")
    assert gns.swap_group_norm_silu(block) == 0
    assert type(block.norm1) is nn.GroupNorm and type(block.nonlinearity) is nn.SiLU


def test_a_second_swap_finds_nothing_to_do(vae: nn.Module) -> None:
    require_kernel(gns._apply_kernel)
    swapped = copy.deepcopy(vae)
    assert gns.swap_group_norm_silu(swapped) > 0
    assert gns.swap_group_norm_silu(swapped) == 0


def test_switched_off_the_swap_leaves_the_model_untouched(vae: nn.Module, caplog: pytest.LogCaptureFixture) -> None:
    runtime.configure(enabled=False)
    model = copy.deepcopy(vae)
    types_before = [type(m) for m in model.modules()]
    with caplog.at_level(logging.INFO, logger="framewire.kernels"):
        assert gns.swap_group_norm_silu(model) == 0
    assert [type(m) for m in model.modules()] == types_before
    assert runtime.OFF in caplog.text


def test_a_swapped_model_switched_off_later_equals_the_original_exactly(unet: nn.Module) -> None:
    require_kernel(gns._apply_kernel)
    swapped = copy.deepcopy(unet)
    gns.swap_group_norm_silu(swapped)
    runtime.configure(enabled=False)  # the op now runs the reference: GroupNorm then SiLU, as before
    assert torch.equal(run_unet(swapped), run_unet(unet))
