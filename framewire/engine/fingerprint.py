"""Fingerprints of frames, to answer an unchanged frame with the output already made.

A :class:`Fingerprint` is made from an app's :class:`framewire.engine.api.FrameIdentity`
off the device thread: a digest of everything (exact match), a digest of the parameters
alone, and, only when a session asked for similarity, a small grey thumbnail of the image
(decoded at a reduced scale). Two frames are *similar* when their parameters are equal and
their thumbnails differ by less than the threshold (mean absolute difference, 0-1).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

from framewire.engine.api import FrameIdentity

if TYPE_CHECKING:
    import numpy as np

#: Thumbnail side in pixels: small enough to decode in ~1 ms, large enough to see a stroke.
THUMB_SIDE = 32
#: Larger images get no thumbnail (and so are never "similar"): decoding them is not cheap.
MAX_THUMB_SOURCE_PIXELS = 40_000_000


@dataclass(frozen=True, eq=False)
class Fingerprint:
    exact: bytes
    params: bytes
    thumb: np.ndarray | None = None  # float32 [THUMB_SIDE, THUMB_SIDE] in 0..1

    def likeness(self, other: Fingerprint, threshold: float) -> str | None:
        """``"exact"`` when nothing differs, ``"similar"`` within ``threshold``, else None."""
        if self.exact == other.exact:
            return "exact"
        if threshold <= 0 or self.params != other.params or self.thumb is None or other.thumb is None:
            return None
        if self.thumb.shape != other.thumb.shape:
            return None
        difference = float(abs(self.thumb - other.thumb).mean())
        return "similar" if difference <= threshold else None


def fingerprint(identity: FrameIdentity, *, thumbnail: bool = False) -> Fingerprint:
    """The fingerprint of an app's frame identity; the thumbnail only when asked for."""
    exact = hashlib.blake2b(digest_size=20)
    exact.update(len(identity.params).to_bytes(8, "little"))
    exact.update(identity.params)
    if identity.image is not None:
        exact.update(identity.image)
    thumb = None
    if thumbnail and identity.image is not None:
        thumb = grey_thumbnail(identity.image)
    return Fingerprint(exact.digest(), identity.params, thumb)


def grey_thumbnail(data: bytes, side: int = THUMB_SIDE) -> np.ndarray | None:
    """Encoded image bytes → float32 ``[side, side]`` grey levels in 0..1, or None if undecodable."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            img: Image.Image = opened
            if img.width * img.height > MAX_THUMB_SOURCE_PIXELS:
                return None
            img.draft("L", (side * 2, side * 2))  # JPEG: decode at 1/2 .. 1/8 scale
            small = img.convert("L").resize((side, side), Image.Resampling.BILINEAR)
            return np.asarray(small, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
