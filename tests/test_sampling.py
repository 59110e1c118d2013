"""Tests of the signal-free baselines (``slimvlm.methods.sampling``): identity, random, sequential, spatial
and pool, against literal transcriptions of the rules in the module docstrings (PruMerge paper ablation:
"sequential" = first K tokens, "spatial" = uniform grid, cell centres ``floor((i + 1/2) · h / gh)``;
pooling = ``adaptive_avg_pool2d`` windows ``[floor(i·H/gh), ceil((i+1)·H/gh))``).

The oracles loop over windows / cells with Python integer arithmetic and never call the code under test.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimvlm.methods import Reduction, identity, pool, random_sample, sequential, spatial

SETTINGS = settings(
    max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
ATOL = 1e-5
SELECTORS = {"random": random_sample, "sequential": sequential, "spatial": spatial, "pool": pool}
ALL = {"none": identity, **SELECTORS}


def randn(seed: int, *shape: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


# --------------------------------------------------------------------------------------------------------
# Literal oracles
# --------------------------------------------------------------------------------------------------------


def ref_centres(size: int, cells: int) -> list[int]:
    """floor((i + 1/2) · size / cells), exactly."""
    return [math.floor((Fraction(i) + Fraction(1, 2)) * size / cells) for i in range(cells)]


def ref_spatial_indices(h: int, w: int, gh: int, gw: int) -> list[int]:
    out = []
    for r in ref_centres(h, gh):
        for c in ref_centres(w, gw):
            out.append(r * w + c)
    return out


def ref_window(i: int, size: int, cells: int) -> range:
    """adaptive_avg_pool2d window i: [floor(i·size/cells), ceil((i+1)·size/cells))."""
    return range(math.floor(Fraction(i * size, cells)), math.ceil(Fraction((i + 1) * size, cells)))


def ref_pool_item(x: torch.Tensor, h: int, w: int, gh: int, gw: int) -> tuple[torch.Tensor, list[int]]:
    """x (N, C). Returns (pooled (gh·gw, C) float64, assignment: first window containing each token)."""
    out = []
    for i in range(gh):
        for j in range(gw):
            acc = torch.zeros(x.shape[-1], dtype=torch.float64)
            count = 0
            for r in ref_window(i, h, gh):
                for c in ref_window(j, w, gw):
                    acc = acc + x[r * w + c].double()
                    count += 1
            out.append(acc / count)
    assignment = []
    for r in range(h):
        for c in range(w):
            wi = next(i for i in range(gh) if r in ref_window(i, h, gh))
            wj = next(j for j in range(gw) if c in ref_window(j, w, gw))
            assignment.append(wi * gw + wj)
    return torch.stack(out), assignment


def ref_budget_grids(h: int, w: int, budget: int) -> tuple[int, list[tuple[int, int]]]:
    """All gh × gw grids (gh ≤ h, gw ≤ w) with the largest cell count ≤ budget, and among them those closest
    to the h × w aspect ratio (|log((gh/gw) / (h/w))| minimal)."""
    best_count, cands = 0, []
    for gh in range(1, h + 1):
        for gw in range(1, w + 1):
            if gh * gw <= budget:
                if gh * gw > best_count:
                    best_count, cands = gh * gw, [(gh, gw)]
                elif gh * gw == best_count:
                    cands.append((gh, gw))
    errs = {g: abs(math.log((g[0] / g[1]) / (h / w))) for g in cands}
    best_err = min(errs.values())
    return best_count, [g for g in cands if errs[g] <= best_err + 1e-12]


def check_selection(red: Reduction, x: torch.Tensor, idx_per_item: list[list[int]]) -> None:
    b, n, _ = x.shape
    assert len(red) == b
    for i in range(b):
        idx = idx_per_item[i]
        k = len(idx)
        assert int(red.lengths[i]) == k
        assert red.anchors[i, :k].tolist() == idx
        assert torch.equal(red.features[i, :k], x[i, idx])
        expected_assignment = [-1] * n
        for s, a in enumerate(idx):
            expected_assignment[a] = s
        assert red.assignment[i].tolist() == expected_assignment


# --------------------------------------------------------------------------------------------------------
# identity / sequential
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize("n", [1, 7, 576])
def test_identity_keeps_everything_bit_identical(b, n):
    x = randn(n, b, n, 5)
    red = identity(x)
    assert red.method == "none"
    assert torch.equal(red.features, x)
    check_selection(red, x, [list(range(n))] * b)


@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize("n,opts,k", [(576, {}, 144), (100, {"keep": 7}, 7), (100, {"ratio": 0.5}, 50), (9, {"keep": 9}, 9), (3, {}, 1)])
def test_sequential_first_k(b, n, opts, k):
    x = randn(n + k, b, n, 4)
    red = sequential(x, **opts)
    assert red.method == "sequential"
    check_selection(red, x, [list(range(k))] * b)


# --------------------------------------------------------------------------------------------------------
# random
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize("n,opts,k", [(576, {}, 144), (100, {"keep": 10}, 10), (50, {"ratio": 0.5, "seed": 3}, 25)])
def test_random_k_distinct_sorted(b, n, opts, k):
    x = randn(1, b, n, 4)
    red = random_sample(x, **opts)
    assert red.method == "random"
    idx = []
    for i in range(b):
        a = red.anchors[i].tolist()
        assert len(a) == k and len(set(a)) == k
        assert a == sorted(a)
        assert all(0 <= v < n for v in a)
        idx.append(a)
    check_selection(red, x, idx)


def test_random_seeded():
    x = randn(2, 3, 200, 4)
    a = random_sample(x, keep=20, seed=7)
    b = random_sample(x, keep=20, seed=7)
    assert torch.equal(a.anchors, b.anchors) and torch.equal(a.features, b.features)
    assert torch.equal(a.assignment, b.assignment)
    others = [random_sample(x, keep=20, seed=s).anchors for s in (0, 1, 8, 123)]
    assert all(not torch.equal(a.anchors, o) for o in others)
    # the default seed is fixed too
    assert torch.equal(random_sample(x, keep=20).anchors, random_sample(x, keep=20).anchors)


def test_random_is_uniform_over_tokens():
    # Over many seeds every token is kept with frequency K / N (binomial; 6 sigma band).
    n, k, trials = 16, 4, 1500
    x = randn(0, 1, n, 2)
    counts = [0] * n
    for seed in range(trials):
        for a in random_sample(x, keep=k, seed=seed).anchors[0].tolist():
            counts[a] += 1
    p = k / n
    sigma = math.sqrt(trials * p * (1 - p))
    for c in counts:
        assert abs(c - trials * p) < 6 * sigma, counts


# --------------------------------------------------------------------------------------------------------
# spatial
# --------------------------------------------------------------------------------------------------------


def test_spatial_documented_grids_on_24x24():
    # 6x6: rows/cols floor((i + 1/2) * 4) = 2, 6, 10, 14, 18, 22
    assert ref_centres(24, 6) == [2, 6, 10, 14, 18, 22]
    # 5x8: rows floor((i + 1/2) * 4.8) = 2, 7, 12, 16, 21; cols floor((j + 1/2) * 3) = 1, 4, ..., 22
    assert ref_centres(24, 5) == [2, 7, 12, 16, 21]
    assert ref_centres(24, 8) == [1, 4, 7, 10, 13, 16, 19, 22]
    x = randn(0, 4, 576, 3)
    for gh, gw in [(6, 6), (5, 8), (8, 5), (24, 24), (1, 1), (3, 7)]:
        red = spatial(x, sample_grid=(gh, gw))
        assert red.method == "spatial"
        assert red.counts == [gh * gw] * 4
        check_selection(red, x, [ref_spatial_indices(24, 24, gh, gw)] * 4)


@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize("h,w,gh,gw", [(4, 6, 2, 3), (5, 8, 3, 3), (7, 3, 7, 1), (27, 27, 6, 6), (1, 9, 1, 4)])
def test_spatial_non_square_layout(b, h, w, gh, gw):
    x = randn(h * w, b, h * w, 3)
    red = spatial(x, grid=(h, w), sample_grid=(gh, gw))
    check_selection(red, x, [ref_spatial_indices(h, w, gh, gw)] * b)


@pytest.mark.parametrize(
    "h,w,opts,grid",
    [(24, 24, {"keep": 36}, (6, 6)), (24, 24, {}, (12, 12)), (16, 16, {"ratio": 0.25}, (8, 8)), (4, 6, {"keep": 6}, (2, 3))],
)
def test_spatial_budget_grid_examples(h, w, opts, grid):
    x = randn(1, 2, h * w, 3)
    red = spatial(x, grid=(h, w), **opts)
    check_selection(red, x, [ref_spatial_indices(h, w, *grid)] * 2)


def _grid_of(anchors: list[int], w: int) -> tuple[int, int]:
    return len(set(a // w for a in anchors)), len(set(a % w for a in anchors))


@SETTINGS
@given(h=st.integers(1, 20), w=st.integers(1, 20), data=st.data())
def test_spatial_budget_picks_fullest_grid_closest_to_aspect(h, w, data):
    n = h * w
    keep = data.draw(st.integers(1, n + 5))
    x = randn(n, 1, n, 2)
    red = spatial(x, grid=(h, w), keep=keep)
    anchors = red.anchors[0].tolist()
    best_count, best_grids = ref_budget_grids(h, w, min(keep, n))
    assert red.counts == [best_count]
    assert len(set(anchors)) == len(anchors)
    gh, gw = _grid_of(anchors, w)
    assert (gh, gw) in best_grids
    check_selection(red, x, [ref_spatial_indices(h, w, gh, gw)])


# --------------------------------------------------------------------------------------------------------
# pool
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize(
    "h,w,gh,gw",
    [(24, 24, 6, 6), (24, 24, 5, 8), (4, 6, 2, 3), (4, 6, 3, 4), (7, 7, 6, 6), (5, 9, 2, 4), (3, 3, 3, 3), (6, 4, 1, 1)],
)
def test_pool_windows_match_oracle(b, h, w, gh, gw):
    x = randn(h * 100 + w, b, h * w, 5)
    red = pool(x, grid=(h, w), sample_grid=(gh, gw))
    assert red.method == "pool"
    assert red.counts == [gh * gw] * b
    for i in range(b):
        feats, assignment = ref_pool_item(x[i], h, w, gh, gw)
        torch.testing.assert_close(red.features[i].double(), feats, atol=ATOL, rtol=0)
        assert red.assignment[i].tolist() == assignment
        anchors = red.anchors[i].tolist()
        assert len(set(anchors)) == len(anchors)
        # each anchor is a centre token of its own window
        for s, a in enumerate(anchors):
            ci, cj = divmod(s, gw)
            rows, cols = ref_window(ci, h, gh), ref_window(cj, w, gw)
            r, c = divmod(a, w)
            assert r in rows and c in cols
            assert abs(r - (rows[0] + rows[-1]) / 2) <= 0.5
            assert abs(c - (cols[0] + cols[-1]) / 2) <= 0.5


def test_pool_default_budget_uses_the_same_grid_as_spatial():
    x = randn(3, 2, 576, 4)
    red = pool(x)  # 25 % of 576 = 144 -> 12x12
    feats, _ = ref_pool_item(x[0], 24, 24, 12, 12)
    torch.testing.assert_close(red.features[0].double(), feats, atol=ATOL, rtol=0)
    red = pool(x, grid=(24, 24), keep=40)
    assert red.counts == spatial(x, grid=(24, 24), keep=40).counts


@SETTINGS
@given(h=st.integers(1, 12), w=st.integers(1, 12), data=st.data())
def test_pool_properties(h, w, data):
    gh = data.draw(st.integers(1, h))
    gw = data.draw(st.integers(1, w))
    b = data.draw(st.integers(1, 3))
    x = randn(h * w + gh, b, h * w, 3)
    red = pool(x, grid=(h, w), sample_grid=(gh, gw))
    assert red.counts == [gh * gw] * b
    for i in range(b):
        feats, assignment = ref_pool_item(x[i], h, w, gh, gw)
        torch.testing.assert_close(red.features[i].double(), feats, atol=ATOL, rtol=0)
        assert red.assignment[i].tolist() == assignment
        if h % gh == 0 and w % gw == 0:  # disjoint windows: every anchor is assigned to its own slot
            anchors = red.anchors[i].tolist()
            for s, a in enumerate(anchors):
                assert assignment[a] == s


@SETTINGS
@given(h=st.integers(1, 12), w=st.integers(1, 12), b=st.integers(1, 3))
def test_pool_and_spatial_identity_at_full_grid(h, w, b):
    x = randn(h + w, b, h * w, 3)
    for fn in (pool, spatial):
        red = fn(x, grid=(h, w), sample_grid=(h, w))
        assert torch.equal(red.features, x)
        assert red.anchors.tolist() == [list(range(h * w))] * b
        assert red.assignment.tolist() == [list(range(h * w))] * b


# --------------------------------------------------------------------------------------------------------
# Shared properties
# --------------------------------------------------------------------------------------------------------


@SETTINGS
@given(
    name=st.sampled_from(["random", "sequential", "spatial", "pool"]),
    side=st.integers(1, 12),
    b=st.integers(1, 3),
    seed=st.integers(0, 999),
    data=st.data(),
)
def test_counts_anchors_assignment(name, side, b, seed, data):
    n = side * side
    keep = data.draw(st.integers(1, n + 4))
    x = randn(seed, b, n, 3)
    red = SELECTORS[name](x, keep=keep)
    k = min(keep, n)
    if name in ("random", "sequential"):
        assert red.counts == [k] * b  # fixed budget methods keep exactly the budget
    else:
        assert all(1 <= c <= k for c in red.counts)
    assert red.assignment.shape == (b, n)
    m = red.features.shape[1]
    for i in range(b):
        anchors = red.anchors[i, : red.counts[i]].tolist()
        assert len(set(anchors)) == len(anchors)
        assert all(0 <= a < n for a in anchors)
        assignment = red.assignment[i].tolist()
        assert all(-1 <= s < m for s in assignment)
        if name != "pool":  # selections: kept tokens unchanged, everything else dropped
            assert anchors == sorted(anchors)  # raster order
            for s, a in enumerate(anchors):
                assert assignment[a] == s
                assert torch.equal(red.features[i, s], x[i, a])
            assert sum(1 for s in assignment if s >= 0) == len(anchors)


@SETTINGS
@given(name=st.sampled_from(sorted(ALL)), side=st.integers(1, 10), b=st.integers(1, 3), seed=st.integers(0, 99))
def test_determinism(name, side, b, seed):
    x = randn(seed, b, side * side, 3)
    r1, r2 = ALL[name](x), ALL[name](x.clone())
    for f in ("features", "anchors", "lengths", "assignment"):
        assert torch.equal(getattr(r1, f), getattr(r2, f))


@pytest.mark.parametrize("name", ["random", "sequential"])
def test_keep_equal_n_is_identity(name):
    x = randn(0, 3, 37, 4)
    red = SELECTORS[name](x, keep=37)
    assert torch.equal(red.features, x)
    check_selection(red, x, [list(range(37))] * 3)


# --------------------------------------------------------------------------------------------------------
# Degenerate inputs and options
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_features_raise(name, bad):
    x = randn(0, 2, 36, 3)
    x[1, 5, 1] = bad
    with pytest.raises(ValueError):
        ALL[name](x)


@pytest.mark.parametrize("name", sorted(ALL))
def test_empty_batch(name):
    x = torch.zeros(0, 36, 4)
    red = ALL[name](x)
    assert len(red) == 0
    assert red.features.shape[0] == 0 and red.features.shape[-1] == 4
    assert red.lengths.shape == (0,) and red.anchors.shape[0] == 0
    assert red.assignment.shape == (0, 36)


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_keep_larger_than_n_is_clamped(name):
    x = randn(0, 2, 36, 3)
    red = SELECTORS[name](x, keep=1000)
    assert red.counts == [36, 36]
    assert torch.equal(red.features, x)


@pytest.mark.parametrize("name", sorted(SELECTORS))
@pytest.mark.parametrize(
    "opts,word", [({"keep": 0}, "keep"), ({"keep": -1}, "keep"), ({"ratio": 1.5}, "ratio"), ({"ratio": 0.0}, "ratio")]
)
def test_bad_options_raise_naming_the_option(name, opts, word):
    with pytest.raises(ValueError, match=word):
        SELECTORS[name](randn(0, 1, 36, 3), **opts)


@pytest.mark.parametrize("name", ["spatial", "pool"])
def test_grid_errors(name):
    fn = SELECTORS[name]
    with pytest.raises(ValueError):
        fn(randn(0, 1, 35, 3))  # not a square, no grid given
    with pytest.raises(ValueError):
        fn(randn(0, 1, 36, 3), grid=(5, 8))  # grid does not match N
    with pytest.raises(ValueError):
        fn(randn(0, 1, 36, 3), sample_grid=(7, 2))  # larger than the 6x6 layout
    with pytest.raises(ValueError, match="sample_grid"):
        fn(randn(0, 1, 36, 3), sample_grid=(0, 2))
    with pytest.raises(ValueError):
        fn(randn(0, 1, 36, 3), sample_grid=(2, 2), keep=4)
