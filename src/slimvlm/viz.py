"""Pictures of what a reduction kept, dropped and merged (numpy + PIL only; no matplotlib needed).

Every function returns a ``PIL.Image.Image`` in RGB; :func:`save` writes one as an optimised PNG. The patch
grid is drawn over the image *as the tower saw it*: the image is resized (not cropped) to
``(cols · cell) × (rows · cell)`` pixels, the same squash that :func:`slimvlm.assets.preprocess` applies.

What a cell shows, for input token ``n`` of item ``b`` (``a = reduction.assignment[b, n]``):

- **dropped** (``a == -1``): greyed and darkened (luma × ``DROP_DIM``, no colour);
- **merge group** (several input tokens share slot ``a``; with ``show_groups``): tinted with the colour of
  slot ``a``. Colours come from a fixed golden-ratio hue sequence (:func:`slot_color`), so they are
  deterministic and neighbouring slot numbers get very different hues. The tint replaces the pixel's chroma
  and keeps its luma, only lifted into ``[TINT_LUMA_MIN, TINT_LUMA_MAX]`` so that black or white areas can
  carry a colour; mid-tones keep their brightness exactly (up to 8-bit rounding);
- **kept alone** (a slot that holds only its own token): the image unchanged;
- **anchor** (``reduction.anchors[b, m]`` for a real slot ``m``: the token an output token stands for, a kept
  token or a merge destination): outlined, a white line with a dark line inside it;
- **summary slot** (``summary_slot``, e.g. PruMerge's appended extra token, which sums every pruned token that
  no kept token took): its members are dimmed like dropped tokens and hatched, and its anchor is not outlined.

Errors (a grid that does not match N, an item out of range, a malformed image, ...) raise ``ValueError``.
"""

from __future__ import annotations

import colorsys
import math
from typing import Any, Mapping, Sequence

import numpy as np

from .methods.base import Reduction

__all__ = [
    "DROP_DIM",
    "TINT_ALPHA",
    "TINT_LUMA_MIN",
    "TINT_LUMA_MAX",
    "slot_color",
    "cell_states",
    "overlay",
    "frame_strip",
    "method_grid",
    "stack",
    "save",
]

#: Luma factor of dropped (and summarised) patches, which are also turned grey.
DROP_DIM = 0.45
#: How much of a tinted pixel's chroma comes from its group colour (the rest is the image's own chroma).
TINT_ALPHA = 0.5
#: Luma range of tinted pixels (full-range BT.601), so that tints stay visible on black and white.
TINT_LUMA_MIN = 45.0
TINT_LUMA_MAX = 215.0

_GOLDEN = 0.6180339887498949
_WHITE = (255, 255, 255)
_DARK = (20, 20, 20)
_HATCH = (150, 150, 150)
_TEXT = (20, 20, 20)
_BORDER_DIM = 0.35


def slot_color(slot: int) -> tuple[int, int, int]:
    """The fixed RGB colour of output slot ``slot``: hue ``slot · φ⁻¹ mod 1`` (golden-ratio steps), saturated.

    Lightness alternates in three steps so that slots whose hues come close again still differ."""
    if slot < 0:
        raise ValueError(f"slot must be >= 0, got {slot}")
    hue = (0.11 + slot * _GOLDEN) % 1.0
    value = (1.0, 0.8, 0.9)[slot % 3]
    r, g, b = colorsys.hsv_to_rgb(hue, 0.9, value)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


# ---------------------------------------------------------------------------------------------------------------
# input checks


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return int(value)


def _check_reduction(reduction: Any) -> Reduction:
    if not isinstance(reduction, Reduction):
        raise ValueError(f"expected a slimvlm Reduction (from slimvlm.reduce), got {type(reduction).__name__}")
    return reduction


def _check_item(reduction: Reduction, item: Any) -> int:
    b = len(reduction)
    item = _as_int(item, "item")
    if not -b <= item < b:
        raise ValueError(f"item {item} is out of range for a reduction of {b} item(s)")
    return item % b


def _check_grid(grid: Any, n: int) -> tuple[int, int]:
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"N={n} tokens is not a square grid; pass grid=(rows, cols)")
        return side, side
    try:
        rows, cols = grid
    except (TypeError, ValueError):
        raise ValueError(f"grid must be (rows, cols), got {grid!r}") from None
    rows, cols = _as_int(rows, "grid rows"), _as_int(cols, "grid cols")
    if rows < 1 or cols < 1:
        raise ValueError(f"grid must be positive (rows, cols), got {grid!r}")
    if rows * cols != n:
        raise ValueError(f"grid {rows}x{cols} has {rows * cols} cells but the reduction has N={n} input tokens")
    return rows, cols


def _to_numpy(t: Any) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu()
    return np.asarray(t)


def _as_rgb(image: Any) -> np.ndarray:
    """PIL image or (H, W, 3|4) / (H, W) array (uint8, or float in [0, 1] or [0, 255]) → (H, W, 3) uint8."""
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - pillow is a core dependency of the assets extra
        raise ImportError("slimvlm.viz needs pillow; install with: pip install pillow") from err
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):
        raise ValueError(
            "image must be a PIL image or an (H, W, 3) array, got a torch tensor; pass the original picture, "
            "not the normalised pixel_values"
        )
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"image must have shape (H, W, 3), (H, W, 4) or (H, W), got {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image is empty: shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"image must be uint8 or float, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("image contains NaN or inf values")
    if np.issubdtype(np.asarray(image).dtype, np.floating) and arr.max() <= 1.0:
        arr = arr * 255.0
    return np.clip(np.round(arr), 0, 255).astype(np.uint8)


def cell_states(
    reduction: Reduction, item: int = 0, grid: tuple[int, int] | None = None, *, summary_slot: int | None = None
) -> dict[str, np.ndarray]:
    """The per-cell facts an overlay draws, as ``(rows, cols)`` arrays (useful for tests and custom plots).

    Returns ``assignment`` (int, ``-1`` dropped), ``dropped``, ``anchor`` (outlined), ``grouped`` (member of a
    slot that holds two or more input tokens; tinted), ``summary`` (member of ``summary_slot``), all bool.
    ``summary_slot`` may be negative, counted from the end of the item's real slots (``-1``: the last one)."""
    reduction = _check_reduction(reduction)
    item = _check_item(reduction, item)
    assign = _to_numpy(reduction.assignment[item]).astype(np.int64)
    n = assign.shape[0]
    rows, cols = _check_grid(grid, n)
    length = int(reduction.lengths[item])
    anchors = _to_numpy(reduction.anchors[item]).astype(np.int64)[:length]
    bad = assign[(assign < -1) | (assign >= length)]
    if bad.size:
        raise ValueError(
            f"assignment of item {item} holds slot {int(bad[0])}, outside [-1, {length - 1}] (the item has {length} "
            "real output tokens)"
        )
    bad = anchors[(anchors < -1) | (anchors >= n)]
    if bad.size:
        raise ValueError(f"anchors of item {item} hold token {int(bad[0])}, outside [-1, {n - 1}] (N={n})")
    summary = None
    if summary_slot is None and reduction.has_summary(item):  # PruMerge's extra token, flagged by the method
        summary_slot = -1
    if summary_slot is not None:
        summary = _as_int(summary_slot, "summary_slot")
        if not -length <= summary < length:
            raise ValueError(f"summary_slot {summary} is out of range for an item with {length} output tokens")
        summary %= length

    sizes = np.bincount(assign[assign >= 0], minlength=max(length, 1))
    dropped = assign < 0
    grouped = ~dropped & (sizes[np.clip(assign, 0, None)] >= 2)
    is_summary = (assign == summary) if summary is not None else np.zeros(n, dtype=bool)
    anchor = np.zeros(n, dtype=bool)
    keep = anchors >= 0
    if summary is not None:
        keep &= np.arange(length) != summary
    anchor[anchors[keep]] = True
    shape = (rows, cols)
    return {
        "assignment": assign.reshape(shape),
        "dropped": dropped.reshape(shape),
        "anchor": anchor.reshape(shape),
        "grouped": (grouped & ~is_summary).reshape(shape),
        "summary": is_summary.reshape(shape),
    }


# ---------------------------------------------------------------------------------------------------------------
# drawing


def _luma(x: np.ndarray) -> np.ndarray:
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def _chroma(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cb = -0.168736 * x[..., 0] - 0.331264 * x[..., 1] + 0.5 * x[..., 2]
    cr = 0.5 * x[..., 0] - 0.418688 * x[..., 1] - 0.081312 * x[..., 2]
    return cb, cr


def _from_ycc(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    return np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)


def _resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), resample=Image.BICUBIC))


def _default_cell(h: int, w: int, rows: int, cols: int) -> int:
    return max(4, int(round(math.sqrt(h * w / (rows * cols)))))


def overlay(
    image: Any,
    reduction: Reduction,
    item: int = 0,
    grid: tuple[int, int] | None = None,
    *,
    show_groups: bool = True,
    summary_slot: int | None = None,
    cell: int | None = None,
    outline: bool = True,
    borders: bool = True,
) -> "Image.Image":  # noqa: F821
    """Draw item ``item`` of ``reduction`` over ``image``; returns an RGB ``PIL.Image``.

    Args:
        image: the picture the tower saw (PIL image, or an ``(H, W, 3)`` uint8 / float array), before
            normalisation. It is resized to ``(cols · cell, rows · cell)`` pixels.
        reduction: a :class:`~slimvlm.methods.Reduction` of that picture (``reduction.assignment`` is
            ``(B, N)``).
        item: which item of the batch (negative counts from the end).
        grid: the ``(rows, cols)`` token layout in raster order, ``rows · cols == N``; square by default.
        show_groups: tint every member of a slot holding two or more input tokens with that slot's colour
            (merges show as colour groups). Without it, kept and merged patches are left unchanged.
        summary_slot: an output slot that summarises many tokens (PruMerge's extra token: ``-1``, the last real
            slot, with the default ``extra_token=True``); its members are dimmed and hatched, not coloured.
        cell: side of one patch cell in output pixels (>= 4); by default about the image's own patch size.
        outline: outline the anchor patch of every output token.
        borders: with ``show_groups``, darken a 1-px line between neighbouring patches held by different output
            tokens, so that groups of similar colours stay apart.

    Raises:
        ValueError: for a grid that does not match N, an item out of range, a malformed image or reduction.
    """
    from PIL import Image

    states = cell_states(reduction, item, grid, summary_slot=summary_slot)
    rows, cols = states["assignment"].shape
    rgb = _as_rgb(image)
    if cell is None:
        cell = _default_cell(rgb.shape[0], rgb.shape[1], rows, cols)
    cell = _as_int(cell, "cell")
    if cell < 4:
        raise ValueError(f"cell must be >= 4 pixels, got {cell}")
    out = _draw(_resize(rgb, cols * cell, rows * cell), states, cell, show_groups, outline, borders)
    return Image.fromarray(out)


def _expand(mask: np.ndarray, cell: int) -> np.ndarray:
    return np.repeat(np.repeat(mask, cell, axis=0), cell, axis=1)


def _draw(
    img: np.ndarray, states: dict[str, np.ndarray], cell: int, show_groups: bool, outline: bool, borders: bool
) -> np.ndarray:
    x = img.astype(np.float64)
    y = _luma(x)
    out = x.copy()

    dim = _expand(states["dropped"] | states["summary"], cell)
    out[dim] = (y[dim] * DROP_DIM)[:, None]

    if show_groups and states["grouped"].any():
        assign = states["assignment"]
        slots = np.unique(assign[states["grouped"]])
        table = np.zeros((int(assign.max()) + 1, 2))
        for s in slots:
            cb, cr = _chroma(np.asarray(slot_color(int(s)), dtype=np.float64))
            table[s] = cb, cr
        px_slot = _expand(np.clip(assign, 0, None), cell)
        tint = _expand(states["grouped"], cell)
        cb, cr = _chroma(x)
        yt = np.clip(y, TINT_LUMA_MIN, TINT_LUMA_MAX)
        tcb = (1 - TINT_ALPHA) * cb + TINT_ALPHA * table[px_slot, 0]
        tcr = (1 - TINT_ALPHA) * cr + TINT_ALPHA * table[px_slot, 1]
        tinted = _from_ycc(yt, tcb, tcr)
        out[tint] = tinted[tint]

    out = np.clip(np.round(out), 0, 255).astype(np.uint8)

    if states["summary"].any():
        hh, ww = out.shape[:2]
        rr, cc = np.mgrid[0:hh, 0:ww]
        hatch = (((rr + cc) % 7) == 0) & _expand(states["summary"], cell)
        out[hatch] = _HATCH

    if borders and show_groups:
        _group_borders(out, states, cell)

    if outline:
        for r, c in zip(*np.nonzero(states["anchor"])):
            y0, x0 = r * cell, c * cell
            y1, x1 = y0 + cell, x0 + cell
            _rect(out, y0, x0, y1, x1, _WHITE)
            if cell >= 12:
                _rect(out, y0 + 1, x0 + 1, y1 - 1, x1 - 1, _DARK)
    return out


def _group_borders(out: np.ndarray, states: dict[str, np.ndarray], cell: int) -> None:
    """Darken a 1-px line between neighbouring cells held by different output tokens (both not dropped)."""
    a = states["assignment"]
    live = ~states["dropped"]
    # vertical lines: between (r, c) and (r, c + 1), drawn on the first pixel column of (r, c + 1)
    for r, c in zip(*np.nonzero((a[:, 1:] != a[:, :-1]) & live[:, 1:] & live[:, :-1])):
        x = (c + 1) * cell
        seg = out[r * cell : (r + 1) * cell, x]
        seg[:] = (seg * _BORDER_DIM).astype(np.uint8)
    for r, c in zip(*np.nonzero((a[1:] != a[:-1]) & live[1:] & live[:-1])):
        y = (r + 1) * cell
        seg = out[y, c * cell : (c + 1) * cell]
        seg[:] = (seg * _BORDER_DIM).astype(np.uint8)


def _rect(a: np.ndarray, y0: int, x0: int, y1: int, x1: int, color: tuple[int, int, int]) -> None:
    """1-px rectangle outline on the half-open box [y0, y1) × [x0, x1)."""
    a[y0, x0:x1] = color
    a[y1 - 1, x0:x1] = color
    a[y0:y1, x0] = color
    a[y0:y1, x1 - 1] = color


# ---------------------------------------------------------------------------------------------------------------
# figures


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _wrap(text: str, font, width: int) -> list[str]:
    lines: list[str] = []
    for para in text.split("\n"):
        words, line = para.split(" "), ""
        for word in words:
            trial = f"{line} {word}".strip()
            if line and font.getlength(trial) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def _text_block(text: str, width: int, size: int, *, align: str = "center") -> "Image.Image":  # noqa: F821
    from PIL import Image, ImageDraw

    font = _font(size)
    lines = _wrap(text, font, width - 4)
    line_h = int(round(size * 1.25))
    block = Image.new("RGB", (width, line_h * len(lines) + size // 3), "white")
    draw = ImageDraw.Draw(block)
    for i, line in enumerate(lines):
        w = font.getlength(line)
        x = (width - w) / 2 if align == "center" else 2
        draw.text((x, i * line_h), line, fill=_TEXT, font=font)
    return block


def _title_size(width: int) -> int:
    return int(min(22, max(11, width / 17)))


def _titled(panel: "Image.Image", title: str | None, size: int) -> "Image.Image":  # noqa: F821
    if not title:
        return panel
    from PIL import Image

    head = _text_block(title, panel.width, size)
    out = Image.new("RGB", (panel.width, head.height + panel.height), "white")
    out.paste(head, (0, 0))
    out.paste(panel, (0, head.height))
    return out


def stack(
    images: Sequence["Image.Image"],  # noqa: F821
    *,
    labels: Sequence[str] | None = None,
    axis: int = 1,
    gap: int = 8,
    caption: str | None = None,
) -> "Image.Image":  # noqa: F821
    """Paste images side by side (``axis=1``) or one under the other (``axis=0``) on white, with ``gap`` pixels
    between them. ``labels`` (one per image) go above each image (``axis=1``) or, turned 90°, left of each
    (``axis=0``). ``caption`` is a line of small text under the whole figure."""
    from PIL import Image

    images = list(images)
    if not images:
        raise ValueError("stack needs at least one image")
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 (vertical) or 1 (horizontal), got {axis!r}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(labels)} labels for {len(images)} images")
    gap = _as_int(gap, "gap")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    if labels is not None:
        if axis == 1:
            size = _title_size(min(im.width for im in images))
            images = [_titled(im, lab, size) for im, lab in zip(images, labels)]
        else:
            size = _title_size(min(im.height for im in images))
            side = []
            for im, lab in zip(images, labels):
                block = _text_block(lab, im.height, size).rotate(90, expand=True)
                row = Image.new("RGB", (block.width + im.width, im.height), "white")
                row.paste(block, (0, 0))
                row.paste(im, (block.width, 0))
                side.append(row)
            width = max(r.width for r in side)
            images = []
            for r in side:  # right-align so that the pictures line up
                padded = Image.new("RGB", (width, r.height), "white")
                padded.paste(r, (width - r.width, 0))
                images.append(padded)
    if axis == 1:
        w = sum(im.width for im in images) + gap * (len(images) - 1)
        h = max(im.height for im in images)
    else:
        w = max(im.width for im in images)
        h = sum(im.height for im in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (w, h), "white")
    pos = 0
    for im in images:
        out.paste(im.convert("RGB"), (pos, 0) if axis == 1 else (0, pos))
        pos += (im.width if axis == 1 else im.height) + gap
    if caption:
        foot = _text_block(caption, w, max(11, _title_size(w // 4) - 3))
        full = Image.new("RGB", (w, h + gap + foot.height), "white")
        full.paste(out, (0, 0))
        full.paste(foot, (0, h + gap))
        out = full
    return out


def method_grid(
    image: Any,
    results: Mapping[str, Reduction],
    grid: tuple[int, int] | None = None,
    *,
    item: int = 0,
    titles: bool = True,
    show_groups: bool = True,
    summary_slots: Mapping[str, int] | None = None,
    cell: int | None = None,
    gap: int = 8,
    caption: str | None = None,
) -> "Image.Image":  # noqa: F821
    """One overlay per method, side by side, for the same ``image``.

    ``results`` maps a label (e.g. ``"PruMerge (adaptive)"``) to that method's :class:`Reduction`; with
    ``titles`` each panel is titled ``"<label>: <kept> tokens"`` (the item's real output tokens). All
    reductions must have the same N. ``summary_slots`` maps labels to their ``summary_slot`` (see
    :func:`overlay`). ``caption`` goes under the row."""
    if not isinstance(results, Mapping) or not results:
        raise ValueError("results must be a non-empty dict {label: Reduction}")
    summary_slots = dict(summary_slots or {})
    unknown = sorted(set(summary_slots) - set(results))
    if unknown:
        raise ValueError(f"summary_slots names label(s) not in results: {', '.join(map(repr, unknown))}")
    ns = {label: _check_reduction(r).assignment.shape[1] for label, r in results.items()}
    if len(set(ns.values())) > 1:
        raise ValueError(f"all reductions must have the same number of input tokens N, got {ns}")
    panels, labels = [], []
    for label, red in results.items():
        panels.append(
            overlay(image, red, item, grid, show_groups=show_groups, summary_slot=summary_slots.get(label), cell=cell)
        )
        labels.append(f"{label}: {red.counts[_check_item(red, item)]} tokens")
    return stack(panels, labels=labels if titles else None, axis=1, gap=gap, caption=caption)


def frame_strip(
    frames: Any,
    reduction: Reduction,
    grid: tuple[int, int] | None = None,
    *,
    show_groups: bool = True,
    summary_slot: int | None = None,
    cell: int | None = None,
    titles: bool = True,
    gap: int = 4,
) -> "Image.Image":  # noqa: F821
    """Overlays of a video, frame ``t`` with item ``t`` of ``reduction`` (one item per frame, as the pipeline
    reduces videos frame by frame), side by side. ``frames``: a sequence of images or a ``(T, H, W, 3)`` array.
    With ``titles`` each frame is labelled ``"t=<t>: <kept>"``."""
    reduction = _check_reduction(reduction)
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4:
            raise ValueError(f"frames array must have shape (T, H, W, 3), got {frames.shape}")
        frames = list(frames)
    elif hasattr(frames, "detach"):
        raise ValueError("frames must be images or a (T, H, W, 3) array, got a torch tensor")
    else:
        try:
            frames = list(frames)
        except TypeError:
            raise ValueError(f"frames must be a sequence of images, got {type(frames).__name__}") from None
    if not frames:
        raise ValueError("frames is empty")
    if len(frames) != len(reduction):
        raise ValueError(
            f"got {len(frames)} frames but the reduction has {len(reduction)} items (it must hold one item per frame)"
        )
    panels = [
        overlay(f, reduction, t, grid, show_groups=show_groups, summary_slot=summary_slot, cell=cell)
        for t, f in enumerate(frames)
    ]
    labels = [f"t={t}: {c}" for t, c in enumerate(reduction.counts)] if titles else None
    return stack(panels, labels=labels, axis=1, gap=gap)


def save(image: "Image.Image", path: str, *, colors: int | None = None) -> int:  # noqa: F821
    """Write ``image`` as an optimised PNG at ``path`` (parent folders created); returns the file size in bytes.

    ``colors`` (2..256) quantises to an adaptive palette first (median cut), which makes photo overlays
    several times smaller at little visible cost."""
    import os

    from PIL import Image

    if not isinstance(image, Image.Image):
        raise ValueError(f"save expects a PIL image, got {type(image).__name__}")
    if not str(path).lower().endswith(".png"):
        raise ValueError(f"save writes PNG files; the path must end in .png, got {path!r}")
    if colors is not None:
        colors = _as_int(colors, "colors")
        if not 2 <= colors <= 256:
            raise ValueError(f"colors must be in [2, 256], got {colors}")
        image = image.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    image.save(path, format="PNG", optimize=True)
    return os.path.getsize(path)
