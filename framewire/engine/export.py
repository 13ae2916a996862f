"""ONNX export of the UNet and the VAE decoder, the first half of the TensorRT backend.

The exported graphs take flat tensors (no dicts, no optional arguments) and have a
dynamic batch axis, so one engine serves every batch bucket of one image size.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger("framewire.engine")

OPSET = 18


class UNetForExport(nn.Module):
    """The UNet with a flat signature: (sample, timestep, encoder_hidden_states[, timestep_cond]
    [, text_embeds, time_ids]) → model output, all ``[B, ...]``."""

    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet
        self.has_w = unet.config.time_cond_proj_dim is not None
        self.sdxl = unet.config.addition_embed_type == "text_time"

    def input_names(self) -> list[str]:
        names = ["sample", "timestep", "encoder_hidden_states"]
        if self.has_w:
            names.append("timestep_cond")
        if self.sdxl:
            names += ["text_embeds", "time_ids"]
        return names

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, *rest: torch.Tensor
    ) -> torch.Tensor:
        extra = list(rest)
        w = extra.pop(0) if self.has_w else None
        added = {"text_embeds": extra[0], "time_ids": extra[1]} if self.sdxl else None
        out: torch.Tensor = self.unet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            timestep_cond=w,
            added_cond_kwargs=added,
            return_dict=False,
        )[0]
        return out

    def example(
        self, batch: int, height: int, width: int, *, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, ...]:
        """Example inputs for a latent of ``height`` x ``width`` (the image size / 8)."""
        config = self.unet.config
        gen = torch.Generator(device).manual_seed(0)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=gen, device=device).to(dtype)

        args = [
            randn(batch, config.in_channels, height, width),
            torch.linspace(999, 1, batch, device=device),
            randn(batch, 77, config.cross_attention_dim),
        ]
        if self.has_w:
            args.append(randn(batch, config.time_cond_proj_dim))
        if self.sdxl:
            pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
            args.append(randn(batch, pooled))
            args.append(
                torch.tensor([[8 * height, 8 * width, 0, 0, 8 * height, 8 * width]] * batch, device=device).to(dtype)
            )
        return tuple(args)


class DecoderForExport(nn.Module):
    """VAE decode: latents already divided by the scaling factor → pixels in [-1, 1]."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.vae.decode(latents, return_dict=False)[0]
        return out


def _batch_axes(module: nn.Module, count: int, batch: Any) -> tuple[Any, ...]:
    """Dynamic-shape specs shaped like ``forward``'s parameters (``*rest`` is one nested tuple)."""
    axis = {0: batch}
    if isinstance(module, UNetForExport):
        return (axis, axis, axis, tuple(axis for _ in range(count - 3)))
    return tuple(axis for _ in range(count))


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    # The exporter's own deprecation notes and axis-naming chatter say nothing actionable.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"torch(\.|$)")
        warnings.filterwarnings("ignore", message=r".*axis name.*")
        warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*", category=FutureWarning)
        yield


def export(module: nn.Module, args: tuple[torch.Tensor, ...], names: list[str], output: str, path: Path) -> Path:
    """Export ``module`` to ONNX at ``path`` with a dynamic batch axis on every input."""
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=64)
    module.eval()
    with _quiet_export(), torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=names,
            output_names=[output],
            dynamic_shapes=_batch_axes(module, len(args), batch),
            dynamo=True,
            opset_version=OPSET,
            verbose=False,
        )
    log.info("exported %s to %s", type(module).__name__, path)
    return path
