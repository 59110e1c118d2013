"""Deterministic synthetic scenes and question/answer pairs for the slimvlm demo VLM.

A scene is a 336×336 RGB image (a 24×24 grid of 14-px patches) holding 1–6 non-overlapping objects drawn on a
plain, textured (noise / stripes / checker) or real-photo background (the colour photos in scikit-image's wheel,
desaturated and contrast-compressed so the saturated shapes stay visible). Objects come in seven kinds (six shapes
and a framed "sign") and eight colours; sizes range from SMALL (14–24 px, one to two patches) to 96 px. Signs, and
some large circles, carry a digit drawn as seven-segment strokes (no fonts involved). Digit-bearing objects are at
least DIGIT_OBJECT_MIN px, so every digit is at least ~28 px (two patches) tall: smaller ones are not readable from
14-px DINOv2-S patches (docs/demo-training.md).

Everything is a pure function of the seed: :func:`make_scene` uses only ``numpy.random.default_rng(seed)``, and
:func:`questions` uses its own generator (by default seeded from the scene seed), so results never depend on call
order or on numpy's global RNG. Questions and answers are computed from the object list, never from pixels.

Question types (``QA.qtype``), one answer word each:

- ``exist``    "is there a red triangle?" → yes / no (one of each per scene, so exactly 50/50)
- ``count``    "how many circles?" / "how many red objects?" / "how many objects are there?" → 0–6
- ``color_at`` "what color is the object in the top-left?" → a colour (3×3 grid of places)
- ``where``    "where is the blue square?" → a place, e.g. top-left
- ``larger``   "which is larger, the red circle or the green star?" → the kind, or the colour when kinds match
- ``digit``    "what number is on the yellow sign?" → 0–9

Seed ranges of the splits (:func:`split_seeds`): train ``[0, 10**7)``, val ``[10**7, 2·10**7)``, test
``[2·10**7, 3·10**7)``, so test (and val) scenes are never used in training.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import os
import re
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "IMAGE_SIZE",
    "PATCH",
    "SMALL_MAX",
    "GRID",
    "PLACE_MARGIN",
    "DIGIT_OBJECT_MIN",
    "COLORS",
    "KINDS",
    "SHAPE_KINDS",
    "PLURALS",
    "PLACES",
    "BACKGROUNDS",
    "QTYPES",
    "CORE_QTYPES",
    "SPLITS",
    "SPLIT_SIZE",
    "VOCAB",
    "SceneObject",
    "Scene",
    "QA",
    "make_scene",
    "questions",
    "answer_space",
    "tokenize",
    "split_seeds",
    "place_of",
    "place_is_clean",
]

IMAGE_SIZE = 336
PATCH = 14
#: objects whose size (side of their square box) is at most this many pixels are "small" (1–2 patches).
SMALL_MAX = 24
#: signs, and circles that carry a digit, are at least this many pixels (their digit: 0.6 / 0.5 of the size).
DIGIT_OBJECT_MIN = 48
_DIGIT_CIRCLE_MIN = 56
#: the 3×3 grid of places: cell boundaries at 112 and 224 px.
GRID = 3
_CELL = IMAGE_SIZE // GRID
#: a place is only asked about / answered when the object's centre is at least this far from a grid line.
PLACE_MARGIN = 12
_EDGE_MARGIN = 8  # objects keep this distance from the image border
_GAP = 6  # and this distance between bounding boxes
_SS = 4  # supersampling factor of the object masks (anti-aliased edges)

#: name -> RGB. Saturated (or pure white / black); backgrounds are kept desaturated and mid-grey.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (20, 180, 40),
    "blue": (30, 70, 245),
    "yellow": (255, 228, 0),
    "purple": (165, 40, 215),
    "orange": (255, 130, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
SHAPE_KINDS = ("circle", "square", "triangle", "star", "diamond", "cross")
KINDS = SHAPE_KINDS + ("sign",)
PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "diamond": "diamonds",
    "cross": "crosses",
    "sign": "signs",
}
_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "center", "right")
#: the nine places, row-major; the middle cell is just "center".
PLACES = tuple("center" if (r, c) == ("middle", "center") else f"{r}-{c}" for r in _ROWS for c in _COLS)
BACKGROUNDS = ("plain", "noise", "stripes", "checker", "photo")
_BACKGROUND_P = (0.2, 0.13, 0.13, 0.14, 0.4)
QTYPES = ("exist", "count", "color_at", "where", "larger", "digit")
#: the question types the demo VLM's frozen patch grid supports; ``digit`` (reading a small seven-segment digit)
#: is reported apart as the hard small-detail type (docs/demo-training.md says why).
CORE_QTYPES = ("exist", "count", "color_at", "where", "larger")

# Photos inside the scikit-image wheel (same set as slimvlm.assets.sample_photos), read with PIL directly so
# neither skimage nor torch is imported. The order is fixed: the seed picks by index.
_PHOTO_FILES = (
    ("astronaut", "astronaut.png"),
    ("chelsea", "chelsea.png"),
    ("coffee", "coffee.png"),
    ("rocket", "rocket.jpg"),
    ("motorcycle_left", "motorcycle_left.png"),
    ("hubble_deep_field", "hubble_deep_field.jpg"),
    ("retina", "retina.jpg"),
    ("immunohistochemistry", "ihc.png"),
)

# Seven-segment digits: a top, b top-right, c bottom-right, d bottom, e bottom-left, f top-left, g middle.
_SEGMENTS = {
    0: "abcdef",
    1: ("1", "flag"),  # a centred bar with a flag
    2: "abged",
    3: "abgcd",
    4: "fgbc",
    5: "afgcd",
    6: "afgedc",
    7: "abc",
    8: "abcdefg",
    9: "abcdfg",
}

SPLITS = {"train": 0, "val": 10_000_000, "test": 20_000_000}
#: seeds (scenes) per split
SPLIT_SIZE = 10_000_000


# ----------------------------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class SceneObject:
    """One drawn object. ``bbox`` is ``(x0, y0, x1, y1)`` with x1/y1 exclusive, a ``size × size`` square around
    ``center`` ``(x, y)``; ``area`` is the drawn (anti-aliased) pixel area; ``digit_bbox`` bounds the digit."""

    kind: str
    color: str
    center: tuple[int, int]
    size: int
    bbox: tuple[int, int, int, int]
    area: float
    digit: Optional[int] = None
    digit_bbox: Optional[tuple[int, int, int, int]] = None

    @property
    def small(self) -> bool:
        return self.size <= SMALL_MAX

    @property
    def place(self) -> str:
        return place_of(self.center)

    @property
    def name(self) -> str:
        """``"red circle"``: how questions refer to the object."""
        return f"{self.color} {self.kind}"


@dataclass(frozen=True)
class Scene:
    seed: int
    image: np.ndarray  # (336, 336, 3) uint8, read-only
    objects: tuple[SceneObject, ...]
    background: str  # one of BACKGROUNDS
    photo: Optional[str] = None  # photo name when background == "photo"

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image, "RGB")


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    qtype: str  # one of QTYPES
    small: bool  # the answer hinges on a small object (size <= SMALL_MAX)
    objects: tuple[int, ...] = ()  # indices into scene.objects the question refers to


# ----------------------------------------------------------------------------------------------- places


def place_of(center: Sequence[float]) -> str:
    """The 3×3-grid place (one of PLACES) of a point ``(x, y)``."""
    x, y = center
    col = min(GRID - 1, max(0, int(x) // _CELL))
    row = min(GRID - 1, max(0, int(y) // _CELL))
    return PLACES[row * GRID + col]


def place_is_clean(center: Sequence[float], margin: int = PLACE_MARGIN) -> bool:
    """True when the point is at least ``margin`` px from both inner grid lines in x and in y."""
    lines = [_CELL * i for i in range(1, GRID)]
    return all(abs(v - line) >= margin for v in center for line in lines)


def _cell_box(place: str) -> tuple[int, int, int, int]:
    i = PLACES.index(place)
    row, col = divmod(i, GRID)
    return col * _CELL, row * _CELL, (col + 1) * _CELL, (row + 1) * _CELL


# ----------------------------------------------------------------------------------------------- rendering


def _luma(rgb: Sequence[float]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _contrast(rgb: Sequence[float]) -> tuple[int, int, int]:
    return (0, 0, 0) if _luma(rgb) > 110 else (255, 255, 255)


def _mask(draw_fn, w: int, h: int) -> np.ndarray:
    """Draw at _SS× on an L canvas and box-average down: float alpha in [0, 1] of shape (h, w)."""
    canvas = Image.new("L", (w * _SS, h * _SS), 0)
    draw_fn(ImageDraw.Draw(canvas), w * _SS, h * _SS)
    return np.asarray(canvas.reduce(_SS), dtype=np.float32) / 255.0


def _shape_draw(kind: str, inset: float = 0.0):
    def draw(d: ImageDraw.ImageDraw, W: int, H: int) -> None:
        S = W
        e = S - 1
        if kind == "circle":
            d.ellipse([0, 0, e, e], fill=255)
        elif kind == "square":
            d.rectangle([0, 0, e, e], fill=255)
        elif kind == "triangle":
            d.polygon([(0, e), (e, e), (e / 2, 0)], fill=255)
        elif kind == "diamond":
            d.polygon([(e / 2, 0), (e, e / 2), (e / 2, e), (0, e / 2)], fill=255)
        elif kind == "cross":
            a, b = S / 3, 2 * S / 3
            d.rectangle([a, 0, b, e], fill=255)
            d.rectangle([0, a, e, b], fill=255)
        elif kind == "star":
            R = S / (2 * np.sin(np.deg2rad(72)))  # width of a 5-point star is 2 R sin 72°
            r = 0.47 * R
            height = R * (1 + np.cos(np.deg2rad(36)))
            cx, cy = S / 2, (S - height) / 2 + R
            pts = []
            for i in range(10):
                rad = R if i % 2 == 0 else r
                ang = np.deg2rad(-90 + 36 * i)
                pts.append((cx + rad * np.cos(ang), cy + rad * np.sin(ang)))
            d.polygon(pts, fill=255)
        elif kind == "sign":  # upright rounded plate, 0.8 S wide; inset > 0 gives the inner (fill) plate
            x0, x1 = 0.1 * S + inset, 0.9 * S - inset
            y0, y1 = inset, e - inset
            d.rounded_rectangle([x0, y0, x1, y1], radius=max(1.0, S / 8 - inset / 2), fill=255)
        else:  # pragma: no cover
            raise ValueError(kind)

    return draw


def _digit_draw(digit: int):
    def draw(d: ImageDraw.ImageDraw, W: int, H: int) -> None:
        t = max(1.5 * _SS, H / 7)  # stroke
        half = H / 2
        segs = {
            "a": (0, 0, W, t),
            "g": (0, half - t / 2, W, half + t / 2),
            "d": (0, H - t, W, H),
            "f": (0, 0, t, half + t / 2),
            "b": (W - t, 0, W, half + t / 2),
            "e": (0, half - t / 2, t, H),
            "c": (W - t, half - t / 2, W, H),
            "1": (W / 2 - t / 2, 0, W / 2 + t / 2, H),
            "flag": (W / 2 - t / 2 - 0.3 * W, 0, W / 2, t),  # the top-left stroke of a "1"
        }
        for s in _SEGMENTS[digit]:
            x0, y0, x1, y1 = segs[s]
            d.rectangle([x0, y0, x1 - 1, y1 - 1], fill=255)

    return draw


def _paint(img: np.ndarray, alpha: np.ndarray, x0: int, y0: int, rgb: Sequence[int]) -> None:
    h, w = alpha.shape
    region = img[y0 : y0 + h, x0 : x0 + w]
    a = alpha[..., None]
    region[...] = region * (1.0 - a) + np.asarray(rgb, np.float32) * a


def _digit_box(kind: str, size: int) -> tuple[int, int]:
    dh = max(10, int(round((0.6 if kind == "sign" else 0.5) * size)))
    dw = max(6, int(round(0.56 * dh)))
    return dw, dh


def _render_object(img: np.ndarray, kind: str, color: str, x0: int, y0: int, size: int, digit: Optional[int]):
    """Paints the object into img (float32) and returns (area, digit_bbox)."""
    rgb = COLORS[color]
    ink = _contrast(rgb)
    if kind == "sign":
        frame = max(1.0, size / 14) * _SS
        outer = _mask(_shape_draw("sign"), size, size)
        inner = _mask(_shape_draw("sign", inset=frame), size, size)
        _paint(img, outer, x0, y0, ink)
        _paint(img, inner, x0, y0, rgb)
        area = float(outer.sum())
    else:
        alpha = _mask(_shape_draw(kind), size, size)
        _paint(img, alpha, x0, y0, rgb)
        area = float(alpha.sum())
    digit_bbox = None
    if digit is not None:
        dw, dh = _digit_box(kind, size)
        dx, dy = x0 + (size - dw) // 2, y0 + (size - dh) // 2
        _paint(img, _mask(_digit_draw(digit), dw, dh), dx, dy, ink)
        digit_bbox = (dx, dy, dx + dw, dy + dh)
    return round(area, 2), digit_bbox


# ----------------------------------------------------------------------------------------------- backgrounds


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("photo backgrounds need scikit-image's bundled photos: pip install scikit-image")
    filename = dict(_PHOTO_FILES)[name]
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", filename)
    if not os.path.isfile(path):
        raise ImportError(f"{path} is missing from the scikit-image install; reinstall scikit-image")
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    arr.setflags(write=False)
    return arr


def _resize_f(a: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a.astype(np.float32), "F").resize((size, size), Image.BICUBIC))


def _background(rng: np.random.Generator) -> tuple[np.ndarray, str, Optional[str]]:
    n = IMAGE_SIZE
    kind = BACKGROUNDS[int(rng.choice(len(BACKGROUNDS), p=_BACKGROUND_P))]
    grey = rng.uniform(90.0, 155.0)
    tint = rng.uniform(-1.0, 1.0, 3) * rng.uniform(4.0, 22.0)
    base = (grey + tint).astype(np.float32)
    photo = None
    if kind == "plain":
        img = np.broadcast_to(base, (n, n, 3)).copy()
    elif kind == "noise":
        k = int(rng.integers(3, 17))
        amp = rng.uniform(10.0, 22.0)
        coarse = rng.normal(0.0, 1.0, (k, k)).astype(np.float32)
        smooth = _resize_f(coarse, n) * amp
        fine = rng.normal(0.0, rng.uniform(3.0, 8.0), (n, n)).astype(np.float32)
        img = base + (smooth + fine)[..., None]
    elif kind == "stripes":
        period = rng.uniform(10.0, 48.0)
        theta = rng.uniform(0.0, np.pi)
        delta = rng.uniform(12.0, 26.0)
        ys, xs = np.mgrid[0:n, 0:n].astype(np.float32)
        u = xs * np.cos(theta) + ys * np.sin(theta) + rng.uniform(0.0, period)
        on = (np.mod(u, period) < period / 2).astype(np.float32)
        other = base + rng.uniform(-6.0, 6.0, 3).astype(np.float32)
        img = base + on[..., None] * (other + delta - base)
    elif kind == "checker":
        cell = int(rng.integers(12, 57))
        ox, oy = (int(v) for v in rng.integers(0, cell, 2))
        delta = rng.uniform(12.0, 26.0)
        ys, xs = np.mgrid[0:n, 0:n]
        on = (((xs + ox) // cell + (ys + oy) // cell) % 2).astype(np.float32)
        img = base + on[..., None] * delta - delta / 2
    else:  # photo
        photo = _PHOTO_FILES[int(rng.integers(len(_PHOTO_FILES)))][0]
        src = _photo(photo)
        h, w = src.shape[:2]
        side = int(round(min(h, w) * rng.uniform(0.55, 1.0)))
        x0 = int(rng.integers(0, w - side + 1))
        y0 = int(rng.integers(0, h - side + 1))
        crop = Image.fromarray(src[y0 : y0 + side, x0 : x0 + side]).resize((n, n), Image.BICUBIC)
        img = np.asarray(crop, dtype=np.float32)
        if rng.random() < 0.5:
            img = img[:, ::-1]
        lum = img @ np.array([0.299, 0.587, 0.114], np.float32)
        sat = rng.uniform(0.1, 0.3)
        img = lum[..., None] + sat * (img - lum[..., None])
        lo, hi = np.percentile(lum, [2, 98])
        target_lo, target_hi = rng.uniform(75.0, 95.0), rng.uniform(150.0, 170.0)
        img = target_lo + (img - lo) * ((target_hi - target_lo) / max(float(hi - lo), 1.0))
    return np.clip(img, 65.0, 180.0).astype(np.float32), kind, photo


# ----------------------------------------------------------------------------------------------- scenes


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _sample_size(rng: np.random.Generator, kind: str) -> int:
    r = rng.random()
    if kind == "sign":  # its digit must be readable (see DIGIT_OBJECT_MIN)
        return int(rng.integers(DIGIT_OBJECT_MIN, 97))
    if r < 0.38:
        return int(rng.integers(14, SMALL_MAX + 1))
    if r < 0.78:
        return int(rng.integers(28, 53))
    return int(rng.integers(54, 97))


def make_scene(seed: int) -> Scene:
    """The scene of ``seed``: a (336, 336, 3) uint8 image and its objects; a pure function of the seed."""
    seed = _check_seed(seed)
    rng = np.random.default_rng(seed)
    img, background, photo = _background(rng)
    n_target = int(rng.integers(1, 7))
    boxes: list[tuple[int, int, int, int]] = []
    objects: list[SceneObject] = []
    colors = list(COLORS)
    for _ in range(n_target):
        # every kind equally likely, plus extra signs (about 1 object in 4 is a sign) so digits are common
        kind = KINDS[int(rng.integers(len(KINDS)))] if rng.random() < 0.88 else "sign"
        color = colors[int(rng.integers(len(colors)))]
        size = _sample_size(rng, kind)
        placed = None
        for _attempt in range(40):
            lo, hi = _EDGE_MARGIN, IMAGE_SIZE - _EDGE_MARGIN - size
            x0, y0 = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
            if all(
                x0 + size + _GAP <= b[0] or b[2] + _GAP <= x0 or y0 + size + _GAP <= b[1] or b[3] + _GAP <= y0
                for b in boxes
            ):
                placed = (x0, y0)
                break
        if placed is None:
            continue
        x0, y0 = placed
        digit = None
        if kind == "sign" or (kind == "circle" and size >= _DIGIT_CIRCLE_MIN and rng.random() < 0.4):
            digit = int(rng.integers(10))
        area, digit_bbox = _render_object(img, kind, color, x0, y0, size, digit)
        bbox = (x0, y0, x0 + size, y0 + size)
        boxes.append(bbox)
        objects.append(
            SceneObject(kind, color, (x0 + size // 2, y0 + size // 2), size, bbox, area, digit, digit_bbox)
        )
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    out.setflags(write=False)
    return Scene(seed, out, tuple(objects), background, photo)


# ----------------------------------------------------------------------------------------------- questions


def _matches(objs: Sequence[SceneObject], color: Optional[str] = None, kind: Optional[str] = None) -> list[int]:
    return [i for i, o in enumerate(objs) if (color is None or o.color == color) and (kind is None or o.kind == kind)]


def _unique(objs: Sequence[SceneObject]) -> list[int]:
    """Indices of objects whose "colour kind" description names only them."""
    return [i for i, o in enumerate(objs) if len(_matches(objs, o.color, o.kind)) == 1]


def _overlap(a: Sequence[int], b: Sequence[int]) -> int:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def _color_at_candidates(objs: Sequence[SceneObject]) -> dict[str, int]:
    """place -> the one object unambiguously "in" it: the only centre in the cell, at least PLACE_MARGIN from
    the grid lines; no other centre within PLACE_MARGIN of the cell; no other box with >= 25 % of it in the cell."""
    out = {}
    for place in PLACES:
        cx0, cy0, cx1, cy1 = _cell_box(place)
        near = [
            i
            for i, o in enumerate(objs)
            if cx0 - PLACE_MARGIN <= o.center[0] < cx1 + PLACE_MARGIN
            and cy0 - PLACE_MARGIN <= o.center[1] < cy1 + PLACE_MARGIN
        ]
        if len(near) != 1:
            continue
        i = near[0]
        o = objs[i]
        if o.place != place or not place_is_clean(o.center):
            continue
        cell = (cx0, cy0, cx1, cy1)
        if any(_overlap(p.bbox, cell) >= 0.25 * p.size * p.size for j, p in enumerate(objs) if j != i):
            continue
        out[place] = i
    return out


def _larger_pairs(objs: Sequence[SceneObject]) -> list[tuple[int, int]]:
    """(big, small) index pairs, both uniquely described, big at least 1.5× in size AND in drawn area."""
    uniq = _unique(objs)
    pairs = []
    for i, j in itertools.permutations(uniq, 2):
        a, b = objs[i], objs[j]
        if a.size >= 1.5 * b.size and a.area >= 1.5 * b.area:
            pairs.append((i, j))
    return pairs


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _pick(rng: np.random.Generator, seq: Sequence):
    return seq[int(rng.integers(len(seq)))]


def questions(scene: Scene, rng: Union[None, int, np.random.Generator] = None) -> list[QA]:
    """Question/answer pairs for ``scene``, computed from its objects only.

    ``rng``: a generator, a seed, or None (a generator seeded from ``scene.seed``, so the result is a pure
    function of the scene). Per scene: two ``exist`` (one yes, one no), one ``count``, and one each of
    ``color_at`` / ``where`` / ``larger`` / ``digit`` when the scene allows an unambiguous one."""
    if rng is None:
        rng = np.random.default_rng([_check_seed(scene.seed), 0x5CE9E])
    elif not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(_check_seed(rng))
    objs = scene.objects
    qas: list[QA] = []

    # exist: one present description, one absent one (mostly a "near miss" sharing the colour or the kind).
    if objs:
        o = objs[int(rng.integers(len(objs)))]
        hits = _matches(objs, o.color, o.kind)
        text = f"is there {_article(o.color)} {o.color} {o.kind}?"
        yes = QA(text, "yes", "exist", all(objs[i].small for i in hits), tuple(hits))
    else:  # pragma: no cover - make_scene always places at least one object
        yes = None
    present = {(p.color, p.kind) for p in objs}
    absent = [(c, k) for c in COLORS for k in KINDS if (c, k) not in present]
    near = [(c, k) for (c, k) in absent if any(c == p.color or k == p.kind for p in objs)]
    c, k = _pick(rng, near if near and rng.random() < 0.75 else absent)
    no = QA(f"is there {_article(c)} {c} {k}?", "no", "exist", False, ())
    pair = [q for q in (yes, no) if q is not None]
    if len(pair) == 2 and rng.random() < 0.5:
        pair.reverse()
    qas.extend(pair)

    # count: pick the answer value uniformly among those the scene offers, then a question with that answer
    # (balances the answers; "1" would dominate otherwise).
    options: list[tuple[str, list[int]]] = [(f"how many {PLURALS[k]}?", _matches(objs, kind=k)) for k in KINDS]
    options += [(f"how many {c} objects?", _matches(objs, color=c)) for c in COLORS]
    options.append(("how many objects are there?", list(range(len(objs)))))
    values = sorted({len(hits) for _, hits in options})
    value = _pick(rng, values)
    text, hits = _pick(rng, [opt for opt in options if len(opt[1]) == value])
    qas.append(QA(text, str(len(hits)), "count", any(objs[i].small for i in hits), tuple(hits)))

    # color_at
    cands = _color_at_candidates(objs)
    if cands:
        place = _pick(rng, list(cands))
        i = cands[place]
        qas.append(QA(f"what color is the object in the {place}?", objs[i].color, "color_at", objs[i].small, (i,)))

    # where
    cands_w = [i for i in _unique(objs) if place_is_clean(objs[i].center)]
    if cands_w:
        i = _pick(rng, cands_w)
        qas.append(QA(f"where is the {objs[i].name}?", objs[i].place, "where", objs[i].small, (i,)))

    # larger
    pairs = _larger_pairs(objs)
    if pairs:
        big, little = _pick(rng, pairs)
        a, b = objs[big], objs[little]
        answer = a.kind if a.kind != b.kind else a.color
        first, second = (a, b) if rng.random() < 0.5 else (b, a)
        text = f"which is larger, the {first.name} or the {second.name}?"
        qas.append(QA(text, answer, "larger", a.small or b.small, (big, little)))

    # digit
    cands_d = [i for i in _unique(objs) if objs[i].digit is not None]
    if cands_d:
        i = _pick(rng, cands_d)
        qas.append(QA(f"what number is on the {objs[i].name}?", str(objs[i].digit), "digit", objs[i].small, (i,)))
    return qas


# ----------------------------------------------------------------------------------------------- vocabulary


_TOKEN = re.compile(r"[a-z0-9\-]+|[?,]")


def tokenize(text: str) -> list[str]:
    """Word-level tokens: lower-case words (hyphenated places stay one word) plus "?" and "," on their own."""
    return _TOKEN.findall(text.lower())


def answer_space() -> list[str]:
    """Every possible answer word: yes/no, 0–9, colours, kinds, places."""
    return ["yes", "no"] + [str(d) for d in range(10)] + list(COLORS) + list(KINDS) + list(PLACES)


_TEMPLATE_WORDS = (
    "is there a an ? how many objects are what color the object in where which larger , or number on"
)
#: every question word and every answer word (sorted, no duplicates).
VOCAB: tuple[str, ...] = tuple(
    sorted(set(tokenize(_TEMPLATE_WORDS)) | set(PLURALS.values()) | set(answer_space()))
)


# ----------------------------------------------------------------------------------------------- splits


def split_seeds(name: str, n: int) -> range:
    """The first ``n`` seeds of split ``name``: train [0, 1e7), val [1e7, 2e7), test [2e7, 3e7) (disjoint)."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; expected one of {sorted(SPLITS)}")
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= SPLIT_SIZE:
        raise ValueError(f"n must be an int in [0, {SPLIT_SIZE}], got {n!r}")
    return range(SPLITS[name], SPLITS[name] + n)
