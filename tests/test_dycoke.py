"""Tests of ``dycoke`` (DyCoke's token temporal merging) against a literal, slow transcription of the official
``dycole_ttm`` (KD-TAO/DyCoke dd74634, llava/model/llava_arch.py), written here as the official code is — a list
of frames built pair by pair, then patched by the second loop — with one Python loop over the tokens for the
similarities. It never calls the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from video_support import check_against, check_through_apply, randn, video

from slimvlm.methods import DyCokeConfig, dycoke, get, make_config, reduce



# ---------------------------------------------------------------------------------------------------- oracle


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    dot = sum(float(x) * float(y) for x, y in zip(a, b))
    return dot / (math.sqrt(sum(float(x) ** 2 for x in a)) * math.sqrt(sum(float(y) ** 2 for y in b)))


def least_similar(frame: torch.Tensor, anchor: torch.Tensor, p: int) -> list[int]:
    """The p tokens of ``frame`` least similar to the same position of ``anchor``, least similar first."""
    sims = [(cos(frame[j], anchor[j]), j) for j in range(frame.shape[0])]
    return [j for _, j in sorted(sims)[:p]]


def ref_dycoke(x: torch.Tensor, k: float | None = None, p: int | None = None, mode: str = "faithful"):
    """Per frame ``(tokens, anchors)``, the official loops. Faithful: an odd video's last frame is lost, step 2
    runs for i < F - 4 (and is empty for F <= 4 instead of raising). Clean: the documented fixes."""
    f, n, _ = x.shape
    if p is None:
        p = int((1 - k) * n)
    if f == 1:
        return [(x[0], list(range(n)))]
    out: dict[int, list[int]] = {}
    for i in range(0, f - 1, 2):  # step 1: pairs
        out[i] = list(range(n))
        out[i + 1] = least_similar(x[i + 1], x[i], p)
    if mode == "clean" and f % 2:
        out[f - 1] = list(range(n))
    for i in range(0, f - (4 if mode == "faithful" else 2), 4):  # step 2
        out[i] = list(range(n))
        out[i + 2] = least_similar(x[i + 2], x[i], p)
    rows = []
    for i in range(f):
        anchors = out.get(i, [])
        if mode == "clean":
            anchors = sorted(anchors)
        rows.append((x[i, anchors] if anchors else x[i, :0], anchors))
    return rows


# ---------------------------------------------------------------------------------------------------- oracle agreement


@pytest.mark.parametrize("mode", ["faithful", "clean"])
@pytest.mark.parametrize("k", [0.0, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("frames", [1, 2, 3, 4, 5, 6, 8, 9, 12])
def test_merging_ratio_equals_the_official_loops(frames, k, mode):
    x = video(frames, frames, 12, 6, still=0.3)
    check_against(dycoke(x, merging_ratio=k, mode=mode), ref_dycoke(x, k=k, mode=mode))


def test_default_is_the_official_k():
    x = video(1, 8, 20, 5)
    check_against(dycoke(x), ref_dycoke(x, k=0.7))


def test_several_videos_one_call_each():
    for seed, (frames, n, c) in enumerate([(8, 16, 8), (5, 9, 4), (16, 10, 6), (7, 25, 3)]):
        x = video(seed, frames, n, c, still=0.5)
        check_against(dycoke(x, merging_ratio=0.6), ref_dycoke(x, k=0.6))
        check_against(dycoke(x, merging_ratio=0.6, mode="clean"), ref_dycoke(x, k=0.6, mode="clean"))


def test_a_video_budget_fills_what_the_whole_frames_leave():
    x = video(2, 8, 16, 4)
    # faithful, 8 frames: frames 0, 4, 6 whole, five pruned; keep=10 → 80 in all → (80 - 48) // 5 = 6 each
    red = dycoke(x, keep=10)
    assert red.counts == [16, 6, 6, 6, 16, 6, 16, 6]
    check_against(red, ref_dycoke(x, p=6))
    # clean, 8 frames: frames 0 and 4 whole, six pruned → (80 - 32) // 6 = 8
    assert dycoke(x, keep=10, mode="clean").counts == [16, 8, 8, 8, 16, 8, 8, 8]
    # below the whole frames: pruned frames are emptied, the whole ones stay
    assert dycoke(x, keep=2).counts == [16, 0, 0, 0, 16, 0, 16, 0]
    info = get("dycoke")
    assert info.temporal
    for opts, frames in (({"keep": 10}, 8), ({"ratio": 0.3}, 5), ({}, 7), ({"keep": 3, "mode": "clean"}, 9)):
        y = video(3, frames, 16, 4)
        assert sum(dycoke(y, **opts).counts) == info.count(make_config("dycoke", **opts), 16, frames)


# ---------------------------------------------------------------------------------------------------- properties


def test_deterministic_and_identity_at_full_budget():
    x = video(4, 6, 12, 5, still=0.3)
    a, b = dycoke(x, keep=5), dycoke(x, keep=5)
    for f in ("features", "anchors", "lengths", "assignment"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    full = dycoke(x, merging_ratio=0.0, mode="clean")
    assert torch.equal(full.features, x) and torch.equal(full.assignment, torch.arange(12).expand(6, 12))
    assert torch.equal(dycoke(x, keep=12, mode="clean").features, x)
    # faithful at full budget keeps every token, pruned frames in the official (similarity) order
    faithful = dycoke(x, merging_ratio=0.0)
    assert faithful.counts == [12] * 6 and not torch.equal(faithful.features, x)


def test_odd_video_loses_its_last_frame_only_in_faithful_mode():
    x = video(5, 5, 9, 4)
    assert dycoke(x, merging_ratio=0.5).counts == [9, 4, 4, 4, 0]
    assert dycoke(x, merging_ratio=0.5, mode="clean").counts == [9, 4, 4, 4, 9]


def test_one_frame_and_identical_frames():
    x = randn(0, 1, 10, 4)
    red = dycoke(x, keep=1)
    assert red.counts == [10] and torch.equal(red.features, x)
    frame = randn(1, 1, 8, 5)
    same = frame.expand(4, -1, -1).contiguous()
    red = dycoke(same, merging_ratio=0.5, mode="clean")
    assert red.counts == [8, 4, 4, 4]
    for f in range(4):
        got, anchors = red.item(f)
        torch.testing.assert_close(got, frame[0, anchors], rtol=0, atol=0)


def test_assignment_and_bad_options():
    x = video(6, 6, 10, 4)
    red = dycoke(x, merging_ratio=0.5)
    for f in range(6):
        kept = red.assignment[f] >= 0
        assert sorted(kept.nonzero().flatten().tolist()) == sorted(red.item(f)[1].tolist())
        assert torch.equal(red.anchors[f, red.assignment[f][kept]], kept.nonzero().flatten())
    for bad in ({"merging_ratio": 1.5}, {"merging_ratio": 0.5, "keep": 3}, {"mode": "fast"}):
        with pytest.raises(ValueError, match="dycoke"):
            DyCokeConfig(**bad)
    assert dycoke(x[:0]).features.shape == (0, 0, 4)
    assert reduce("dycoke", x, {}, keep=5).method == "dycoke"


# ---------------------------------------------------------------------------------------------------- through apply


@pytest.mark.parametrize("opts", [{"merging_ratio": 0.5}, {"keep": 6, "mode": "clean"}])
def test_through_apply_on_the_video_families(opts):
    def oracle(feats, _attn):
        f, n, _ = feats.shape
        mode = opts.get("mode", "faithful")
        if "keep" not in opts:
            return ref_dycoke(feats, k=opts["merging_ratio"], mode=mode)
        whole = [i for i, (_, a) in enumerate(ref_dycoke(feats, p=0, mode=mode)) if len(a) == n]
        pruned = f - len(whole) - (1 if mode == "faithful" and f % 2 and f > 1 else 0)
        p = max(0, min(n, (opts["keep"] * f - n * len(whole)) // pruned)) if pruned else 0
        return ref_dycoke(feats, p=p, mode=mode)

    check_through_apply("dycoke", opts, oracle)
