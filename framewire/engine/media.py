"""Image fields shared by the diffusion apps: sizes, inputs, outputs. Torch-free.

Input images arrive as raw bytes (msgpack bin) or a ``data:`` URI. Clients may also send
an http(s) URL: the gateway fetches it (public addresses only, with a timeout and a size
cap, never on the engine's threads) and hands the engine the bytes.
"""

from __future__ import annotations

import base64
import binascii
import struct
import urllib.parse
from typing import Literal

from pydantic import BaseModel, Field

from framewire.engine.api import InputError

#: fal's named image sizes, as (width, height).
SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
ImageSizeName = Literal["square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"]
MIN_SIDE, MAX_SIDE = 64, 2048


class ImageSize(BaseModel):
    width: int = Field(512, ge=MIN_SIDE, le=MAX_SIDE, description="Pixels; rounded down to a multiple of 8.")
    height: int = Field(512, ge=MIN_SIDE, le=MAX_SIDE, description="Pixels; rounded down to a multiple of 8.")


class Image(BaseModel):
    """One generated image. The engine fills ``content``; the gateway may swap it for a ``url``."""

    url: str | None = None
    content: bytes | None = None
    width: int
    height: int
    content_type: str = "image/jpeg"


class ImageOutput(BaseModel):
    """What the diffusion apps return (fal's image-app output shape)."""

    images: list[Image]
    timings: dict[str, float] = Field(default_factory=dict, description="Per-stage times in milliseconds.")
    seed: int
    has_nsfw_concepts: list[bool] = Field(default_factory=list, description="Always false: no safety checker runs.")
    prompt: str = ""


def round8(value: int) -> int:
    return max(MIN_SIDE, value - value % 8)


def named_size(spec: ImageSizeName | ImageSize) -> tuple[int, int]:
    """(width, height) of an ``image_size`` field value, rounded down to multiples of 8."""
    width, height = SIZE_PRESETS[spec] if isinstance(spec, str) else (spec.width, spec.height)
    return round8(width), round8(height)


def fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Scale (width, height) down to ``max_side`` keeping the aspect, multiples of 8, >= 64."""
    scale = min(1.0, max_side / max(width, height))
    return round8(int(width * scale)), round8(int(height * scale))


# -- decoding the image field ---------------------------------------------------------------


def decode_data_uri(uri: str) -> bytes:
    """The payload of a ``data:`` URI (base64 or percent-encoded)."""
    header, sep, payload = uri.partition(",")
    if not sep:
        raise InputError("image_url: data URI has no ',' before its payload", field="image_url")
    if header.endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InputError(f"image_url: invalid base64 in data URI ({exc})", field="image_url") from None
    return urllib.parse.unquote_to_bytes(payload)


def image_bytes(value: bytes | str) -> bytes:
    """The encoded image behind an ``image_url`` value: bytes, or a ``data:`` URI's payload.

    A URL is refused, not fetched: fetching is the gateway's, before the input is queued.
    """
    if isinstance(value, bytes):
        return value
    if value.startswith("data:"):
        return decode_data_uri(value)
    raise InputError(
        "image_url: the engine takes bytes or a data URI; http(s) URLs are fetched by the server before the input "
        "reaches it",
        field="image_url",
    )


def decoded_pixels(head: bytes, width: int, height: int, target: tuple[int, int]) -> int:
    """Pixels decoding a ``width`` x ``height`` image to ``target`` size costs.

    A JPEG (``head`` starts like one) decodes at 1/2, 1/4 or 1/8 scale when it is that much
    larger than the target (Pillow's ``draft``); other formats decode every pixel.
    """
    if head.startswith(b"\xff\xd8"):
        ratio = min(width // max(1, target[0]), height // max(1, target[1]))
        scale = next((s for s in (8, 4, 2) if ratio >= s), 1)
        return -(-width // scale) * -(-height // scale)
    return width * height


def peek_bytes(value: bytes | str, limit: int = 1 << 16) -> bytes | None:
    """The first bytes of an inline image (bytes or base64 data URI) without decoding it all."""
    if isinstance(value, bytes):
        return value[:limit]
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        if header.endswith(";base64"):
            chunk = payload[: (limit // 3) * 4]
            try:
                return base64.b64decode(chunk, validate=False)
            except (binascii.Error, ValueError):
                return None
    return None


def sniff_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG or WebP header, or None if it cannot tell."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP" and len(head) >= 30:
        kind = head[12:16]
        if kind == b"VP8X":
            return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
        if kind == b"VP8L":
            bits = int.from_bytes(head[21:25], "little")
            return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        if kind == b"VP8 ":
            width, height = struct.unpack("<HH", head[26:30])
            return width & 0x3FFF, height & 0x3FFF
        return None
    if head.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                return None
            marker = head[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
                i += 2
                continue
            (length,) = struct.unpack(">H", head[i + 2 : i + 4])
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                height, width = struct.unpack(">HH", head[i + 5 : i + 9])
                return width, height
            i += 2 + length
    return None
