"""Tests of VisionZip (``slimvlm.methods.visionzip``) against a literal, slow transcription of the published
rule (algorithms.md §3 "Notes on the core rules: VisionZip" and the module docstring of ``visionzip.py``).

The oracle loops over tokens with single-vector float64 torch ops and never calls the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimvlm.methods import Reduction, VisionZipConfig, visionzip

SETTINGS = settings(
    max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
ATOL = 1e-5


def randn(seed: int, *shape: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def inputs(seed: int, b: int, n: int, c: int = 6, ck: int = 5, cls: bool = False):
    x = randn(seed, b, n, c)
    attn = torch.rand(b, n, generator=torch.Generator().manual_seed(seed + 1))
    keys = randn(seed + 2, b, n, ck)
    cls_feature = randn(seed + 3, b, c) if cls else None
    return x, attn, keys, cls_feature


# --------------------------------------------------------------------------------------------------------
# Literal oracle
# --------------------------------------------------------------------------------------------------------


def unit(v: torch.Tensor) -> torch.Tensor:
    norm = math.sqrt(sum(float(e) * float(e) for e in v))
    return v / max(norm, 1e-12)


def ref_visionzip_item(x, attn, keys, cls_feature, d: int, c: int, mode: str):
    """One item. Returns (features (M, C) float64, anchors, assignment)."""
    n = x.shape[0]
    # 1. dominant: top-(d-1) patches by [CLS] attention when a [CLS] feature is given (it is the d-th), else top-d
    n_dom = d - 1 if cls_feature is not None else d
    n_dom = max(0, min(n, n_dom))
    ranked = sorted(range(n), key=lambda i: (-float(attn[i]), i))
    dominant = sorted(ranked[:n_dom])  # gathered in raster order
    dom_set = set(dominant)
    # 2. contextual: remaining tokens in raster order, targets at a uniform stride
    rest = [i for i in range(n) if i not in dom_set]
    big_r = len(rest)
    assert c <= big_r, "oracle only covers c <= R"
    out_feats: list[torch.Tensor] = []
    anchors: list[int] = []
    assignment = [-1] * n
    if cls_feature is not None:
        out_feats.append(cls_feature.double())
        anchors.append(-1)
    for i in dominant:
        assignment[i] = len(out_feats)
        out_feats.append(x[i].double())
        anchors.append(i)
    if c > 0:
        step = max(1, big_r // c)
        target_pos = list(range(0, big_r, step))[:c]
        targets = [rest[p] for p in target_pos]
        others = [rest[p] for p in range(big_r) if p not in set(target_pos)]
        target_units = [unit(keys[t].double()) for t in targets]
        assigned: dict[int, list[int]] = {j: [] for j in range(c)}
        for o in others:
            uo = unit(keys[o].double())
            best, best_j = None, None
            for j, ut in enumerate(target_units):
                s = float(torch.dot(uo, ut))
                if best is None or s > best:
                    best, best_j = s, j
            assigned[best_j].append(o)
        first = len(out_feats)
        for j, t in enumerate(targets):
            acc = torch.zeros_like(x[t], dtype=torch.float64)
            for o in assigned[j]:
                acc = acc + x[o].double()
            count = max(1, len(assigned[j]))
            out_feats.append(x[t].double() + acc / count)
            anchors.append(t)
            assignment[t] = first + j
            for o in assigned[j]:
                assignment[o] = first + j
    if mode == "clean":  # sort by anchor, [CLS] (-1) first
        perm = sorted(range(len(anchors)), key=lambda k: (anchors[k], k))
        inverse = {old: new for new, old in enumerate(perm)}
        out_feats = [out_feats[k] for k in perm]
        anchors = [anchors[k] for k in perm]
        assignment = [inverse[s] if s >= 0 else -1 for s in assignment]
    return torch.stack(out_feats), anchors, assignment


def check_against_oracle(red: Reduction, x, attn, keys, cls_feature, d, c, mode):
    b = x.shape[0]
    assert len(red) == b
    for i in range(b):
        feats, anchors, assignment = ref_visionzip_item(
            x[i], attn[i], keys[i], None if cls_feature is None else cls_feature[i], d, c, mode
        )
        m = feats.shape[0]
        assert int(red.lengths[i]) == m
        assert red.features.shape[1] == m
        assert red.anchors[i].tolist() == anchors, f"item {i}: anchors differ"
        assert red.assignment[i].tolist() == assignment, f"item {i}: assignment differs"
        torch.testing.assert_close(red.features[i].double(), feats, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------------------
# vs oracle
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["faithful", "clean"])
@pytest.mark.parametrize("cls", [False, True])
@pytest.mark.parametrize("b", [1, 4])
def test_default_54_plus_10_on_576(mode, cls, b):
    x, attn, keys, cls_feature = inputs(10 + b, b, 576, c=8, ck=6, cls=cls)
    red = visionzip(x, cls_attn=attn, keys=keys, cls_feature=cls_feature, mode=mode)
    assert red.counts == [64] * b
    assert red.method == "visionzip"
    check_against_oracle(red, x, attn, keys, cls_feature, 54, 10, mode)


_COUNTS = [(50, 8, 5), (37, 3, 7), (20, 1, 19), (20, 0, 4), (30, 6, 0), (64, 20, 3)]


@pytest.mark.parametrize("mode", ["faithful", "clean"])
@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize(
    "n,d,c,cls",
    # d counts the [CLS] token when a [CLS] feature is given, so d = 0 is only used without one
    [(*t, False) for t in _COUNTS] + [(*t, True) for t in _COUNTS if t[1] > 0],
)
def test_explicit_counts_match_oracle(mode, b, n, d, c, cls):
    x, attn, keys, cls_feature = inputs(n * 31 + d + c, b, n, cls=cls)
    red = visionzip(x, cls_attn=attn, keys=keys, cls_feature=cls_feature, dominant=d, contextual=c, mode=mode)
    check_against_oracle(red, x, attn, keys, cls_feature, d, c, mode)


@pytest.mark.parametrize("mode", ["faithful", "clean"])
@pytest.mark.parametrize("cls", [False, True])
@pytest.mark.parametrize(
    "n,keep,d,c",
    [
        (576, 192, 162, 30),  # paper budgets (algorithms.md §3 / module docstring)
        (576, 128, 108, 20),
        (576, 64, 54, 10),
        (100, 20, 17, 3),  # round(20 * 10 / 64) = round(3.125) = 3
        (100, 45, 38, 7),  # round(7.03) = 7
        (40, 9, 8, 1),  # round(1.406) = 1
    ],
)
def test_keep_split_matches_oracle(mode, cls, n, keep, d, c):
    b = 2
    x, attn, keys, cls_feature = inputs(keep + n, b, n, cls=cls)
    red = visionzip(x, cls_attn=attn, keys=keys, cls_feature=cls_feature, keep=keep, mode=mode)
    assert red.counts == [keep] * b  # the [CLS] token is counted in the dominant share
    check_against_oracle(red, x, attn, keys, cls_feature, d, c, mode)


def test_ratio_budget():
    # ratio 0.5 of 100 -> 50 tokens: contextual round(50 * 10 / 64) = round(7.8125) = 8, dominant 42
    x, attn, keys, _ = inputs(3, 2, 100)
    red = visionzip(x, cls_attn=attn, keys=keys, ratio=0.5, mode="faithful")
    assert red.counts == [50, 50]
    check_against_oracle(red, x, attn, keys, None, 42, 8, "faithful")


def test_keys_not_features_drive_the_contextual_assignment():
    # The similarity comes from the keys: using the features as keys gives a different assignment.
    x, attn, keys, _ = inputs(5, 2, 40, c=5, ck=5)
    red_keys = visionzip(x, cls_attn=attn, keys=keys, dominant=10, contextual=4, mode="faithful")
    check_against_oracle(red_keys, x, attn, keys, None, 10, 4, "faithful")
    red_feat = visionzip(x, cls_attn=attn, keys=x.clone(), dominant=10, contextual=4, mode="faithful")
    check_against_oracle(red_feat, x, attn, x, None, 10, 4, "faithful")
    assert not torch.equal(red_keys.assignment, red_feat.assignment)


def test_hand_computed_small_example():
    # N = 6 tokens (1-D features), d = 2 dominant, c = 2 contextual, no [CLS].
    # attention: tokens 4 and 1 are the top-2 -> dominant [1, 4] (raster order).
    # rest = [0, 2, 3, 5], R = 4, stride 4 // 2 = 2 -> targets at positions 0, 2 -> tokens 0 and 3.
    # keys: token 2 is closest to target 0, token 5 closest to target 3.
    x = torch.tensor([[[1.0], [10.0], [3.0], [5.0], [20.0], [7.0]]])
    attn = torch.tensor([[0.1, 0.5, 0.0, 0.2, 0.9, 0.3]])
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.0, 1.0], [1.0, 1.0], [0.1, 1.0]]])
    red = visionzip(x, cls_attn=attn, keys=keys, dominant=2, contextual=2, mode="faithful")
    assert red.anchors.tolist() == [[1, 4, 0, 3]]
    # contextual: x0 + mean(x2) = 4 ; x3 + mean(x5) = 12
    torch.testing.assert_close(red.features, torch.tensor([[[10.0], [20.0], [4.0], [12.0]]]))
    assert red.assignment.tolist() == [[2, 0, 2, 3, 1, 3]]
    clean = visionzip(x, cls_attn=attn, keys=keys, dominant=2, contextual=2, mode="clean")
    assert clean.anchors.tolist() == [[0, 1, 3, 4]]
    torch.testing.assert_close(clean.features, torch.tensor([[[4.0], [10.0], [12.0], [20.0]]]))
    assert clean.assignment.tolist() == [[0, 1, 0, 2, 3, 2]]
    # with a [CLS] feature: d = 2 means [CLS] + the single top patch (4)
    cls_feature = torch.tensor([[-1.0]])
    red = visionzip(x, cls_attn=attn, keys=keys, cls_feature=cls_feature, dominant=2, contextual=2, mode="faithful")
    # rest = [0, 1, 2, 3, 5], R = 5, stride 2 -> targets at positions 0, 2 -> tokens 0 and 2
    # token 1 (key e2) and 3 (e2) and 5 (~e2): target 0 key e1, target 2 key (1, .1) -> all go to token 2
    assert red.anchors.tolist() == [[-1, 4, 0, 2]]
    torch.testing.assert_close(red.features, torch.tensor([[[-1.0], [20.0], [1.0], [3.0 + (10.0 + 5.0 + 7.0) / 3]]]))
    assert red.assignment.tolist() == [[2, 3, 3, 3, 1, 3]]


# --------------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------------


@st.composite
def vz_case(draw):
    b = draw(st.integers(1, 3))
    n = draw(st.integers(1, 60))
    keep = draw(st.integers(1, n))
    cls = draw(st.booleans())
    seed = draw(st.integers(0, 10_000))
    mode = draw(st.sampled_from(["faithful", "clean"]))
    return b, n, keep, cls, seed, mode


@SETTINGS
@given(case=vz_case())
def test_properties(case):
    b, n, keep, cls, seed, mode = case
    x, attn, keys, cls_feature = inputs(seed, b, n, cls=cls)
    red = visionzip(x, cls_attn=attn, keys=keys, cls_feature=cls_feature, keep=keep, mode=mode)
    c = round(keep * 10 / 64)
    d = keep - c
    if cls and d == 0:
        return  # no room for the [CLS] token in the dominant share; not a published setting
    expected = keep
    assert red.counts == [expected] * b
    assert red.features.shape == (b, expected, x.shape[-1])
    assert red.assignment.shape == (b, n)
    for i in range(b):
        anchors = red.anchors[i].tolist()
        assignment = red.assignment[i].tolist()
        patch_anchors = [a for a in anchors if a != -1]
        assert len(set(patch_anchors)) == len(patch_anchors)
        assert all(0 <= a < n for a in patch_anchors)
        assert anchors.count(-1) == (1 if cls else 0)
        if cls:
            cls_slot = anchors.index(-1)
            assert cls_slot == 0  # [CLS] first in both modes
            torch.testing.assert_close(red.features[i, 0], cls_feature[i])
            assert cls_slot not in assignment
        if mode == "clean":
            assert patch_anchors == sorted(patch_anchors)
        for s, a in enumerate(anchors):
            if a >= 0:
                assert assignment[a] == s
        assert all(-1 <= s < expected for s in assignment)
        n_dom = d - 1 if cls else d
        # dominant tokens: the n_dom highest attention; they are kept unchanged and hold only themselves
        top = set(sorted(range(n), key=lambda k: (-float(attn[i, k]), k))[:n_dom])
        for s, a in enumerate(anchors):
            if a in top:
                assert torch.equal(red.features[i, s], x[i, a])
                assert [k for k in range(n) if assignment[k] == s] == [a]
        # contextual tokens: target + mean of the others assigned to it
        for s, a in enumerate(anchors):
            if a >= 0 and a not in top:
                members = [k for k in range(n) if assignment[k] == s and k != a]
                extra = sum((x[i, k].double() for k in members), torch.zeros(x.shape[-1], dtype=torch.float64))
                expect = x[i, a].double() + extra / max(1, len(members))
                torch.testing.assert_close(red.features[i, s].double(), expect, atol=ATOL, rtol=0)
        if c > 0:
            assert -1 not in assignment  # nothing dropped when there are contextual tokens


@SETTINGS
@given(n=st.integers(1, 60), b=st.integers(1, 3), seed=st.integers(0, 999))
def test_identity_when_budget_is_n(n, b, seed):
    x, attn, keys, _ = inputs(seed, b, n)
    clean = visionzip(x, cls_attn=attn, keys=keys, keep=n, mode="clean")
    assert torch.equal(clean.features, x)
    assert clean.anchors.tolist() == [list(range(n))] * b
    assert clean.assignment.tolist() == [list(range(n))] * b
    faithful = visionzip(x, cls_attn=attn, keys=keys, keep=n, mode="faithful")
    for i in range(b):
        order = faithful.anchors[i].tolist()
        assert sorted(order) == list(range(n))
        assert torch.equal(faithful.features[i], x[i, order])


@SETTINGS
@given(case=vz_case())
def test_determinism(case):
    b, n, keep, cls, seed, mode = case
    x, attn, keys, cls_feature = inputs(seed, b, n, cls=cls)
    if cls and keep - round(keep * 10 / 64) == 0:
        return
    r1 = visionzip(x, cls_attn=attn, keys=keys, cls_feature=cls_feature, keep=keep, mode=mode)
    r2 = visionzip(x.clone(), cls_attn=attn.clone(), keys=keys.clone(),
                   cls_feature=None if cls_feature is None else cls_feature.clone(), keep=keep, mode=mode)
    for f in ("features", "anchors", "lengths", "assignment"):
        assert torch.equal(getattr(r1, f), getattr(r2, f))


@SETTINGS
@given(n=st.integers(2, 60), seed=st.integers(0, 999), shift=st.floats(0.5, 5.0), scale=st.floats(0.1, 10.0))
def test_only_the_order_of_cls_attn_matters(n, seed, shift, scale):
    x, attn, keys, _ = inputs(seed, 2, n)
    k = max(1, n // 3)
    r1 = visionzip(x, cls_attn=attn, keys=keys, keep=k)
    r2 = visionzip(x, cls_attn=attn * scale + shift, keys=keys, keep=k)
    assert torch.equal(r1.anchors, r2.anchors)
    assert torch.equal(r1.assignment, r2.assignment)


# --------------------------------------------------------------------------------------------------------
# Degenerate inputs and options
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["features", "cls_attn", "keys"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_raise(where, bad):
    x, attn, keys, _ = inputs(0, 2, 36)
    {"features": x, "cls_attn": attn, "keys": keys}[where].view(-1)[7] = bad
    with pytest.raises(ValueError):
        visionzip(x, cls_attn=attn, keys=keys, keep=8)


def test_missing_signals_raise():
    x, attn, keys, _ = inputs(0, 1, 36)
    with pytest.raises(ValueError):
        visionzip(x, keys=keys, keep=8)
    with pytest.raises(ValueError):
        visionzip(x, cls_attn=attn, keep=8)


def test_signal_shape_mismatch_raises():
    x, attn, keys, _ = inputs(0, 2, 36)
    with pytest.raises(ValueError):
        visionzip(x, cls_attn=attn[:, :-1], keys=keys, keep=8)
    with pytest.raises(ValueError):
        visionzip(x, cls_attn=attn, keys=keys[:, :-1], keep=8)
    with pytest.raises(ValueError):
        visionzip(x, cls_attn=attn, keys=keys, cls_feature=torch.zeros(2, 5), keep=8)


def test_empty_batch():
    x = torch.zeros(0, 36, 4)
    red = visionzip(x, cls_attn=torch.zeros(0, 36), keys=torch.zeros(0, 36, 3), keep=8)
    assert len(red) == 0
    assert red.features.shape[0] == 0 and red.features.shape[-1] == 4
    assert red.lengths.shape == (0,) and red.anchors.shape[0] == 0
    assert red.assignment.shape == (0, 36)


@pytest.mark.parametrize("cls", [False, True])
def test_keep_larger_than_n_is_clamped(cls):
    x, attn, keys, cls_feature = inputs(1, 2, 30, cls=cls)
    red = visionzip(x, cls_attn=attn, keys=keys, cls_feature=cls_feature, keep=500)
    assert red.counts == [30, 30]


def test_all_equal_inputs_do_not_crash():
    x = torch.full((2, 49, 4), 0.5)
    red = visionzip(x, cls_attn=torch.full((2, 49), 0.1), keys=torch.ones(2, 49, 3), keep=16)
    assert red.counts == [16, 16]
    anchors = red.anchors[0].tolist()
    assert len(set(anchors)) == 16


@pytest.mark.parametrize(
    "opts,word",
    [
        ({"keep": 0}, "keep"),
        ({"ratio": 1.5}, "ratio"),
        ({"ratio": 0.0}, "ratio"),
        ({"dominant": -1}, "dominant"),
        ({"contextual": -2}, "contextual"),
        ({"mode": "fast"}, "mode"),
    ],
)
def test_bad_options_raise_naming_the_option(opts, word):
    x, attn, keys, _ = inputs(0, 1, 36)
    with pytest.raises(ValueError, match=word):
        visionzip(x, cls_attn=attn, keys=keys, **opts)


def test_budget_and_counts_together_raise():
    with pytest.raises(ValueError):
        VisionZipConfig(keep=10, dominant=5)
