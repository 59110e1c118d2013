"""Tests of ``holitom`` against a literal, slow transcription of HoliTom's merging before the LLM
(cokeshao/HoliTom e9b2972, holitom/llava_arch.py; the window search as LightCompress writes it, llmc/compression/
token_reduction/holitom.py ``select_static_windows``: a loop over every (start, end) and a dynamic programme).
Per-token loops in float64, except the DPC-KNN densities, which are float32 values as the official code computes
them; the 1e-6 noise is ``torch.rand(shape, generator=seed)`` drawn window by window, dynamic then static. The
oracle never calls the code under test.
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction

import pytest
import torch
from video_support import check_against, check_through_apply, randn, scores, video

from slimvlm.methods import HoliTomConfig, get, holitom, make_config, reduce
from slimvlm.methods.holitom import static_windows



# ---------------------------------------------------------------------------------------------------- oracle


def dot(a, b) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b))


def cos(a, b) -> float:
    return dot(a, b) / (math.sqrt(dot(a, a)) * math.sqrt(dot(b, b)))


def f32(v: float) -> float:
    return struct.unpack("f", struct.pack("f", v))[0]


def ref_windows(sim: list[list[float]], frames: int, tau: float, max_window: int = 1024):
    """``select_static_windows``: saved tokens of every window, then the dynamic programme and its backtrack."""
    n = len(sim[0]) if sim else 0
    saved = [[0] * frames for _ in range(frames)]
    for start in range(frames):
        for end in range(start + 1, frames):
            static = sum(all(sim[f][j] > tau for f in range(start, end)) for j in range(n))
            saved[start][end] = static * (end - start)
    dp, prev = [0] * frames, [0] * frames
    for i in range(frames):
        max_val = dp[i - 1] if i > 0 else 0
        best_j = i
        for window_size in range(2, min(i + 1, max_window) + 1):
            j = i - window_size
            current = (dp[j] if j >= 0 else 0) + saved[j + 1][i]
            if current > max_val:
                max_val, best_j = current, j + 1
        dp[i], prev[i] = max_val, best_j
    windows, i = [], frames - 1
    while i >= 0:
        windows.append((prev[i], i))
        i = prev[i] - 1
    return windows[::-1], dp[-1]


def ref_clusters(tokens: list[torch.Tensor], m: int, k: int, noise: list[float], beta: float):
    """DPC-KNN with k neighbours: m centres (best scores, then in position order); every other token joins its
    nearest centre; a centre with members becomes beta · centre + (1 - beta) · mean(members).
    Returns (merged tokens, centre indices, the centre index each token joined)."""
    r = len(tokens)
    c = tokens[0].shape[0]
    d = [[math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(tokens[i], tokens[j]))) / math.sqrt(c)
          for j in range(r)] for i in range(r)]
    dens = [f32(f32(math.exp(-sum(v * v for v in sorted(d[i])[:k]) / k)) + noise[i]) for i in range(r)]
    far = max(max(row) for row in d)
    parent = [min([d[i][j] for j in range(r) if dens[j] > dens[i]] or [far]) for i in range(r)]
    score = [parent[i] * dens[i] for i in range(r)]
    centres = sorted(sorted(range(r), key=lambda i: (-score[i], i))[:m])
    joined = {}
    for i in range(r):
        if i in centres:
            joined[i] = i
        else:
            joined[i] = min(centres, key=lambda t: (d[i][t], centres.index(t)))
    merged = []
    for t in centres:
        members = [tokens[i] for i in range(r) if joined[i] == t and i != t]
        merged.append(beta * tokens[t] + (1 - beta) * sum(members) / len(members) if members else tokens[t])
    return merged, centres, joined


def ref_holitom(x, attn, rate, tau=0.8, d=0.0, beta=0.6, k=7, max_window=1024, seed=0):
    frames, n, _ = x.shape
    x = x.double()
    unit = [[x[f, j] / math.sqrt(dot(x[f, j], x[f, j])) for j in range(n)] for f in range(frames)]
    sim = [[cos(unit[f][j], unit[f + 1][j]) for j in range(n)] for f in range(frames - 1)]
    windows, reduced = ref_windows(sim, frames, tau, max_window)
    total = frames * n
    if isinstance(rate, Fraction):
        rate = min(rate / (Fraction(total - reduced, total)), Fraction(1))
    else:
        rate = min(rate / ((total - float(reduced)) / total), 1)
    gen = torch.Generator().manual_seed(seed)
    rows = {f: [] for f in range(frames)}  # (anchor, token) in output order
    for s, e in windows:
        size = e - s + 1
        static = [size > 1 and all(sim[f][j] > tau for f in range(s, e)) for j in range(n)]
        dyn = [j for j in range(n) if not static[j]]
        budget = math.ceil(len(dyn) * rate)
        dominant = round(budget * (1 - d))
        contextual = budget - dominant
        per_frame = {}
        for f in range(s, e + 1):
            best = sorted(sorted(dyn, key=lambda j: (-float(attn[f, j]), dyn.index(j)))[:dominant])
            per_frame[f] = [(j, x[f, j]) for j in best]
        if contextual > 0:
            noise = (torch.rand((size, len(dyn) - dominant), generator=gen) * 1e-6).tolist()
            for w, f in enumerate(range(s, e + 1)):
                chosen = {j for j, _ in per_frame[f]}
                others = [j for j in dyn if j not in chosen]
                merged, centres, _ = ref_clusters([x[f, j] for j in others], contextual, min(k, contextual), noise[w], beta)
                per_frame[f] += [(others[t], tok) for t, tok in zip(centres, merged)]
        stat = [j for j in range(n) if static[j]]
        clusters = round(len(stat) * rate)
        if size > 1 and clusters > 0:
            mean = [sum(x[f, j] for f in range(s, e + 1)) / size for j in stat]
            noise = (torch.rand((1, len(stat)), generator=gen) * 1e-6).tolist()
            merged, centres, _ = ref_clusters(mean, clusters, min(k, clusters), noise[0], beta)
            rows[s] += [(stat[t], tok) for t, tok in zip(centres, merged)]
        for f in range(s, e + 1):
            rows[f] += per_frame[f]
    out = []
    for f in range(frames):
        anchors = [a for a, _ in rows[f]]
        out.append((torch.stack([t for _, t in rows[f]]).float() if anchors else x[f, :0].float(), anchors))
    return out


# ---------------------------------------------------------------------------------------------------- oracle agreement


@pytest.mark.parametrize("opts", [{}, {"retain_ratio": 0.3}, {"keep": 5}, {"ratio": 0.4, "d": 0.5}, {"keep": 6, "d": 1.0, "knn": 3},
                                  {"retain_ratio": 0.25, "tau": 0.5, "beta": 0.2, "max_window": 2}])
@pytest.mark.parametrize("frames,n", [(1, 16), (2, 12), (5, 16), (8, 9)])
def test_equals_the_official_rule(frames, n, opts):
    x = video(frames * 7 + n, frames, n, 6, still=0.6)
    attn = scores(frames + 1, frames, n)
    red = holitom(x, cls_attn=attn, **opts)
    cfg = HoliTomConfig(**opts)
    rate = Fraction(min(opts["keep"], n), n) if "keep" in opts else (
        Fraction(max(1, int(n * opts["ratio"])), n) if "ratio" in opts else opts.get("retain_ratio", 0.10))
    check_against(red, ref_holitom(x, attn, rate, tau=cfg.tau, d=cfg.d, beta=cfg.beta, k=cfg.knn, max_window=cfg.max_window))


def test_several_videos_one_call_each():
    for seed, (frames, n, c) in enumerate([(4, 16, 8), (7, 9, 5), (3, 25, 4), (6, 12, 6)]):
        x = video(seed, frames, n, c, still=0.7)
        attn = scores(seed + 20, frames, n)
        check_against(holitom(x, cls_attn=attn, retain_ratio=0.2, d=0.5, seed=seed),
                      ref_holitom(x, attn, 0.2, d=0.5, seed=seed))


def test_windows_equal_the_official_search():
    for seed, still in enumerate([0.0, 0.3, 0.7, 1.0]):
        x = video(seed, 9, 10, 4, still=still)
        unit = torch.nn.functional.normalize(x, dim=-1)
        sim = torch.nn.functional.cosine_similarity(unit[:-1], unit[1:], dim=-1)
        for tau, window in ((0.8, 1024), (0.5, 3), (0.99, 2)):
            want = ref_windows(sim.double().tolist(), 9, tau, window)
            assert static_windows(sim > tau, window) == want


# ---------------------------------------------------------------------------------------------------- properties


def test_counts_determinism_and_one_frame():
    x = video(3, 6, 16, 5, still=0.6)
    attn = scores(3, 6, 16)
    a, b = holitom(x, cls_attn=attn, keep=4), holitom(x, cls_attn=attn, keep=4)
    for f in ("features", "anchors", "lengths", "assignment"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    one = holitom(x[:1], cls_attn=attn[:1], keep=5)
    assert one.counts == [5]
    assert one.anchors[0].tolist() == sorted(attn[0].topk(5).indices.tolist())  # its top-5 by attention
    assert torch.equal(one.item(0)[0], x[0, one.anchors[0]])
    info = get("holitom")
    assert info.temporal and info.needs == ("cls_attn",)
    assert info.count(make_config("holitom", keep=5), 16) == 5 and info.count(make_config("holitom", keep=5), 16, 6) is None
    assert make_config("holitom").count(196) == 20  # the official ceil(196 · 0.10)
    # K per frame on average, each frame's share rounded up (ceil) as the official code does
    for seed in range(4):
        counts = holitom(video(seed, 8, 16, 5, still=0.3), cls_attn=scores(seed, 8, 16), keep=4).counts
        assert 8 * 4 - 16 <= sum(counts) <= 8 * 4 + 8, counts


def test_identity_at_full_budget_without_static_tokens():
    x = randn(5, 4, 12, 6)  # unrelated frames: nothing static
    attn = scores(5, 4, 12)
    red = holitom(x, cls_attn=attn, keep=12)
    assert torch.equal(red.features, x) and torch.equal(red.assignment, torch.arange(12).expand(4, 12))


def test_identical_frames_merge_into_the_first():
    frame = randn(6, 1, 12, 5)
    same = frame.expand(6, -1, -1).contiguous()
    attn = scores(6, 1, 12).expand(6, -1).contiguous()
    red = holitom(same, cls_attn=attn, keep=2)
    # one window of 6 frames, every position static: r' = 2/12 · 72 / (72 - 60) = 1 → all 12 in frame 0
    assert red.counts == [12, 0, 0, 0, 0, 0]
    torch.testing.assert_close(red.item(0)[0], frame[0, red.item(0)[1]], rtol=0, atol=1e-6)
    check_against(red, ref_holitom(same, attn, Fraction(2, 12)))
    # the other frames' tokens merged into frame 0: dropped from their own rows
    assert bool((red.assignment[1:] == -1).all()) and bool((red.assignment[0] >= 0).all())


def test_assignment_points_at_slots_of_the_same_frame():
    x = video(7, 6, 12, 5, still=0.6)
    attn = scores(7, 6, 12)
    red = holitom(x, cls_attn=attn, keep=4, d=0.5)
    for f in range(6):
        _, anchors = red.item(f)
        kept = red.assignment[f] >= 0
        assert set(anchors.tolist()) <= set(kept.nonzero().flatten().tolist())
        assert torch.equal(red.assignment[f, anchors], torch.arange(len(anchors)))


def test_zero_budget_edge_and_bad_inputs():
    x = video(8, 4, 10, 3)
    attn = scores(8, 4, 10)
    assert holitom(x[:1], cls_attn=attn[:1], ratio=0.01).counts == [1]
    assert sum(holitom(x, cls_attn=attn, ratio=0.01).counts) <= 4 + 4  # 1 per frame, rounded up per frame
    with pytest.raises(ValueError, match="cls_attn"):
        holitom(x)
    for bad in ({"retain_ratio": 0.0}, {"retain_ratio": 0.2, "keep": 3}, {"d": 1.5}, {"knn": 0}, {"max_window": 0}, {"tau": "x"}):
        with pytest.raises(ValueError, match="holitom"):
            HoliTomConfig(**bad)
    assert reduce("holitom", x, {"cls_attn": attn}, keep=3).method == "holitom"


# ---------------------------------------------------------------------------------------------------- through apply


@pytest.mark.parametrize("opts", [{"keep": 4}, {"keep": 6, "tau": 0.3, "d": 0.5}])
def test_through_apply_on_the_video_families(opts):
    def oracle(feats, attn):
        n = feats.shape[1]
        return ref_holitom(feats, attn, Fraction(min(opts["keep"], n), n), tau=opts.get("tau", 0.8), d=opts.get("d", 0.0))

    check_through_apply("holitom", opts, oracle)
