"""Small media files the tests make themselves (nothing downloaded): videos encoded with PyAV whose frame ``i``
is a flat grey of level ``LEVEL * i``, so a decoded frame tells which source frame it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: grey level step between consecutive frames of :func:`write_video`
LEVEL = 20


def write_video(path: Path, frames: int, *, fps: int = 10, size: tuple[int, int] = (48, 64), codec: str = "mpeg4",
                fmt: str | None = None) -> Path:
    """Encode ``frames`` flat grey frames (frame ``i`` at level ``LEVEL * i``) with PyAV."""
    import av

    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[1], size[0], "yuv420p"
        out.start_encoding()
        for i in range(frames):
            pixels = np.full((size[0], size[1], 3), (LEVEL * i) % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def frame_number(frame: np.ndarray) -> int:
    """Which source frame of :func:`write_video` a decoded frame is (its mean grey level / LEVEL)."""
    return int(round(float(frame.mean()) / LEVEL))
