"""Tests of ``fastvid`` against a literal, slow transcription of FastVID's rule (LunarShen/FastVID a40a109,
fastvid_llavaonevision/LLaVA-NeXT/llava/model/language_model/modeling_qwen2.py; LightCompress fastvid.py),
with the substitutions the module documents (global feature = the frame's mean token, salience = cls_attn, the
1e-6 density noise from ``torch.rand((F, R), generator=seed)``). Distances, densities and similarities are
computed token by token in float64; the oracle never calls the code under test.
"""

from __future__ import annotations

import math
import struct

import pytest
import torch
from video_support import check_against, check_through_apply, randn, scores, video

from slimvlm.methods import FastVIDConfig, fastvid, get, make_config, reduce



# ---------------------------------------------------------------------------------------------------- oracle


def dot(a, b) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b))


def norm(a) -> float:
    return math.sqrt(dot(a, a))


def distance(a, b) -> float:
    return math.sqrt(sum((float(x) - float(y)) ** 2 for x, y in zip(a, b)))


def segments(x: torch.Tensor, c: int, tau: float) -> list[int]:
    f = x.shape[0]
    g = [x[i].double().mean(0) for i in range(f)]
    g = [v / norm(v) for v in g]
    sims = [dot(g[i], g[i + 1]) for i in range(f - 1)]
    lowest = [i for _, i in sorted((s, i) for i, s in enumerate(sims))[: min(c - 1, f - 1)]]
    cuts = sorted(set(lowest) | {i for i, s in enumerate(sims) if s < tau})
    bounds = [-1] + cuts + [f - 1]
    return [bounds[i + 1] - bounds[i] for i in range(len(bounds) - 1)]


def f32(v: float) -> float:
    """``v`` rounded to float32, the dtype the official code computes densities in."""
    return struct.unpack("f", struct.pack("f", v))[0]


def density_scores(tokens: list[torch.Tensor], noise: list[float]) -> list[float]:
    """DPC-KNN score of each token: distance to the nearest denser token × density (4 nearest, itself included).
    The density and its noise are float32 values as in the official code (features of tiny scale have
    densities within a few float32 steps of each other: which is denser is then decided in float32)."""
    r = len(tokens)
    c = tokens[0].shape[0]
    d = [[distance(tokens[i], tokens[j]) / math.sqrt(c) for j in range(r)] for i in range(r)]
    k = min(4, r)
    dens = [f32(f32(math.exp(-sum(v * v for v in sorted(d[i])[:k]) / k)) + noise[i]) for i in range(r)]
    far = max(max(row) for row in d)
    parent = [min([d[i][j] for j in range(r) if dens[j] > dens[i]] or [far]) for i in range(r)]
    return [parent[i] * dens[i] for i in range(r)]


def merge(pool: list[torch.Tensor], targets: list[torch.Tensor], beta: float) -> tuple[list[torch.Tensor], list[int]]:
    """DTM: every pool token joins its most cosine-similar target (first on ties); a target becomes
    ``w · target + (1 - w) · mean(joined)``, ``w = max(1 / (count + 1), beta)``."""
    joined = []
    for t in pool:
        sims = [dot(t, u) / (norm(t) * norm(u)) for u in targets]
        joined.append(max(range(len(targets)), key=lambda i: (sims[i], -i)))
    out = []
    for i, u in enumerate(targets):
        members = [pool[j] for j in range(len(pool)) if joined[j] == i]
        w = max(1 / (len(members) + 1), beta)
        mean = sum(members) / len(members) if members else torch.zeros_like(u)
        out.append(w * u + (1 - w) * mean)
    return out, joined


def ref_fastvid(x, attn, retain, d=0.4, c=8, tau=0.9, p=4, beta=0.6, seed=0):
    f, n, _ = x.shape
    x = x.double()
    salient = retain - int(retain * d)
    context = retain - salient
    sizes = segments(x, c, tau)
    shares = []
    for size in sizes:
        share = (context * size) // math.ceil(size / p)
        shares += [share if (size - 1 - q) % p == 0 else 0 for q in range(size)]
    top = [sorted(range(n), key=lambda j: (-float(attn[i, j]), j))[:salient] for i in range(f)]
    rest = [[j for j in range(n) if j not in set(top[i])] for i in range(f)]
    r = n - salient
    noise = (torch.rand((f, r), generator=torch.Generator().manual_seed(seed)) * 1e-6).tolist()
    kept = {i: {j: x[i, j] for j in top[i]} for i in range(f)}
    if context > 0:
        score = [density_scores([x[i, j] for j in rest[i]], noise[i]) for i in range(f)]
        best = [sorted(range(r), key=lambda t: (-score[i][t], t)) for i in range(f)]
        for i in range(f):
            if shares[i] == context:
                targets = [rest[i][t] for t in best[i][:context]]
                merged, _ = merge([x[i, j] for j in rest[i]], [x[i, j] for j in targets], beta)
                kept[i].update(zip(targets, merged))
        start = 0
        for size in sizes:
            frames = list(range(start, start + size))
            start += size
            if size == 1:
                continue
            m = min(shares[frames[-1]], r)
            pool = [x[i, j] for i in frames for j in rest[i]]
            for i in frames:
                if shares[i] > context:
                    targets = [rest[i][t] for t in best[i][:m]]
                    merged, _ = merge(pool, [x[i, j] for j in targets], beta)
                    kept[i].update(zip(targets, merged))
    rows = []
    for i in range(f):
        anchors = sorted(kept[i])
        rows.append((torch.stack([kept[i][a] for a in anchors]).float() if anchors else x[i, :0].float(), anchors))
    return rows


# ---------------------------------------------------------------------------------------------------- oracle agreement

SEGMENTATION = [(8, 0.9, 4), (2, 0.0, 4), (3, 0.5, 2), (1, -1.0, 3)]  # (c, tau, p): 1 segment … every frame cut


@pytest.mark.parametrize("c,tau,p", SEGMENTATION)
@pytest.mark.parametrize("frames,n,keep,d", [(1, 16, 6, 0.4), (3, 12, 5, 0.4), (6, 16, 8, 0.5), (9, 10, 4, 0.4), (5, 12, 6, 1.0)])
def test_equals_the_official_rule(frames, n, keep, d, c, tau, p):
    x = video(frames * 10 + n, frames, n, 6, still=0.7)
    attn = scores(frames, frames, n)
    red = fastvid(x, cls_attn=attn, keep=keep, stprune_d=d, dyseg_c=c, dyseg_tau=tau, dtm_p=p)
    check_against(red, ref_fastvid(x, attn, keep, d=d, c=c, tau=tau, p=p))


def test_several_videos_one_call_each_and_the_default_budget():
    for seed, (frames, n) in enumerate([(4, 16), (7, 9), (2, 25), (8, 12)]):
        x = video(seed, frames, n, 5, still=0.8)
        attn = scores(seed + 50, frames, n)
        check_against(fastvid(x, cls_attn=attn, dyseg_c=2, dyseg_tau=0.2, seed=seed), ref_fastvid(x, attn, max(1, int(n * 0.1)), c=2, tau=0.2, seed=seed))
        check_against(fastvid(x, cls_attn=attn, ratio=0.5, dtm_beta=0.3), ref_fastvid(x, attn, int(n * 0.5), beta=0.3))


def test_segments_follow_dyseg():
    x = video(3, 6, 16, 4, still=0.95)
    x[3:] = video(8, 3, 16, 4, still=0.95)  # a scene cut between frames 2 and 3
    from slimvlm.methods.fastvid import fastvid_segments

    assert fastvid_segments(x, 1, 0.5) == segments(x, 1, 0.5) == [3, 3]
    assert fastvid_segments(x, 8, 0.5) == [1] * 6  # c - 1 = 7 > 5 pairs: every pair is cut


# ---------------------------------------------------------------------------------------------------- properties


def test_counts_determinism_and_one_frame():
    x = video(4, 6, 16, 5, still=0.8)
    attn = scores(4, 6, 16)
    a = fastvid(x, cls_attn=attn, keep=6, dyseg_c=2, dyseg_tau=0.0)
    b = fastvid(x, cls_attn=attn, keep=6, dyseg_c=2, dyseg_tau=0.0)
    for f in ("features", "anchors", "lengths", "assignment"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    assert sum(a.counts) <= 6 * 6
    single = fastvid(x, cls_attn=attn, keep=6)  # every frame its own segment: exactly 6 each
    assert single.counts == [6] * 6
    one = fastvid(x[:1], cls_attn=attn[:1], keep=7)
    assert one.counts == [7]
    info = get("fastvid")
    assert info.temporal and info.needs == ("cls_attn",)
    cfg = make_config("fastvid", keep=7)
    assert info.count(cfg, 16) == 7 and info.count(cfg, 16, 6) is None
    assert make_config("fastvid").count(100) == 10  # official default retention 10 %


def test_salient_tokens_are_kept_unchanged_and_assignment():
    x = video(5, 5, 12, 4, still=0.8)
    attn = scores(5, 5, 12)
    red = fastvid(x, cls_attn=attn, keep=5, stprune_d=0.4, dyseg_c=2, dyseg_tau=0.0)
    salient = 5 - int(5 * 0.4)
    for f in range(5):
        top = attn[f].topk(salient).indices
        feats, anchors = red.item(f)
        for j in top.tolist():
            assert j in anchors.tolist()
            assert torch.equal(feats[anchors.tolist().index(j)], x[f, j])
        kept = red.assignment[f] >= 0
        assert set(anchors.tolist()) <= set(kept.nonzero().flatten().tolist())
        assert torch.equal(red.anchors[f, red.assignment[f, anchors]], anchors)


def test_identical_frames_form_one_segment():
    frame = randn(2, 1, 12, 5)
    same = frame.expand(8, -1, -1).contiguous()
    attn = scores(2, 1, 12).expand(8, -1).contiguous()
    red = fastvid(same, cls_attn=attn, keep=5, dyseg_c=1)
    check_against(red, ref_fastvid(same, attn, 5, c=1))
    # one segment of 8 frames, p = 4: frames 3 and 7 are its anchor frames
    assert [n > 3 for n in red.counts] == [False, False, False, True, False, False, False, True]


def test_zero_budget_edge_and_bad_inputs():
    x = video(6, 4, 10, 3)
    attn = scores(6, 4, 10)
    assert fastvid(x, cls_attn=attn, ratio=0.01).counts == [1] * 4  # at least one token per frame
    assert fastvid(x, cls_attn=attn, keep=4, stprune_d=0.0).counts == [4] * 4  # salient only
    with pytest.raises(ValueError, match="cls_attn"):
        fastvid(x)
    with pytest.raises(ValueError, match="cls_attn"):
        fastvid(x, cls_attn=attn[:, :5])
    for bad in ({"dyseg_c": 0}, {"dtm_p": 1.5}, {"stprune_d": 2.0}, {"dtm_beta": -1}, {"seed": "a"}):
        with pytest.raises(ValueError, match="fastvid"):
            FastVIDConfig(**bad)
    assert reduce("fastvid", x, {"cls_attn": attn, "keys": x}, keep=3).method == "fastvid"


# ---------------------------------------------------------------------------------------------------- through apply


@pytest.mark.parametrize("opts", [{"keep": 4}, {"keep": 6, "dyseg_c": 1, "dyseg_tau": -1.0, "dtm_p": 2}])
def test_through_apply_on_the_video_families(opts):
    def oracle(feats, attn):
        n = feats.shape[1]
        return ref_fastvid(feats, attn, min(opts["keep"], n), c=opts.get("dyseg_c", 8), tau=opts.get("dyseg_tau", 0.9),
                           p=opts.get("dtm_p", 4))

    check_through_apply("fastvid", opts, oracle)
