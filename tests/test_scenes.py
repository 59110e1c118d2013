"""slimvlm.demo.scenes: determinism, geometry, and every answer recomputed from the object list by literal code."""

import collections
import itertools
import re

import numpy as np
import pytest

from slimvlm.demo import scenes as S

N_SCENES = 200
W = 336

# The literal rules, restated here (not imported) so the test checks the generator against an independent reading.
ROW_NAMES = ["top", "middle", "bottom"]
COL_NAMES = ["left", "center", "right"]
MARGIN = 12
PLURAL_TO_KIND = {
    "circles": "circle",
    "squares": "square",
    "triangles": "triangle",
    "stars": "star",
    "diamonds": "diamond",
    "crosses": "cross",
    "signs": "sign",
}


def literal_place(x, y):
    col = 0 if x < 112 else (1 if x < 224 else 2)
    row = 0 if y < 112 else (1 if y < 224 else 2)
    if row == 1 and col == 1:
        return "center"
    return ROW_NAMES[row] + "-" + COL_NAMES[col]


def literal_clean(x, y):
    for v in (x, y):
        if abs(v - 112) < MARGIN or abs(v - 224) < MARGIN:
            return False
    return True


def find(objects, color, kind):
    out = []
    for o in objects:
        if o.color == color and o.kind == kind:
            out.append(o)
    return out


def literal_answer(scene, qa):
    """Recompute qa's answer from scene.objects; None when the question is not unambiguous."""
    objs = scene.objects
    q = qa.question
    m = re.fullmatch(r"is there an? (\w+) (\w+)\?", q)
    if m:
        n = 0
        for o in objs:
            if o.color == m.group(1) and o.kind == m.group(2):
                n += 1
        return "yes" if n > 0 else "no"
    if q == "how many objects are there?":
        return str(len(objs))
    m = re.fullmatch(r"how many (\w+) objects\?", q)
    if m:
        n = 0
        for o in objs:
            if o.color == m.group(1):
                n += 1
        return str(n)
    m = re.fullmatch(r"how many (\w+)\?", q)
    if m:
        n = 0
        for o in objs:
            if o.kind == PLURAL_TO_KIND[m.group(1)]:
                n += 1
        return str(n)
    m = re.fullmatch(r"what color is the object in the ([\w-]+)\?", q)
    if m:
        place = m.group(1)
        inside = [o for o in objs if literal_place(*o.center) == place]
        if len(inside) != 1:
            return None
        target = inside[0]
        if not literal_clean(*target.center):
            return None
        # no other object's centre close to the cell, and no big chunk of another object in it
        cells = {literal_place(56 + 112 * c, 56 + 112 * r): (112 * c, 112 * r) for r in range(3) for c in range(3)}
        cx0, cy0 = cells[place]
        for o in objs:
            if o is target:
                continue
            x, y = o.center
            if cx0 - MARGIN <= x < cx0 + 112 + MARGIN and cy0 - MARGIN <= y < cy0 + 112 + MARGIN:
                return None
            ox = max(0, min(o.bbox[2], cx0 + 112) - max(o.bbox[0], cx0))
            oy = max(0, min(o.bbox[3], cy0 + 112) - max(o.bbox[1], cy0))
            if ox * oy >= 0.25 * o.size * o.size:
                return None
        return target.color
    m = re.fullmatch(r"where is the (\w+) (\w+)\?", q)
    if m:
        hits = find(objs, m.group(1), m.group(2))
        if len(hits) != 1 or not literal_clean(*hits[0].center):
            return None
        return literal_place(*hits[0].center)
    m = re.fullmatch(r"which is larger, the (\w+) (\w+) or the (\w+) (\w+)\?", q)
    if m:
        a = find(objs, m.group(1), m.group(2))
        b = find(objs, m.group(3), m.group(4))
        if len(a) != 1 or len(b) != 1:
            return None
        a, b = a[0], b[0]
        if a.size < b.size:
            a, b = b, a
        if not (a.size >= 1.5 * b.size and a.area >= 1.5 * b.area):
            return None
        return a.kind if a.kind != b.kind else a.color
    m = re.fullmatch(r"what number is on the (\w+) (\w+)\?", q)
    if m:
        hits = find(objs, m.group(1), m.group(2))
        if len(hits) != 1 or hits[0].digit is None:
            return None
        return str(hits[0].digit)
    raise AssertionError(f"unknown template: {q!r}")


@pytest.fixture(scope="module")
def data():
    out = []
    for seed in S.split_seeds("val", N_SCENES):
        scene = S.make_scene(seed)
        out.append((scene, S.questions(scene)))
    return out


def test_determinism_and_global_rng_independence():
    seeds = [0, 7, 12345, 20_000_003]
    first = {s: S.make_scene(s) for s in seeds}
    np.random.seed(999)
    np.random.rand(17)
    for s in reversed(seeds):  # other order, other global RNG state
        again = S.make_scene(s)
        assert again.image.tobytes() == first[s].image.tobytes()
        assert again.objects == first[s].objects
        assert (again.background, again.photo) == (first[s].background, first[s].photo)
        assert S.questions(again) == S.questions(first[s])
        assert S.questions(again, 5) == S.questions(first[s], np.random.default_rng(5))
    assert S.make_scene(1).image.tobytes() != S.make_scene(2).image.tobytes()
    img = first[0].image
    assert img.shape == (W, W, 3) and img.dtype == np.uint8
    with pytest.raises(ValueError):
        S.make_scene(-1)


def test_objects_inside_nonoverlapping_and_varied(data):
    kinds, colors, backgrounds = set(), set(), set()
    with_small = 0
    for scene, _ in data:
        objs = scene.objects
        assert 1 <= len(objs) <= 6
        backgrounds.add(scene.background)
        for o in objs:
            x0, y0, x1, y1 = o.bbox
            assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= W
            assert x1 - x0 == o.size == y1 - y0
            assert x0 <= o.center[0] < x1 and y0 <= o.center[1] < y1
            assert 0 < o.area <= o.size * o.size
            kinds.add(o.kind)
            colors.add(o.color)
            if o.digit is None and o.kind != "sign":
                # the object list matches the pixels: the shape's colour sits at its centre
                got = scene.image[o.center[1], o.center[0]].astype(int)
                assert np.abs(got - np.array(S.COLORS[o.color])).max() <= 3, (scene.seed, o)
        for a, b in itertools.combinations(objs, 2):
            apart = a.bbox[2] <= b.bbox[0] or b.bbox[2] <= a.bbox[0] or a.bbox[3] <= b.bbox[1] or b.bbox[3] <= a.bbox[1]
            assert apart, (scene.seed, a, b)
        with_small += any(o.size <= 24 for o in objs)
    assert len(kinds) >= 5 and len(colors) >= 6
    assert backgrounds == set(S.BACKGROUNDS)
    assert with_small >= 0.5 * len(data)
    sizes = [o.size for scene, _ in data for o in scene.objects]
    assert min(sizes) <= 16 and max(sizes) >= 80


def test_every_answer_recomputed_literally(data):
    n_small = 0
    for scene, qas in data:
        for qa in qas:
            assert literal_answer(scene, qa) == qa.answer, (scene.seed, qa)
            refs = [scene.objects[i] for i in qa.objects]
            small = [o.size <= 24 for o in refs]
            if qa.qtype == "exist":  # "yes": every matching object is small; "no" hinges on no object
                assert qa.small == (qa.answer == "yes" and all(small)), qa
            else:
                assert qa.small == any(small), qa
            n_small += qa.small
    assert n_small > 0.15 * sum(len(q) for _, q in data)


def test_answers_and_vocab(data):
    space = set(S.answer_space())
    vocab = set(S.VOCAB)
    assert space <= vocab
    assert len(S.answer_space()) == len(space)
    for _, qas in data:
        for qa in qas:
            assert qa.answer in space
            assert " " not in qa.answer and S.tokenize(qa.answer) == [qa.answer]
            assert set(S.tokenize(qa.question)) <= vocab, qa.question
            assert qa.qtype in S.QTYPES


def test_types_and_balance(data):
    types = collections.Counter(qa.qtype for _, qas in data for qa in qas)
    assert set(types) == set(S.QTYPES), types
    yn = collections.Counter(qa.answer for _, qas in data for qa in qas if qa.qtype == "exist")
    assert 0.4 <= yn["yes"] / (yn["yes"] + yn["no"]) <= 0.6
    counts = collections.Counter(qa.answer for _, qas in data for qa in qas if qa.qtype == "count")
    assert max(counts.values()) <= 0.5 * sum(counts.values())
    larger_first = [qa.question.split(" or ")[0].endswith(qa.answer) for _, qas in data for qa in qas
                    if qa.qtype == "larger" and qa.answer in S.KINDS]
    assert 0.3 <= np.mean(larger_first) <= 0.7  # the larger one is not always named first


SEG_POINTS = {  # (fx, fy) inside the digit box where each seven-segment stroke passes
    "a": (0.5, 0.06), "g": (0.5, 0.5), "d": (0.5, 0.94),
    "f": (0.12, 0.27), "b": (0.88, 0.27), "e": (0.12, 0.73), "c": (0.88, 0.73),
}
DECODE = {
    frozenset("abcdef"): 0, frozenset("adg"): 1, frozenset("abged"): 2, frozenset("abgcd"): 3,
    frozenset("fgbc"): 4, frozenset("afgcd"): 5, frozenset("afgedc"): 6, frozenset("abc"): 7,
    frozenset("abcdefg"): 8, frozenset("abcdfg"): 9,
}


def test_digits_drawn(data):
    n_checked = 0
    for scene, _ in data:
        for o in scene.objects:
            if o.kind == "sign":
                assert o.digit is not None
            if o.digit is None:
                assert o.digit_bbox is None
                continue
            x0, y0, x1, y1 = o.digit_bbox
            assert o.bbox[0] <= x0 < x1 <= o.bbox[2] and o.bbox[1] <= y0 < y1 <= o.bbox[3]
            # readable from 14-px patches: the object at least 48 px, its digit at least 28 px (two patches) tall
            assert o.size >= 48 and y1 - y0 >= 28, (scene.seed, o)
            patch = scene.image[y0:y1, x0:x1].astype(int)
            ink = np.abs(patch - np.array(S.COLORS[o.color])).max(-1) > 60  # differs from the plate / shape
            assert 0.1 <= ink.mean() <= 0.9, (scene.seed, o, ink.mean())
            n_checked += 1
            # every digit is tall enough to sample each stroke: decode the seven segments from pixels
            h, w = y1 - y0, x1 - x0
            on = {s for s, (fx, fy) in SEG_POINTS.items() if ink[int(fy * h), int(fx * w)]}
            assert DECODE.get(frozenset(on)) == o.digit, (scene.seed, o, sorted(on))
    assert n_checked >= 50


def test_split_seeds():
    tr, va, te = (set(S.split_seeds(name, 5000)) for name in ("train", "val", "test"))
    assert len(tr) == len(va) == len(te) == 5000
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert list(S.split_seeds("test", 3)) == list(S.split_seeds("test", 10))[:3]
    big_train = S.split_seeds("train", 10_000_000)
    assert max(big_train) < min(S.split_seeds("val", 1)) and max(S.split_seeds("val", 10_000_000)) < min(te)
    with pytest.raises(ValueError):
        S.split_seeds("dev", 3)
    with pytest.raises(ValueError):
        S.split_seeds("train", 10_000_001)
