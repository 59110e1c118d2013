"""Images and video files in, checked once: what ``slimvlm run`` / ``viz`` / ``demo`` read from disk.

- :func:`load_image`: any image file PIL reads → an 8-bit RGB ``PIL.Image``, decoded in full (a truncated or
  corrupt file fails here, not inside a model), upright (EXIF orientation applied), transparency composited onto
  white (as transformers' ``convert_to_rgb`` does) and 16-bit greyscale scaled to 8 bits (not clipped).
- :func:`load_video`: a video file (MP4, WebM, MKV, AVI, MOV, GIF, ...; decoded with PyAV, the ``av`` package,
  whose wheels bundle FFmpeg) → :class:`Video`, ``num_frames`` frames sampled uniformly over the whole clip or
  at a fixed rate (``fps``). ``Video.frames`` is a ``(T, H, W, 3)`` uint8 array, the form the families' video
  processors take (``processor(videos=[video.frames], text=...)``).

Every problem (missing file, not an image / video, truncated data, no frames, a mode with no defined range) is a
:class:`MediaError` (a ``ValueError``) with one line naming the file and the problem.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MediaError", "Video", "load_image", "load_video", "sample_indices"]


class MediaError(ValueError):
    """An image or video file that cannot be used; the message names the file and the problem."""


def _existing(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MediaError(f"no such file: {path}")
    if not os.path.isfile(path):
        raise MediaError(f"{path} is not a file")
    return path


# ----------------------------------------------------------------------------------------------- images


def _to_8bit(img: Any, path: str) -> Any:
    """High-bit-depth modes → 8 bits by their declared range: 16-bit greyscale (``I;16*``; ``I`` read from a
    16-bit PNG) is divided by 257, so 65535 → 255. Modes whose range the file does not define are refused."""
    from PIL import Image

    mode = img.mode
    if mode.startswith("I;16") or (mode == "I" and img.format == "PNG"):
        a = np.asarray(img).astype(np.float64)
        return Image.fromarray(np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8), "L")
    if mode in ("I", "F"):
        kind = "32-bit integer" if mode == "I" else "32-bit float"
        raise MediaError(f"{path} is a {kind} image (PIL mode {mode}): its value range is not defined; convert it "
                         "to an 8- or 16-bit image first")
    return img


def load_image(path: str | os.PathLike) -> Any:
    """The image at ``path`` as an 8-bit RGB ``PIL.Image``, fully decoded.

    EXIF orientation is applied (a phone photo comes out upright); transparency (RGBA, LA, palette transparency)
    is composited onto white, as ``transformers.image_transforms.convert_to_rgb`` does; 16-bit greyscale is
    scaled to 8 bits. Raises :class:`MediaError` for a missing, unreadable, truncated or corrupt file and for
    32-bit integer / float images."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = _existing(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated stream fails here
            img = ImageOps.exif_transpose(img) or img
            img = _to_8bit(img, path)
            if "A" in img.getbands() or img.info.get("transparency") is not None:
                rgba = img.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(white, rgba).convert("RGB")
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise MediaError(f"{path} is not an image PIL can read (PNG, JPEG, WebP, ...)") from None
    except MediaError:
        raise
    except (OSError, ValueError, SyntaxError) as err:  # truncated data, broken stream, unsupported conversion
        raise MediaError(f"{path}: cannot decode the image ({err})") from None


# ----------------------------------------------------------------------------------------------- videos


@dataclass(frozen=True)
class Video:
    """Frames sampled from a video file.

    Attributes:
        frames: ``(T, H, W, 3)`` uint8 RGB, in time order.
        indices: the source frame number of each frame (0-based, decoding order = presentation order).
        times: each frame's presentation time in seconds (from the stream's time base).
        total_frames: frames in the file.
        fps: the stream's average frame rate.
        path: the file.
    """

    frames: np.ndarray
    indices: tuple[int, ...]
    times: tuple[float, ...]
    total_frames: int
    fps: float
    path: str

    def __len__(self) -> int:
        return len(self.indices)


def sample_indices(
    total: int, num_frames: int | None, fps: float | None = None, source_fps: float | None = None
) -> list[int]:
    """The frame numbers to keep from a clip of ``total`` frames.

    Uniform (``fps=None``): ``num_frames`` numbers spread evenly over the whole clip, first and last frame
    included: ``round(linspace(0, total - 1, num_frames))`` (the LLaVA-NeXT video demo's sampling,
    ``np.linspace(0, total_frame_num - 1, n, dtype=int)`` in LLaVA-VL/LLaVA-NeXT@02a706c
    ``playground/demo/video_demo.py``, rounded here instead of floored); all frames when the clip is shorter than
    ``num_frames``. Fixed rate (``fps``): one frame every ``1 / fps`` seconds from
    the start, frame ``round(k · source_fps / fps)``, at most ``num_frames`` of them (None: to the end)."""
    if total < 1:
        return []
    if fps is None:
        if num_frames is None or num_frames >= total:
            return list(range(total))
        return sorted({int(i) for i in np.round(np.linspace(0, total - 1, num_frames))})
    if source_fps is None or source_fps <= 0:
        raise ValueError("fixed-rate sampling needs the source frame rate")
    step = source_fps / fps
    picked = []
    k = 0
    while num_frames is None or len(picked) < num_frames:
        i = int(round(k * step))
        if i >= total:
            break
        if not picked or i != picked[-1]:
            picked.append(i)
        k += 1
    return picked


def _check_count(value: Any, name: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def load_video(path: str | os.PathLike, num_frames: int | None = 8, *, fps: float | None = None) -> Video:
    """Decode ``num_frames`` frames of the video at ``path`` (PyAV).

    ``fps=None``: frames spread uniformly over the whole clip; ``fps=F``: one frame every ``1/F`` seconds from
    the start (assumes a constant frame rate: the stream's average), at most ``num_frames`` (None: all of
    them). See :func:`sample_indices`. The frame count is the container's, or the number of video packets
    when the container does not store it; if the stream then decodes to fewer frames, the sampling is redone
    over the frames it has. Raises :class:`MediaError` for a missing file, a file that is not a video (or has
    no video stream), a video with no frames, and data that does not decode."""
    _check_count(num_frames, "num_frames")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < float("inf")):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    import av

    path = _existing(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        total = int(stream.frames or 0)
        if total <= 0:  # the container keeps no count (WebM, MKV, ...): count the video packets
            try:
                total = sum(1 for p in container.demux(stream) if p.size)
            except av.FFmpegError as err:
                raise MediaError(f"{path}: cannot read the video data ({_reason(err)})") from None
    if total <= 0:
        raise MediaError(f"{path} has no video frames")
    wanted = sample_indices(total, num_frames, fps, rate)
    frames, times, decoded = _decode(path, wanted)
    if len(frames) < len(wanted):  # fewer frames decode than were counted
        if decoded == 0:
            raise MediaError(f"{path} has no decodable video frames")
        total = decoded
        wanted = sample_indices(total, num_frames, fps, rate)
        frames, times, _ = _decode(path, wanted)
    return Video(np.stack(frames), tuple(wanted), tuple(times), total, rate or 0.0, path)


def _open(path: str) -> Any:
    import av

    try:
        container = av.open(path)
    except (av.FFmpegError, UnicodeDecodeError) as err:
        raise MediaError(f"{path} is not a video PyAV (FFmpeg) can read ({_reason(err)})") from None
    if not container.streams.video:
        container.close()
        raise MediaError(f"{path} has no video stream (an empty or audio-only file)")
    if container.format.name == "image2" or container.format.name.endswith("_pipe"):  # FFmpeg's still-image readers
        container.close()
        raise MediaError(f"{path} is a still image ({container.format.name}), not a video; give it as an image")
    return container


def _decode(path: str, wanted: list[int]) -> tuple[list[np.ndarray], list[float], int]:
    """Decode from the start, keeping the frames numbered in ``wanted`` (sorted); returns them, their times and
    how many frames were decoded (all of them when the stream ended early). A decoding error after the first
    frame ends the stream there (a damaged tail), as players do."""
    import av

    want = set(wanted)
    last = max(wanted) if wanted else -1
    frames, times = [], []
    n = 0
    with _open(path) as container:
        try:
            for frame in container.decode(container.streams.video[0]):
                if n in want:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    times.append(float(frame.time) if frame.time is not None else float("nan"))
                n += 1
                if n > last:
                    break
        except av.FFmpegError as err:
            if n == 0:
                raise MediaError(f"{path}: cannot decode the video ({_reason(err)})") from None
    return frames, times, n


def _reason(err: Exception) -> str:
    text = getattr(err, "strerror", None) or str(err)
    return str(text).split(":")[-1].strip() or type(err).__name__
