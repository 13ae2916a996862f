"""Decoded video frames between the WebRTC stack (PyAV frames) and apps (:class:`VideoFrame`).

Apps get packed RGB24 rows; PyAV planes may pad each row to an alignment, so rows are copied
out (or in) one by one when they are. Scaling and colour conversion are one ``sws_scale``
call, which runs without the GIL: callers run :func:`to_app_frame` on a thread pool.
"""

from __future__ import annotations

from fractions import Fraction

import av

from framewire.engine.api import VideoFrame


def to_app_frame(frame: av.VideoFrame, width: int, height: int) -> VideoFrame:
    """``frame`` scaled to ``width`` x ``height``, as RGB24 (a copy the app owns)."""
    rgb = frame.reformat(width=width, height=height, format="rgb24")
    plane = rgb.planes[0]
    row = width * 3
    stride = plane.line_size
    if stride == row:
        data = bytes(plane)
    else:
        view = memoryview(plane)
        data = b"".join(view[y * stride : y * stride + row] for y in range(height))
    return VideoFrame(width=width, height=height, data=data)


def to_av_frame(frame: VideoFrame, pts: int | None, time_base: Fraction | None) -> av.VideoFrame:
    """An app's output frame as a PyAV frame stamped ``pts`` / ``time_base`` (the input's)."""
    out = av.VideoFrame(frame.width, frame.height, "rgb24")
    plane = out.planes[0]
    row = frame.width * 3
    stride = plane.line_size
    if stride == row:
        plane.update(frame.data)
    else:
        view = memoryview(plane)
        data = memoryview(frame.data)
        for y in range(frame.height):
            view[y * stride : y * stride + row] = data[y * row : (y + 1) * row]
    out.pts = pts
    out.time_base = time_base
    return out
