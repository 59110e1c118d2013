"""Tests of ``evs`` (vLLM's Efficient Video Sampling) against a literal, slow transcription of vLLM's
``compute_retention_mask`` / ``compute_retained_tokens_count`` (vllm-project/vllm 926c71f6,
vllm/multimodal/evs.py), written here with one Python loop over the tokens; it never calls the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from video_support import check_against, check_through_apply, randn, video

from slimvlm.methods import EVSConfig, evs, get, make_config, reduce



# ---------------------------------------------------------------------------------------------------- oracle


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    dot = sum(float(x) * float(y) for x, y in zip(a, b))
    na = math.sqrt(sum(float(x) ** 2 for x in a))
    nb = math.sqrt(sum(float(y) ** 2 for y in b))
    return dot / max(na * nb, 1e-8)


def ref_evs(x: torch.Tensor, retain: int) -> list[tuple[torch.Tensor, list[int]]]:
    """vLLM's rule on one video ``(T, n, C)``: dissimilarity to the previous frame (255 for frame 0), the
    ``retain`` largest over the whole video, ties to the earlier token; kept in order."""
    t_count, n, _ = x.shape
    entries = []
    for t in range(t_count):
        for j in range(n):
            d = 255.0 if t == 0 else 1.0 - cosine(x[t, j], x[t - 1, j])
            entries.append((d, t * n + j))
    entries.sort(key=lambda e: (-e[0], e[1]))
    kept = {i for _, i in entries[:retain]}
    rows = []
    for t in range(t_count):
        anchors = [j for j in range(n) if t * n + j in kept]
        rows.append((x[t, anchors] if anchors else x[t, :0], anchors))
    return rows


def ref_count(n: int, frames: int, q: float) -> int:
    """``compute_retained_tokens_count``."""
    return max(n, int(n * frames * (1 - q)))


# ---------------------------------------------------------------------------------------------------- oracle agreement


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.75, 0.9, 0.999])
@pytest.mark.parametrize("frames,n,c", [(1, 9, 4), (2, 16, 8), (5, 12, 6), (8, 16, 8)])
def test_pruning_rate_equals_vllm(frames, n, c, q):
    x = video(frames * 100 + n, frames, n, c, still=0.4)
    red = evs(x, pruning_rate=q)
    check_against(red, ref_evs(x, ref_count(n, frames, q)))


def test_several_videos_one_call_each():
    """Four videos of different lengths and sizes (B=1 per call, as the pipeline calls it per video)."""
    for seed, (frames, n, c) in enumerate([(3, 16, 8), (6, 9, 5), (4, 25, 7), (7, 4, 3)]):
        x = video(seed, frames, n, c, still=0.5)
        for opts, total in (({"keep": 5}, 5 * frames), ({"ratio": 0.3}, int(n * frames * 0.3)), ({}, int(n * frames * 0.25))):
            red = evs(x, **opts)
            check_against(red, ref_evs(x, max(n, min(total, n * frames))))


def test_keep_and_ratio_are_per_video_with_the_first_frame_whole():
    x = video(1, 8, 16, 6, still=0.3)
    assert sum(evs(x, keep=4).counts) == 32  # 4 per frame on average
    assert sum(evs(x, keep=1).counts) == 16  # never below the first frame
    assert evs(x, keep=1).counts[0] == 16
    assert sum(evs(x, ratio=0.5).counts) == 64
    info, cfg = get("evs"), make_config("evs", keep=4)
    assert info.temporal
    assert info.count(cfg, 16, 8) == 32 and info.count(cfg, 16) == 16 and cfg.count(16) == 16


# ---------------------------------------------------------------------------------------------------- properties


def test_deterministic_and_bit_identical_at_full_budget():
    x = video(3, 5, 16, 8, still=0.5)
    a, b = evs(x, keep=6), evs(x, keep=6)
    for f in ("features", "anchors", "lengths", "assignment"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    full = evs(x, pruning_rate=0.0)
    assert torch.equal(full.features, x) and full.counts == [16] * 5
    assert torch.equal(full.assignment, torch.arange(16).expand(5, 16))
    assert torch.equal(evs(x, ratio=1.0).features, x)


def test_assignment_points_at_the_kept_slots():
    x = video(4, 6, 12, 5, still=0.5)
    red = evs(x, keep=4)
    for f in range(6):
        _, anchors = red.item(f)
        kept = red.assignment[f] >= 0
        assert sorted(kept.nonzero().flatten().tolist()) == anchors.tolist()
        assert torch.equal(red.anchors[f, red.assignment[f][kept]], kept.nonzero().flatten())


def test_one_frame_is_kept_whole():
    x = randn(0, 1, 10, 4)
    for opts in ({"keep": 1}, {"ratio": 0.1}, {"pruning_rate": 0.99}, {}):
        red = evs(x, **opts)
        assert red.counts == [10] and torch.equal(red.features, x)


def test_identical_frames_keep_the_first_frame():
    frame = randn(1, 1, 12, 6)
    x = frame.expand(4, -1, -1).contiguous()
    red = evs(x, keep=3)  # 12 tokens in all: exactly the first frame
    assert red.counts == [12, 0, 0, 0]
    assert torch.equal(red.item(0)[0], frame[0])
    assert sum(evs(x, keep=5).counts) == 20


def test_the_most_changed_tokens_win():
    x = randn(2, 3, 8, 4)
    x[1] = x[0]
    x[2] = x[1]
    x[1, 5] = -x[0, 5]  # token 5 of frame 1 flips (dissimilarity 2)
    x[2, 2] = randn(9, 4)  # token 2 of frame 2 changes
    red = evs(x, keep=4)  # 12 = the first frame + 4
    assert red.item(1)[1].tolist()[:1] == [5] and 2 in red.item(2)[1].tolist()


def test_zero_budget_edge_and_bad_options():
    x = video(5, 4, 9, 3)
    assert evs(x, pruning_rate=0.999999).counts == [9, 0, 0, 0]
    empty = evs(x[:0])
    assert empty.features.shape == (0, 0, 3)
    for bad in ({"pruning_rate": 1.0}, {"pruning_rate": -0.1}, {"pruning_rate": 0.5, "keep": 3}, {"pruning_rate": "x"}):
        with pytest.raises(ValueError, match="evs"):
            EVSConfig(**bad)
    with pytest.raises(ValueError, match="NaN"):
        evs(torch.full((2, 4, 3), float("nan")))


def test_reduce_by_name():
    x = video(6, 4, 9, 3, still=0.3)
    red = reduce("evs", x, {"grid": (3, 3)}, keep=2)
    assert red.method == "evs" and sum(red.counts) == 9


# ---------------------------------------------------------------------------------------------------- through apply


@pytest.mark.parametrize("opts", [{"keep": 3}, {"pruning_rate": 0.6}])
def test_through_apply_on_the_video_families(opts):
    def oracle(feats, _attn):
        f, n, _ = feats.shape
        total = 3 * f if "keep" in opts else int(n * f * (1 - opts["pruning_rate"]))
        return ref_evs(feats, max(n, total))

    check_through_apply("evs", opts, oracle)
