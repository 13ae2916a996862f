"""What the load generator sends: real JPEG frames of an exact size, and per-app inputs.

A *workload* turns one JPEG into the input map an app expects, and checks an output.
Workloads are registered per app id, so a sweep over apps works for any app whose
workload is known; an unknown app gets the generic ``{image_url, prompt}`` input, and
``--input field=value`` overrides any field for any app.
"""

from __future__ import annotations

import io
import json
import random
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_SOI = b"\xff\xd8"
_COM = b"\xff\xfe"
_COM_MAX_DATA = 65533  # a segment's 2-byte length field counts itself
_COM_MIN = 4  # marker + length, no data


def _pad_with_comments(jpeg: bytes, extra: int) -> bytes:
    """Insert COM segments right after SOI adding exactly ``extra`` bytes (0 or >= 4).

    Decoders skip comment segments, so the image stays the same real, decodable JPEG.
    """
    if extra == 0:
        return jpeg
    if extra < _COM_MIN:
        raise ValueError(f"cannot pad a JPEG by {extra} bytes (a comment segment takes at least {_COM_MIN})")
    segments = []
    while extra:
        data_len = min(extra - _COM_MIN, _COM_MAX_DATA)
        if 0 < extra - (data_len + _COM_MIN) < _COM_MIN:
            data_len -= _COM_MIN  # leave room for one more whole segment
        segments.append(_COM + struct.pack(">H", data_len + 2) + bytes(data_len))
        extra -= data_len + _COM_MIN
    return _SOI + b"".join(segments) + jpeg[2:]


def _encode(width: int, height: int, noise: float, quality: int, seed: int) -> bytes:
    from PIL import Image

    gradient = Image.linear_gradient("L").resize((width, height))
    base = Image.merge(
        "RGB",
        (
            gradient,
            gradient.transpose(Image.Transpose.ROTATE_90).resize((width, height)),  # a no-op when square
            gradient.point(lambda v: 255 - v),
        ),
    )
    if noise > 0:
        rng = random.Random(seed)
        speckle = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
        base = Image.blend(base, speckle, noise)
    out = io.BytesIO()
    base.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def make_jpeg(size_bytes: int, width: int = 512, height: int | None = None, seed: int = 0) -> bytes:
    """A real ``width`` x ``height`` JPEG of exactly ``size_bytes`` bytes.

    It encodes a gradient with as much noise and quality as fit, then pads the rest with
    comment segments. Raises ``ValueError`` when even the plainest image at that size
    does not fit (ask for more bytes or fewer pixels).
    """
    height = width if height is None else height
    if width < 8 or height < 8:
        raise ValueError(f"image must be at least 8x8 px, got {width}x{height}")
    for noise in (0.5, 0.15, 0.04, 0.0):
        low, high, best = 5, 95, None
        while low <= high:  # the highest quality whose natural size leaves room to pad
            quality = (low + high) // 2
            jpeg = _encode(width, height, noise, quality, seed)
            gap = size_bytes - len(jpeg)
            if gap == 0 or gap >= _COM_MIN:
                best, low = jpeg, quality + 1
            else:
                high = quality - 1
        if best is not None:
            return _pad_with_comments(best, size_bytes - len(best))
    raise ValueError(
        f"a {width}x{height} JPEG does not fit in {size_bytes} bytes; give a larger payload or a smaller image"
    )


def jpeg_dimensions(data: bytes) -> tuple[int, int]:
    """(width, height) read from a JPEG's SOF header; raises ``ValueError`` if not a JPEG."""
    if not data.startswith(_SOI):
        raise ValueError("not a JPEG (no SOI marker)")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ValueError(f"corrupt JPEG: expected a marker at byte {i}")
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    raise ValueError("corrupt JPEG: no frame header")


# -- workloads ----------------------------------------------------------------------

Check = Callable[[Mapping[str, Any]], str | None]


@dataclass(frozen=True)
class Workload:
    """How to drive one app: its realtime path, its input, and what a good output is.

    ``make_input(jpeg, session)`` returns the input map without ``request_id`` (the
    generator adds it per frame); ``check(output)`` returns None for a good output or a
    short reason. ``builtin`` is the name ``framewire serve --builtin-apps`` knows it by.
    """

    app: str
    make_input: Callable[[bytes, int], dict[str, Any]]
    check: Check | None = None
    builtin: str | None = None
    path: str = "realtime"
    notes: str = ""

    @property
    def ws_path(self) -> str:
        return f"/{self.app}/{self.path}"


def _echo_input(jpeg: bytes, session: int) -> dict[str, Any]:
    return {"image_url": jpeg, "prompt": f"session {session}"}


def _echo_check(output: Mapping[str, Any]) -> str | None:
    image = output.get("image")
    if not isinstance(image, bytes):
        return "output has no image bytes"
    if output.get("size_bytes") != len(image):
        return f"size_bytes {output.get('size_bytes')} != {len(image)} image bytes"
    return None


def _diffusion_input(jpeg: bytes, session: int) -> dict[str, Any]:
    width, height = jpeg_dimensions(jpeg)
    return {
        "prompt": "a watercolor fox in fresh snow, soft light",
        "image_url": jpeg,
        "strength": 0.5,
        "num_inference_steps": 2,
        "seed": 1000 + session,
        "image_size": {"width": width, "height": height},
        "sync_mode": True,
    }


def _image_check(output: Mapping[str, Any]) -> str | None:
    images = output.get("images")
    if not isinstance(images, list) or not images or not isinstance(images[0], Mapping):
        return "output has no images"
    content = images[0].get("content")
    if not isinstance(content, bytes) or not content.startswith(_SOI):
        return "images[0].content is not JPEG bytes"
    return None


WORKLOADS: dict[str, Workload] = {}


def register(workload: Workload) -> Workload:
    """Make ``workload`` the way to drive its app (replaces an earlier one)."""
    WORKLOADS[workload.app] = workload
    return workload


register(Workload("framewire/echo", _echo_input, _echo_check, builtin="echo", notes="returns the input image"))
register(Workload("framewire/lcm", _diffusion_input, _image_check, builtin="lcm", notes="img2img, 2 steps"))
register(
    Workload("framewire/sdxl-turbo", _diffusion_input, _image_check, builtin="sdxl-turbo", notes="img2img, 2 steps")
)


def workload_for(app: str) -> Workload:
    """The registered workload for ``app``, else a generic one (``image_url`` + ``prompt``,
    no output check, app loaded with ``--app``/``--builtin-apps`` by the caller)."""
    found = WORKLOADS.get(app)
    if found is not None:
        return found
    return Workload(app, _echo_input, None, notes="generic input")


def parse_override(text: str) -> tuple[str, Any]:
    """``field=value`` → (field, value): the value is read as JSON when it parses
    (``4``, ``0.5``, ``true``, ``{"width": 256}``), else kept as a string."""
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--input {text!r}: expected field=value")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return name.strip(), value


class FrameMaker:
    """Encodes one session's frames: the same input each time, with a fresh ``request_id``."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        import msgpack

        if "request_id" in fields:
            raise ValueError("the input must not set request_id; the generator numbers frames")
        self._fields = dict(fields)
        self._packb = msgpack.packb

    def __call__(self, request_id: int) -> bytes:
        self._fields["request_id"] = request_id
        packed: bytes = self._packb(self._fields, use_bin_type=True)
        return packed


def session_inputs(
    workload: Workload, jpeg: bytes, sessions: int, overrides: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """One input map per session: the workload's fields, then ``overrides`` on top."""
    return [{**workload.make_input(jpeg, s), **(overrides or {})} for s in range(sessions)]
