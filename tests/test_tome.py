"""Tests of ToMe / AIM merging (``slimvlm.methods.tome``) against a literal, slow transcription of the
published rule (algorithms.md §2.2 "Token merging before the LLM" and §3 "Notes on the core rules: ToMe";
module docstring of ``tome.py``).

The oracle below is written from the rule text only, with Python loops over tokens and single-vector torch
ops in float64. It never calls the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimvlm.methods import Reduction, aim_merge, halving_schedule, tome
from slimvlm.methods.tome import bipartite_soft_matching

SETTINGS = settings(
    max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
ATOL = 1e-5
FNS = {"tome": tome, "aim": aim_merge}


def randn(seed: int, *shape: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


# --------------------------------------------------------------------------------------------------------
# Literal oracle (§2.2 steps 1-5; ToMe merge_wavg; AIM plain mean with include_self)
# --------------------------------------------------------------------------------------------------------


def ref_schedule(n: int, target: int) -> list[int]:
    """AIM's halving schedule: remove min(t // 2, t - target) tokens per step until target remain."""
    target = max(1, min(n, target))
    out, t = [], n
    while t > target:
        r = min(t // 2, t - target)
        out.append(r)
        t -= r
    return out


def unit(v: torch.Tensor) -> torch.Tensor:
    """Normalise one vector (F.normalize convention: divide by max(norm, 1e-12))."""
    norm = math.sqrt(sum(float(e) * float(e) for e in v))
    return v / max(norm, 1e-12)


def ref_match(metric_tokens: list[torch.Tensor], r: int) -> tuple[list[int], list[int], list[int]]:
    """One bipartite soft matching step on a list of metric vectors.

    A = even positions, B = odd positions. Each A token's best B partner by cosine (first B on ties);
    A tokens sorted by best score descending, ties by lower A position; top r are sources.
    Returns (unmerged A numbers in that order, source A numbers best first, B partner of each source).
    """
    t = len(metric_tokens)
    a_pos = list(range(0, t, 2))
    b_pos = list(range(1, t, 2))
    b_units = [unit(metric_tokens[q]) for q in b_pos]
    best_score: list[float] = []
    best_b: list[int] = []
    for p in a_pos:
        ua = unit(metric_tokens[p])
        score, partner = None, None
        for j, ub in enumerate(b_units):
            s = float(torch.dot(ua, ub))
            if score is None or s > score:
                score, partner = s, j
        best_score.append(score)
        best_b.append(partner)
    order = sorted(range(len(a_pos)), key=lambda i: (-best_score[i], i))
    src = order[:r]
    unm = order[r:]
    dst = [best_b[i] for i in src]
    return unm, src, dst


def ref_merge_item(
    x: torch.Tensor, metric: torch.Tensor | None, schedule: list[int], weighted: bool, mode: str
) -> tuple[torch.Tensor, list[int], list[int]]:
    """Iterated merge of one item: returns (features (M, C) float64, anchors, assignment)."""
    n = x.shape[0]
    xs = [x[i].double() for i in range(n)]
    ms = None if metric is None else [metric[i].double() for i in range(n)]
    sizes = [1.0] * n
    anchors = list(range(n))
    slot_of = list(range(n))  # input token -> current slot
    for r in schedule:
        t = len(xs)
        r = min(int(r), t // 2)
        if r <= 0:
            break
        unm, src, dst = ref_match(ms if ms is not None else xs, r)
        a_pos = list(range(0, t, 2))
        b_pos = list(range(1, t, 2))
        incoming: dict[int, list[int]] = {j: [] for j in range(len(b_pos))}
        for i, j in zip(src, dst):
            incoming[j].append(a_pos[i])

        def combine(vals: list[torch.Tensor]) -> list[torch.Tensor]:
            new = [vals[a_pos[p]] for p in unm]
            for j, q in enumerate(b_pos):
                group = [q] + incoming[j]
                if weighted:  # ToMe merge_wavg: sum(size * x) / sum(size)
                    total = sum(sizes[g] for g in group)
                    acc = torch.zeros_like(vals[q])
                    for g in group:
                        acc = acc + sizes[g] * vals[g]
                    new.append(acc / total)
                else:  # AIM: scatter_reduce mean include_self -> plain mean of dst and its sources
                    acc = torch.zeros_like(vals[q])
                    for g in group:
                        acc = acc + vals[g]
                    new.append(acc / len(group))
            return new

        new_xs = combine(xs)
        new_ms = combine(ms) if ms is not None else None
        new_sizes = [sizes[a_pos[p]] for p in unm] + [
            sum(sizes[g] for g in [q] + incoming[j]) for j, q in enumerate(b_pos)
        ]
        mapping = {}
        for k, p in enumerate(unm):
            mapping[a_pos[p]] = k
        for j, q in enumerate(b_pos):
            mapping[q] = len(unm) + j
        for i, j in zip(src, dst):
            mapping[a_pos[i]] = len(unm) + j
        slot_of = [mapping[s] for s in slot_of]
        anchors = [anchors[a_pos[p]] for p in unm] + [anchors[q] for q in b_pos]
        xs, ms, sizes = new_xs, new_ms, new_sizes
    if mode == "clean":
        perm = sorted(range(len(anchors)), key=lambda k: anchors[k])
        inverse = {old: new for new, old in enumerate(perm)}
        xs = [xs[k] for k in perm]
        anchors = [anchors[k] for k in perm]
        slot_of = [inverse[s] for s in slot_of]
    return torch.stack(xs), anchors, slot_of


def check_against_oracle(red: Reduction, x, metric, schedule, weighted, mode) -> None:
    b = x.shape[0]
    assert len(red) == b
    for i in range(b):
        feats, anchors, assignment = ref_merge_item(
            x[i], None if metric is None else metric[i], schedule, weighted, mode
        )
        m = feats.shape[0]
        assert int(red.lengths[i]) == m
        assert red.features.shape[1] == m
        assert red.anchors[i].tolist() == anchors, f"item {i}: anchors differ"
        assert red.assignment[i].tolist() == assignment, f"item {i}: assignment differs"
        torch.testing.assert_close(red.features[i].double(), feats, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------------------
# Halving schedule
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,target,expected",
    [
        (196, 49, [98, 49]),  # LLaVA-OV per frame, 25 %
        (576, 252, [288, 36]),  # LLaVA-1.5 code default
        (576, 72, [288, 144, 72]),  # paper default, 12.5 %
        (196, 98, [98]),
        (10, 10, []),
        (7, 1, [3, 2, 1]),
    ],
)
def test_halving_schedule_documented(n, target, expected):
    assert halving_schedule(n, target) == expected
    assert ref_schedule(n, target) == expected  # the oracle agrees with the doc examples too


@SETTINGS
@given(n=st.integers(1, 3000), target=st.integers(1, 3100))
def test_halving_schedule_matches_rule(n, target):
    got = halving_schedule(n, target)
    assert got == ref_schedule(n, target)
    assert n - sum(got) == min(n, target)
    t = n
    for r in got:
        assert 1 <= r <= t // 2
        t -= r


# --------------------------------------------------------------------------------------------------------
# bipartite_soft_matching vs literal matching
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize("t,r", [(16, 8), (16, 3), (17, 5), (17, 8), (31, 1), (9, 0), (2, 1), (3, 1)])
def test_bipartite_soft_matching_matches_oracle(b, t, r):
    metric = randn(100 + t + r, b, t, 6)
    unm, src, dst = bipartite_soft_matching(metric, r)
    assert unm.shape == (b, (t + 1) // 2 - r)
    assert src.shape == (b, r) and dst.shape == (b, r)
    for i in range(b):
        e_unm, e_src, e_dst = ref_match([metric[i, k] for k in range(t)], r)
        assert unm[i].tolist() == e_unm
        assert src[i].tolist() == e_src
        assert dst[i].tolist() == e_dst


def _tie_metric() -> torch.Tensor:
    """Exactly representable scores: A = [2e1+e2, e3, 2e1+e2, e4], B = [e1, e2, e3, e4].

    Best scores: A0 -> B0 (2/sqrt 5), A1 -> B2 (1), A2 -> B0 (2/sqrt 5), A3 -> B3 (1).
    Descending with ties by lower A position: [1, 3, 0, 2].
    """
    e = torch.eye(4)
    a = [2 * e[0] + e[1], e[2], 2 * e[0] + e[1], e[3]]
    bb = [e[0], e[1], e[2], e[3]]
    toks = []
    for i in range(4):
        toks += [a[i], bb[i]]
    return torch.stack(toks)[None]  # (1, 8, 4)


def test_bipartite_ties_broken_by_lower_a_position():
    metric = _tie_metric()
    unm, src, dst = bipartite_soft_matching(metric, 3)
    assert src[0].tolist() == [1, 3, 0]
    assert dst[0].tolist() == [2, 3, 0]
    assert unm[0].tolist() == [2]
    assert ref_match(list(metric[0]), 3) == ([2], [1, 3, 0], [2, 3, 0])


@pytest.mark.parametrize("name", ["tome", "aim"])
@pytest.mark.parametrize("mode", ["faithful", "clean"])
def test_tie_metric_full_merge_matches_oracle(name, mode):
    metric = _tie_metric().expand(2, -1, -1).contiguous()
    x = randn(7, 2, 8, 5)
    red = FNS[name](x, metric=metric, schedule=(3,), mode=mode)
    check_against_oracle(red, x, metric, [3], name == "tome", mode)


# --------------------------------------------------------------------------------------------------------
# Hand-computed example where ToMe (sizes tracked) and AIM (plain mean) differ
# --------------------------------------------------------------------------------------------------------


def test_hand_computed_tome_vs_aim():
    # N = 3: A = {0, 2}, B = {1}. keep=1 -> schedule [1, 1].
    # Step 1: metric of 0 equals that of 1 (score 1), token 2 is orthogonal (score 0) -> 0 merges into 1.
    #   faithful output [x2, merge(x0, x1)], anchors [2, 1].
    # Step 2: A = {x2}, B = {merge(x0,x1)} -> single token, anchor 1.
    x = torch.tensor([[[4.0, 0.0], [0.0, 8.0], [2.0, 2.0]]])
    metric = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    t = tome(x, metric=metric, keep=1, mode="faithful")
    a = aim_merge(x, metric=metric, keep=1, mode="faithful")
    # ToMe: size-weighted -> mean of all three inputs.
    torch.testing.assert_close(t.features, torch.tensor([[[2.0, 10.0 / 3.0]]]), atol=ATOL, rtol=0)
    # AIM: (x2 + (x0 + x1) / 2) / 2 = ([2, 2] + [2, 4]) / 2.
    torch.testing.assert_close(a.features, torch.tensor([[[2.0, 3.0]]]), atol=ATOL, rtol=0)
    for red in (t, a):
        assert red.anchors.tolist() == [[1]]
        assert red.assignment.tolist() == [[0, 0, 0]]
        assert red.counts == [1]
    # after step 1 only
    t1 = tome(x, metric=metric, schedule=(1,), mode="faithful")
    assert t1.anchors.tolist() == [[2, 1]]
    assert t1.assignment.tolist() == [[1, 1, 0]]
    torch.testing.assert_close(t1.features, torch.tensor([[[2.0, 2.0], [2.0, 4.0]]]), atol=ATOL, rtol=0)
    t1c = tome(x, metric=metric, schedule=(1,), mode="clean")
    assert t1c.anchors.tolist() == [[1, 2]]
    assert t1c.assignment.tolist() == [[0, 0, 1]]
    torch.testing.assert_close(t1c.features, torch.tensor([[[2.0, 4.0], [2.0, 2.0]]]), atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------------------
# Full merge vs oracle
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tome", "aim"])
@pytest.mark.parametrize("mode", ["faithful", "clean"])
@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize("n,keep", [(16, 4), (17, 5), (31, 9), (64, 20), (33, 16), (9, 1), (2, 1)])
def test_merge_default_metric_matches_oracle(name, mode, b, n, keep):
    x = randn(1000 * n + keep, b, n, 8)
    red = FNS[name](x, keep=keep, mode=mode)
    assert red.method == ("tome" if name == "tome" else "aim-merge")
    check_against_oracle(red, x, None, ref_schedule(n, keep), name == "tome", mode)


@pytest.mark.parametrize("name", ["tome", "aim"])
@pytest.mark.parametrize("mode", ["faithful", "clean"])
@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize("n,keep", [(16, 4), (23, 6), (48, 13)])
def test_merge_separate_metric_matches_oracle(name, mode, b, n, keep):
    x = randn(7 * n + keep, b, n, 5)
    metric = randn(11 * n + keep, b, n, 7)
    red = FNS[name](x, metric=metric, keep=keep, mode=mode)
    check_against_oracle(red, x, metric, ref_schedule(n, keep), name == "tome", mode)


@pytest.mark.parametrize("name", ["tome", "aim"])
@pytest.mark.parametrize("mode", ["faithful", "clean"])
@pytest.mark.parametrize("schedule", [(5, 100, 3), (1, 1, 1, 1), (8,), (2, 0, 4)])
def test_explicit_schedule_matches_oracle(name, mode, schedule):
    # (5, 100, 3): r = 100 is capped to t // 2; (2, 0, 4): r <= 0 stops the loop (§2.2 step 5).
    x = randn(3, 4, 33, 6)
    red = FNS[name](x, schedule=schedule, mode=mode)
    check_against_oracle(red, x, None, list(schedule), name == "tome", mode)


@pytest.mark.parametrize("name", ["tome", "aim"])
@pytest.mark.parametrize("b", [1, 4])
def test_ratio_default_quarter_matches_oracle(name, b):
    # default ratio 0.25: 64 -> 32 -> 16
    x = randn(5, b, 64, 4)
    red = FNS[name](x, mode="faithful")
    assert red.counts == [16] * b
    check_against_oracle(red, x, None, [32, 16], name == "tome", "faithful")


def test_aim_llava_ov_frame_196_to_49_matches_oracle():
    x = randn(21, 1, 196, 6)
    red = aim_merge(x, mode="faithful")  # default 25 % -> 196 -> 98 -> 49
    assert red.counts == [49]
    check_against_oracle(red, x, None, [98, 49], False, "faithful")


@pytest.mark.parametrize(
    "kwargs,count",
    [({"keep": 252}, 252), ({"ratio": 0.125}, 72), ({}, 144), ({"schedule": (288, 36)}, 252)],
)
@pytest.mark.parametrize("name", ["tome", "aim"])
def test_llava15_576_budgets(name, kwargs, count):
    x = randn(2, 2, 576, 4)
    red = FNS[name](x, **kwargs)
    assert red.counts == [count, count]
    assert red.features.shape == (2, count, 4)


def test_frames_are_independent_batch_items():
    # per-frame merging: item b of a batch gives the same result as item b alone.
    x = randn(9, 5, 40, 6)
    for fn in (tome, aim_merge):
        full = fn(x, keep=10, mode="faithful")
        for i in range(5):
            single = fn(x[i : i + 1], keep=10, mode="faithful")
            torch.testing.assert_close(full.features[i], single.features[0], atol=ATOL, rtol=0)
            assert torch.equal(full.anchors[i], single.anchors[0])
            assert torch.equal(full.assignment[i], single.assignment[0])


# --------------------------------------------------------------------------------------------------------
# Properties (hypothesis)
# --------------------------------------------------------------------------------------------------------


@st.composite
def merge_case(draw):
    b = draw(st.integers(1, 3))
    n = draw(st.integers(1, 40))
    c = draw(st.integers(1, 6))
    keep = draw(st.integers(1, n + 3))
    seed = draw(st.integers(0, 10_000))
    mode = draw(st.sampled_from(["faithful", "clean"]))
    return b, n, c, keep, seed, mode


def _check_structure(red: Reduction, b: int, n: int, expected: int) -> None:
    assert red.features.shape[:2] == (b, expected)
    assert red.anchors.shape == (b, expected)
    assert red.assignment.shape == (b, n)
    assert red.counts == [expected] * b
    for i in range(b):
        anchors = red.anchors[i].tolist()
        assert len(set(anchors)) == len(anchors), "anchors must be distinct"
        assert all(0 <= a < n for a in anchors)
        assignment = red.assignment[i].tolist()
        assert all(0 <= s < expected for s in assignment), "every token is merged somewhere, never dropped"
        for s, a in enumerate(anchors):
            assert assignment[a] == s, "a kept token's assignment must point to its own slot"
        assert set(assignment) == set(range(expected)), "every output slot holds at least one input"


@SETTINGS
@given(case=merge_case())
def test_tome_properties(case):
    b, n, c, keep, seed, mode = case
    x = randn(seed, b, n, c)
    red = tome(x, keep=keep, mode=mode)
    m = min(keep, n)
    _check_structure(red, b, n, m)
    if mode == "clean":
        for i in range(b):
            assert red.anchors[i].tolist() == sorted(red.anchors[i].tolist())
    for i in range(b):
        total_out = torch.zeros(c, dtype=torch.float64)
        assignment = red.assignment[i].tolist()
        for s in range(m):
            members = [k for k in range(n) if assignment[k] == s]
            mean = sum(x[i, k].double() for k in members) / len(members)
            # size-weighted average with tracked sizes == mean of the original tokens merged into it
            torch.testing.assert_close(red.features[i, s].double(), mean, atol=ATOL, rtol=0)
            total_out += len(members) * red.features[i, s].double()
        # conservation: sum over outputs of size * x equals the sum of the inputs
        torch.testing.assert_close(total_out, x[i].double().sum(0), atol=1e-4, rtol=0)


@SETTINGS
@given(case=merge_case())
def test_aim_properties_convex_weights(case):
    b, n, c, keep, seed, mode = case
    metric = randn(seed + 1, b, n, 4)
    x = randn(seed, b, n, c)
    red = aim_merge(x, metric=metric, keep=keep, mode=mode)
    m = min(keep, n)
    _check_structure(red, b, n, m)
    # merge the identity with the same metric: rows are the (linear) weights of each output token
    eye = torch.eye(n).expand(b, n, n).contiguous()
    w = aim_merge(eye, metric=metric, keep=keep, mode=mode)
    assert torch.equal(w.anchors, red.anchors) and torch.equal(w.assignment, red.assignment)
    weights = w.features.double()
    assert (weights >= -1e-7).all(), "convex combination: weights are non-negative"
    torch.testing.assert_close(weights.sum(-1), torch.ones(b, m, dtype=torch.float64), atol=1e-6, rtol=0)
    for i in range(b):
        assignment = red.assignment[i].tolist()
        rows = weights[i].tolist()
        for s in range(m):
            support = {k for k in range(n) if rows[s][k] > 1e-9}
            members = {k for k in range(n) if assignment[k] == s}
            assert support == members
    torch.testing.assert_close(red.features.double(), weights @ x.double(), atol=ATOL, rtol=0)


@SETTINGS
@given(case=merge_case())
def test_aim_default_metric_single_step_is_plain_mean(case):
    b, n, c, _, seed, mode = case
    keep = max(1, (n + 1) // 2)  # one step removes at most t // 2, so this budget needs at most one step
    x = randn(seed, b, n, c)
    red = aim_merge(x, keep=keep, mode=mode)
    _check_structure(red, b, n, keep)
    for i in range(b):
        assignment = red.assignment[i].tolist()
        for s in range(keep):
            members = [k for k in range(n) if assignment[k] == s]
            mean = sum(x[i, k].double() for k in members) / len(members)
            torch.testing.assert_close(red.features[i, s].double(), mean, atol=ATOL, rtol=0)


@SETTINGS
@given(case=merge_case())
def test_aim_default_metric_inside_hull(case):
    b, n, c, keep, seed, mode = case
    x = randn(seed, b, n, c)
    red = aim_merge(x, keep=keep, mode=mode)
    m = min(keep, n)
    _check_structure(red, b, n, m)
    for i in range(b):
        assignment = red.assignment[i].tolist()
        for s in range(m):
            members = [k for k in range(n) if assignment[k] == s]
            grp = x[i, members]
            assert (red.features[i, s] >= grp.min(0).values - 1e-5).all()
            assert (red.features[i, s] <= grp.max(0).values + 1e-5).all()


@SETTINGS
@given(n=st.integers(1, 40), b=st.integers(1, 3), seed=st.integers(0, 999), name=st.sampled_from(["tome", "aim"]))
def test_identity_when_budget_is_n(n, b, seed, name):
    x = randn(seed, b, n, 5)
    for mode in ("faithful", "clean"):
        red = FNS[name](x, keep=n, mode=mode)
        assert torch.equal(red.features, x)
        assert red.anchors.tolist() == [list(range(n))] * b
        assert red.assignment.tolist() == [list(range(n))] * b
        assert red.counts == [n] * b


@SETTINGS
@given(case=merge_case(), name=st.sampled_from(["tome", "aim"]), with_metric=st.booleans())
def test_determinism(case, name, with_metric):
    b, n, c, keep, seed, mode = case
    x = randn(seed, b, n, c)
    metric = randn(seed + 5, b, n, 3) if with_metric else None
    r1 = FNS[name](x, metric=metric, keep=keep, mode=mode)
    r2 = FNS[name](x.clone(), metric=None if metric is None else metric.clone(), keep=keep, mode=mode)
    for f in ("features", "anchors", "lengths", "assignment"):
        assert torch.equal(getattr(r1, f), getattr(r2, f))


@SETTINGS
@given(case=merge_case(), name=st.sampled_from(["tome", "aim"]))
def test_clean_is_faithful_resorted_by_anchor(case, name):
    b, n, c, keep, seed, _ = case
    x = randn(seed, b, n, c)
    f = FNS[name](x, keep=keep, mode="faithful")
    cl = FNS[name](x, keep=keep, mode="clean")
    for i in range(b):
        order = sorted(range(f.anchors.shape[1]), key=lambda k: int(f.anchors[i, k]))
        assert cl.anchors[i].tolist() == [int(f.anchors[i, k]) for k in order]
        torch.testing.assert_close(cl.features[i], f.features[i, order], atol=ATOL, rtol=0)
        # the same input tokens share a slot in both modes
        ca, cs = cl.anchors[i].tolist(), cl.assignment[i].tolist()
        fa, fs = f.anchors[i].tolist(), f.assignment[i].tolist()
        assert [ca[cs[k]] for k in range(n)] == [fa[fs[k]] for k in range(n)]


# --------------------------------------------------------------------------------------------------------
# Degenerate inputs and options
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tome", "aim"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_features_raise(name, bad):
    x = randn(0, 2, 16, 4)
    x[1, 3, 2] = bad
    with pytest.raises(ValueError):
        FNS[name](x, keep=4)


@pytest.mark.parametrize("name", ["tome", "aim"])
def test_non_finite_metric_raises(name):
    x = randn(0, 2, 16, 4)
    metric = randn(1, 2, 16, 3)
    metric[0, 0, 0] = float("nan")
    with pytest.raises(ValueError):
        FNS[name](x, metric=metric, keep=4)


@pytest.mark.parametrize("name", ["tome", "aim"])
def test_metric_shape_mismatch_raises(name):
    x = randn(0, 2, 16, 4)
    with pytest.raises(ValueError):
        FNS[name](x, metric=randn(1, 2, 15, 3), keep=4)


@pytest.mark.parametrize("name", ["tome", "aim"])
def test_empty_batch(name):
    x = torch.zeros(0, 16, 4)
    red = FNS[name](x, keep=4)
    assert len(red) == 0
    assert red.features.shape[0] == 0 and red.features.shape[-1] == 4
    assert red.anchors.shape[0] == 0 and red.lengths.shape == (0,)
    assert red.assignment.shape == (0, 16)
    assert red.counts == []


@pytest.mark.parametrize("name", ["tome", "aim"])
@pytest.mark.parametrize("value", [0.0, 1.7])
@pytest.mark.parametrize("n,keep", [(16, 4), (17, 3), (576, 72)])
def test_all_equal_features(name, value, n, keep):
    x = torch.full((2, n, 6), value)
    for mode in ("faithful", "clean"):
        red = FNS[name](x, keep=keep, mode=mode)
        _check_structure(red, 2, n, keep)
        torch.testing.assert_close(red.features, torch.full((2, keep, 6), value), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["tome", "aim"])
def test_keep_larger_than_n_is_clamped(name):
    x = randn(4, 3, 10, 4)
    red = FNS[name](x, keep=25)
    assert red.counts == [10, 10, 10]
    assert torch.equal(red.features, x)


@pytest.mark.parametrize("name", ["tome", "aim"])
@pytest.mark.parametrize(
    "opts,word",
    [
        ({"keep": 0}, "keep"),
        ({"keep": -3}, "keep"),
        ({"ratio": 1.5}, "ratio"),
        ({"ratio": 0.0}, "ratio"),
        ({"ratio": -0.2}, "ratio"),
        ({"mode": "fast"}, "mode"),
        ({"schedule": (4, -1)}, "schedule"),
    ],
)
def test_bad_options_raise_naming_the_option(name, opts, word):
    x = randn(4, 1, 16, 4)
    with pytest.raises(ValueError, match=word):
        FNS[name](x, **opts)


@pytest.mark.parametrize("name", ["tome", "aim"])
def test_keep_and_ratio_together_raise(name):
    with pytest.raises(ValueError):
        FNS[name](randn(4, 1, 16, 4), keep=4, ratio=0.5)
