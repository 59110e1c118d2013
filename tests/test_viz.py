"""slimvlm.viz on synthetic images and reductions (no weights, no photos)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from slimvlm import viz
from slimvlm.methods import Reduction, reduce

ROWS, COLS, CELL = 4, 6, 10
N = ROWS * COLS


def _reduction(assignment, anchors, method="test") -> Reduction:
    assignment = torch.as_tensor(assignment, dtype=torch.long)[None]
    anchors = torch.as_tensor(anchors, dtype=torch.long)[None]
    m = anchors.shape[1]
    return Reduction(torch.zeros(1, m, 3), anchors, torch.tensor([m]), assignment, method)


def _image(value=128, shape=(ROWS * CELL, COLS * CELL)) -> np.ndarray:
    """A mid-tone image with a little texture (every cell in [80, 180], colourful but not extreme)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([value + 40 * np.sin(xx / 3.0), value + 30 * np.cos(yy / 4.0), np.full((h, w), value)], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def _cell(a: np.ndarray, r: int, c: int, inset: int = 2) -> np.ndarray:
    """Interior pixels of cell (r, c), away from outlines and group borders."""
    return a[r * CELL + inset : (r + 1) * CELL - inset, c * CELL + inset : (c + 1) * CELL - inset].astype(np.float64)


def _luma(x: np.ndarray) -> np.ndarray:
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def _saturation(x: np.ndarray) -> np.ndarray:
    return x.max(axis=-1) - x.min(axis=-1)


# keep tokens 0, 7, 14; token 1 and 2 merge into slot 0, 8 into slot 1; everything else dropped
ASSIGN = [-1] * N
ASSIGN[0], ASSIGN[1], ASSIGN[2] = 0, 0, 0
ASSIGN[7], ASSIGN[8] = 1, 1
ASSIGN[14] = 2
ANCHORS = [0, 7, 14]


def test_output_size_default_and_given_cell():
    red = _reduction(ASSIGN, ANCHORS)
    out = viz.overlay(_image(), red, grid=(ROWS, COLS))
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    assert out.size == (COLS * CELL, ROWS * CELL)  # already a multiple of the grid: kept as is
    odd = viz.overlay(_image(shape=(37, 91)), red, grid=(ROWS, COLS), cell=7)
    assert odd.size == (COLS * 7, ROWS * 7)
    pil = viz.overlay(Image.fromarray(_image()), red, grid=(ROWS, COLS), cell=5)
    assert pil.size == (COLS * 5, ROWS * 5)
    float_img = viz.overlay(_image().astype(np.float32) / 255, red, grid=(ROWS, COLS))
    assert np.array_equal(np.asarray(float_img), np.asarray(viz.overlay(_image(), red, grid=(ROWS, COLS))))


def test_dropped_dimmed_and_kept_unchanged():
    img = _image()
    red = _reduction(ASSIGN, ANCHORS)
    for show_groups in (False, True):
        out = np.asarray(viz.overlay(img, red, grid=(ROWS, COLS), show_groups=show_groups))
        # dropped cells: darker and grey
        for t in (3, 5, 20, 23):
            r, c = divmod(t, COLS)
            before, after = _cell(img, r, c, 0), _cell(out, r, c, 0)
            assert _luma(after).mean() < 0.6 * _luma(before).mean()
            assert _saturation(after).max() <= 1.0 < _saturation(before).mean()
    # a kept token that holds only itself: pixels untouched inside the outline, outline drawn
    out = np.asarray(viz.overlay(img, red, grid=(ROWS, COLS)))
    r, c = divmod(14, COLS)
    assert np.array_equal(_cell(out, r, c), _cell(img, r, c))
    assert (out[r * CELL, c * CELL : (c + 1) * CELL] == 255).all()  # white outline on the cell's edge
    # without groups, merge members and their anchors keep their pixels too
    plain = np.asarray(viz.overlay(img, red, grid=(ROWS, COLS), show_groups=False))
    for t in (0, 1, 2, 7, 8):
        r, c = divmod(t, COLS)
        assert np.array_equal(_cell(plain, r, c), _cell(img, r, c))
    # with groups, a tinted kept cell (anchor of a merge) keeps its brightness (mid-tones)
    for t in (0, 7):
        r, c = divmod(t, COLS)
        assert abs(_luma(_cell(out, r, c)).mean() - _luma(_cell(img, r, c)).mean()) < 1.5
    # no outline, no group borders: a kept singleton is bit-identical to the input
    bare = np.asarray(viz.overlay(img, red, grid=(ROWS, COLS), outline=False, borders=False))
    r, c = divmod(14, COLS)
    assert np.array_equal(_cell(bare, r, c, 0), _cell(img, r, c, 0))


def test_each_merge_group_has_one_colour():
    grey = np.full((ROWS * CELL, COLS * CELL, 3), 128, np.uint8)  # flat input: the tint alone sets the colour
    red = reduce("pool", torch.randn(1, N, 8), signals={"grid": (ROWS, COLS)}, sample_grid=(2, 3))  # 2x2 windows
    out = np.asarray(viz.overlay(grey, red, grid=(ROWS, COLS), outline=False, borders=False))
    assign = red.assignment[0].numpy()
    colours = {}
    for t in range(N):
        r, c = divmod(t, COLS)
        pix = _cell(out, r, c, 0).reshape(-1, 3)
        assert (pix == pix[0]).all(), "a cell is one flat colour"
        colours.setdefault(int(assign[t]), set()).add(tuple(pix[0].astype(int)))
    assert all(len(v) == 1 for v in colours.values()), colours
    assert len({next(iter(v)) for v in colours.values()}) == len(colours), "groups get distinct colours"
    # deterministic: the same slot always gets the same colour
    assert viz.slot_color(3) == viz.slot_color(3) and viz.slot_color(3) != viz.slot_color(4)


def test_groups_of_a_real_merge_method_share_tints():
    img = _image()
    red = reduce("aim-merge", torch.randn(1, N, 8, generator=torch.Generator().manual_seed(0)), keep=6)
    states = viz.cell_states(red, 0, (ROWS, COLS))
    assert not states["dropped"].any() and states["anchor"].sum() == 6
    out = np.asarray(viz.overlay(np.full_like(img, 128), red, grid=(ROWS, COLS), outline=False, borders=False))
    seen = {}
    for t, slot in enumerate(red.assignment[0].tolist()):
        r, c = divmod(t, COLS)
        colour = tuple(_cell(out, r, c).reshape(-1, 3)[0])
        if states["grouped"].reshape(-1)[t]:
            assert seen.setdefault(slot, colour) == colour


def test_summary_slot_is_dimmed_and_hatched_not_outlined():
    img = _image()
    assign = [1] * N
    assign[0] = 0
    red = _reduction(assign, [0, 9])  # slot 1 summarises every other token; its anchor is token 9
    states = viz.cell_states(red, 0, (ROWS, COLS), summary_slot=-1)
    assert states["summary"].sum() == N - 1 and states["anchor"].sum() == 1
    out = np.asarray(viz.overlay(img, red, grid=(ROWS, COLS), summary_slot=-1))
    r, c = divmod(9, COLS)
    assert _luma(_cell(out, r, c, 0)).mean() < 0.7 * _luma(_cell(img, r, c, 0)).mean()
    assert not (out[r * CELL, c * CELL : (c + 1) * CELL] == 255).all()


def test_method_grid_and_frame_strip():
    feats = torch.randn(3, N, 8)
    results = {
        "spatial": reduce("spatial", feats[:1], signals={"grid": (ROWS, COLS)}, keep=6),
        "pool": reduce("pool", feats[:1], signals={"grid": (ROWS, COLS)}, keep=6),
    }
    fig = viz.method_grid(_image(), results, (ROWS, COLS), cell=CELL, gap=5)
    assert fig.width == 2 * COLS * CELL + 5 and fig.height > ROWS * CELL  # titles on top
    bare = viz.method_grid(_image(), results, (ROWS, COLS), cell=CELL, gap=5, titles=False)
    assert bare.size == (2 * COLS * CELL + 5, ROWS * CELL)
    video = reduce("random", feats, keep=5)
    frames = np.stack([_image(100), _image(128), _image(150)])
    strip = viz.frame_strip(frames, video, (ROWS, COLS), cell=CELL, gap=2, titles=False)
    assert strip.size == (3 * COLS * CELL + 4, ROWS * CELL)
    col = viz.stack([bare, bare], axis=0, labels=["a", "b"], gap=3)
    assert col.height == 2 * ROWS * CELL + 3 and col.width > bare.width


def test_save_png(tmp_path):
    red = _reduction(ASSIGN, ANCHORS)
    img = viz.overlay(_image(), red, grid=(ROWS, COLS))
    size = viz.save(img, str(tmp_path / "sub" / "o.png"), colors=64)
    assert size > 0 and Image.open(tmp_path / "sub" / "o.png").size == img.size
    with pytest.raises(ValueError, match=r"\.png"):
        viz.save(img, str(tmp_path / "o.jpg"))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda r, i: viz.overlay(i, r, grid=(5, 5)), r"grid 5x5 has 25 cells but the reduction has N=24"),
        (lambda r, i: viz.overlay(i, r), r"N=24 tokens is not a square grid; pass grid"),
        (lambda r, i: viz.overlay(i, r, item=1, grid=(ROWS, COLS)), r"item 1 is out of range for a reduction of 1"),
        (lambda r, i: viz.overlay(i, r, grid=(0, 24)), r"grid must be positive"),
        (lambda r, i: viz.overlay(i, r, grid=(4,)), r"grid must be \(rows, cols\)"),
        (lambda r, i: viz.overlay(i[..., :2], r, grid=(ROWS, COLS)), r"image must have shape \(H, W, 3\)"),
        (lambda r, i: viz.overlay(torch.zeros(3, 40, 60), r, grid=(ROWS, COLS)), r"got a torch tensor"),
        (lambda r, i: viz.overlay(i, "x", grid=(ROWS, COLS)), r"expected a slimvlm Reduction"),
        (lambda r, i: viz.overlay(i, r, grid=(ROWS, COLS), cell=2), r"cell must be >= 4"),
        (lambda r, i: viz.overlay(i, r, grid=(ROWS, COLS), summary_slot=3), r"summary_slot 3 is out of range"),
        (lambda r, i: viz.overlay(i, _reduction([5] * N, [0]), grid=(ROWS, COLS)), r"holds slot 5, outside \[-1, 0\]"),
        (lambda r, i: viz.frame_strip([i, i], r, (ROWS, COLS)), r"got 2 frames but the reduction has 1 items"),
        (lambda r, i: viz.method_grid(i, {}, (ROWS, COLS)), r"non-empty dict"),
        (lambda r, i: viz.method_grid(i, {"a": r}, (ROWS, COLS), summary_slots={"b": -1}), r"not in results"),
    ],
)
def test_invalid_inputs_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(_reduction(ASSIGN, ANCHORS), _image())
