"""Pixels in and out of the models: decode, pre/post-process, JPEG.

:func:`normalise_into` and :func:`to_uint8` run the fused kernels of :mod:`kernels`
(``preprocess`` and ``postprocess``, torch custom ops): the first turns decoded uint8 HWC
images into the models' normalised NCHW input, written into the runner's preallocated
buffer; the second turns the VAE's float NCHW output in [-1, 1] into uint8 HWC for the
JPEG encoder. Where Triton cannot run (no CUDA, ``--no-kernels``) the ops run their torch
references, which compute the same values, and say so once in the log.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from framewire.engine.api import InputError
from framewire.kernels.postprocess import postprocess, postprocess_reference
from framewire.kernels.preprocess import preprocess

#: Larger inputs are refused before decoding (a decompression bomb guard).
MAX_INPUT_PIXELS = 40_000_000


def normalise_into(images: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``images`` uint8 ``[B, H, W, 3]`` → ``out`` float ``[B, 3, H, W]`` in [-1, 1]; returns ``out``.

    ``out`` may have more rows than ``images`` (a padded bucket); those are left as they were.
    Images of another height or width than ``out`` are resized (bilinear).
    """
    return preprocess(images.unbind(0), out)


def to_uint8(pixels: torch.Tensor, *, fused: bool = True) -> torch.Tensor:
    """``pixels`` float ``[B, 3, H, W]`` in [-1, 1] → a new uint8 ``[B, H, W, 3]`` (rounded as diffusers does).

    The output is allocated here, so inside ``torch.compile`` it is the graph's own output
    (with CUDA graphs, a buffer of the graph's pool, valid until the graph's next replay).
    ``fused=False`` runs the op's torch reference as plain torch operations, for a caller
    that knows the kernel cannot run on its device: a compiler then fuses them into the
    VAE's last layer rather than calling out to the op (the same values either way).
    """
    batch, _, height, width = pixels.shape
    out = torch.empty((batch, height, width, 3), dtype=torch.uint8, device=pixels.device)  # [B, H, W, 3]
    return postprocess(pixels, out) if fused else postprocess_reference(pixels, out)


def decode_image(data: bytes, width: int, height: int, max_decode_pixels: int = MAX_INPUT_PIXELS) -> np.ndarray:
    """Encoded image bytes → uint8 ``[height, width, 3]``, resized (never rejected for its shape).

    Transparent pixels become white (sketch canvases); EXIF rotation is applied.
    Raises :class:`InputError` naming ``image_url`` when the bytes are not an image, or
    when decoding it would take more than ``max_decode_pixels`` (a JPEG much larger than
    the target decodes at reduced scale and counts at that scale), before decoding.
    """
    try:
        with Image.open(io.BytesIO(data)) as opened:
            img: Image.Image = opened
            if img.width * img.height > MAX_INPUT_PIXELS:
                raise InputError(
                    f"image_url: the image is {img.width}x{img.height}; the limit is {MAX_INPUT_PIXELS} pixels",
                    field="image_url",
                )
            img.draft("RGB", (width, height))  # JPEG: decode at a reduced scale when much larger
            if img.width * img.height > max_decode_pixels:
                raise InputError(
                    f"image_url: decoding this image takes {img.width}x{img.height} pixels; the limit is "
                    f"{max_decode_pixels / 1e6:g} megapixels (--max-decode-megapixels): send a smaller image or a JPEG",
                    field="image_url",
                    code="OVER_BUDGET",
                )
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = Image.new("RGB", rgba.size, (255, 255, 255))
                img.paste(rgba, mask=rgba.getchannel("A"))
            elif img.mode != "RGB":
                img = img.convert("RGB")
            if img.size != (width, height):
                img = img.resize((width, height), Image.Resampling.BICUBIC)
            return np.asarray(img, dtype=np.uint8)
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"image_url: cannot decode the image ({exc})", field="image_url") from None


def encode_jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    """uint8 ``[H, W, 3]`` → JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
