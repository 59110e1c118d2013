"""PruMerge / PruMerge+ against literal transcriptions of the official rules (tests/oracles.py)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import (
    official_outlier_ratio,
    prumerge_clean_literal,
    prumerge_faithful_literal,
)
from slimvlm.methods import PruMergeConfig, cls_attention_from_qk, prumerge, prumerge_plus

TOL = dict(atol=1e-5, rtol=1e-5)


def planted(b: int, n: int, c: int = 24, ck: int = 16, outliers=(3, 9), seed: int = 0):
    """Random features/keys and a softmax [CLS] attention with a few planted outliers per image."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, c, generator=g)
    keys = torch.randn(b, n, ck, generator=g)
    logits = torch.randn(b, n, generator=g) * 0.3
    for bi in range(b):
        m = int(torch.randint(outliers[0], outliers[1] + 1, (1,), generator=g))
        where = torch.randperm(n, generator=g)[:m]
        logits[bi, where] += 3.0 + torch.rand(m, generator=g) * 2
    return x, logits.softmax(-1), keys


def assert_matches(red, expected_outs, expected_centres, faithful: bool):
    assert red.counts == [len(o) for o in expected_outs]
    for bi, (out, centres) in enumerate(zip(expected_outs, expected_centres)):
        feats, anchors = red.item(bi)
        torch.testing.assert_close(feats, out, **TOL)
        assert anchors[: len(centres)].tolist() == list(centres)


@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize("plus", [False, True])
def test_faithful_adaptive_matches_official_loop(b, plus):
    x, a, k = planted(b, 144)
    fn = prumerge_plus if plus else prumerge
    red = fn(x, cls_attn=a, keys=k, mode="faithful")
    outs, centres = prumerge_faithful_literal(x, a, k, plus=plus)
    assert_matches(red, outs, centres, faithful=True)


@pytest.mark.parametrize("b", [1, 4])
def test_faithful_uses_one_pooled_count_for_the_batch(b):
    x, a, k = planted(b, 144, outliers=(2, 14), seed=3)
    red = prumerge(x, cls_attn=a, keys=k, mode="faithful")
    m = int(144 * official_outlier_ratio(a))
    assert red.counts == [m + 1] * b  # the same count for every image, plus the extra token


@pytest.mark.parametrize("b", [1, pytest.param(4, marks=pytest.mark.slow)])
def test_faithful_fixed_ratio_plus_keeps_duplicates_like_official(b):
    # N = 576, keep 144: 72 top + arange(4, 575, 8); outliers that are also grid points appear twice.
    x, a, k = planted(b, 576, c=8, ck=8, seed=5)
    red = prumerge_plus(x, cls_attn=a, keys=k, mode="faithful", keep=144)
    outs, centres = prumerge_faithful_literal(x, a, k, plus=True, keep=144)
    assert centres[0][72:] == list(range(4, 575, 8))
    assert red.counts == [145] * b
    assert_matches(red, outs, centres, faithful=True)


def test_faithful_fixed_ratio_prumerge():
    x, a, k = planted(2, 576, c=8, ck=8, seed=6)
    red = prumerge(x, cls_attn=a, keys=k, mode="faithful", ratio=1 / 8)
    outs, centres = prumerge_faithful_literal(x, a, k, ratio=1 / 8)
    assert red.counts == [73, 73]
    assert_matches(red, outs, centres, faithful=True)


@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize("plus", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_clean_adaptive_matches_literal(b, plus, normalize):
    x, a, k = planted(b, 144, outliers=(2, 12), seed=1)
    fn = prumerge_plus if plus else prumerge
    red = fn(x, cls_attn=a, keys=k, normalize_weights=normalize)
    outs, centres = prumerge_clean_literal(x, a, k, plus=plus, normalize=normalize)
    assert_matches(red, outs, centres, faithful=False)
    if b > 1:
        assert len(set(red.counts)) > 1, "planted outliers differ per image, so must the counts"


@pytest.mark.parametrize("plus", [False, True])
@pytest.mark.parametrize("keep", [1, 7, 40, 143, 144])
def test_clean_fixed_budget_matches_literal(plus, keep):
    x, a, k = planted(3, 144, seed=2)
    fn = prumerge_plus if plus else prumerge
    red = fn(x, cls_attn=a, keys=k, keep=keep)
    outs, centres = prumerge_clean_literal(x, a, k, plus=plus, keep=keep)
    assert_matches(red, outs, centres, faithful=False)
    assert red.counts == [keep] * 3, "keep counts every token the LLM gets, the summary token included"
    assert all(len(c) == (keep - 1 if 2 <= keep < 144 else keep) for c in centres)


def test_q_k_signals_equal_precomputed_attention_and_keys():
    g = torch.Generator().manual_seed(4)
    b, n, c = 2, 64, 32
    q, k = torch.randn(b, n + 1, c, generator=g), torch.randn(b, n + 1, c, generator=g)
    x = torch.randn(b, n, 16, generator=g)
    # literal official form: softmax(q kᵀ / sqrt(C)) over all N+1 keys, row of [CLS], patch columns
    lit = torch.stack([torch.softmax((q[i, 0] @ k[i].T) / math.sqrt(c), -1)[1:] for i in range(b)])
    torch.testing.assert_close(cls_attention_from_qk(q, k), lit, **TOL)
    r1 = prumerge(x, q=q, k=k, keep=10)
    r2 = prumerge(x, cls_attn=lit, keys=k[:, 1:], keep=10)
    torch.testing.assert_close(r1.features, r2.features, **TOL)


# --- degenerate inputs -------------------------------------------------------------------------------

def test_uniform_attention_zero_outliers():
    b, n = 2, 64
    x, _, k = planted(b, n)
    a = torch.full((b, n), 1.0 / n)
    # faithful PruMerge: no outlier -> only the extra token, as the official code
    red = prumerge(x, cls_attn=a, keys=k, mode="faithful")
    assert red.counts == [1, 1]
    torch.testing.assert_close(red.features[:, 0], (x * a[..., None]).sum(1), **TOL)
    # faithful PruMerge+: the official code divides by zero; we raise a ValueError that says so
    with pytest.raises(ValueError, match="no \\[CLS\\]-attention outlier"):
        prumerge_plus(x, cls_attn=a, keys=k, mode="faithful")
    # clean: min_keep (default 1) guards both
    assert prumerge(x, cls_attn=a, keys=k).counts == [2, 2]
    red = prumerge_plus(x, cls_attn=a, keys=k)
    stride = (n // 1) // 3
    assert red.counts == [len(range(0, n, stride)) + 1] * b


def test_more_than_a_third_kept_does_not_crash_clean_plus():
    # The official stride int(int(N/m)/3) is 0 once m > N/3 (an arange error). The IQR rule alone cannot
    # flag that many (at most ~N/4 lie above Q3), but a min_keep guard can ask for it: clean clamps the
    # stride to 1, so every token is kept.
    n = 60
    x, a, k = planted(2, n)
    red = prumerge_plus(x, cls_attn=a, keys=k, min_keep=25)
    assert red.counts == [n, n]  # all tokens are centres; nothing pruned, so no extra token
    assert red.anchors.tolist() == [list(range(n))] * 2


def test_max_keep_caps_outliers():
    x, a, k = planted(2, 144, outliers=(10, 12))
    red = prumerge(x, cls_attn=a, keys=k, max_keep=4)
    assert red.counts == [5, 5]


def test_all_equal_keys_ties_go_to_earlier_candidates():
    x, a, _ = planted(2, 64)
    k = torch.ones(2, 64, 8)
    red = prumerge(x, cls_attn=a, keys=k, keep=5)
    outs, centres = prumerge_clean_literal(x, a, k, keep=5)
    assert_matches(red, outs, centres, faithful=False)


def test_fewer_tokens_than_neighbours_clamps_k():
    x, a, k = planted(2, 16, outliers=(2, 3))
    red = prumerge(x, cls_attn=a, keys=k, mode="faithful")
    outs, centres = prumerge_faithful_literal(x, a, k, k=15)
    assert_matches(red, outs, centres, faithful=True)


@pytest.mark.parametrize("bad", ["nan", "inf"])
@pytest.mark.parametrize("where", ["features", "cls_attn", "keys"])
def test_non_finite_input_raises(bad, where):
    x, a, k = planted(1, 64)
    t = {"features": x, "cls_attn": a, "keys": k}[where]
    t.view(-1)[3] = float(bad)
    with pytest.raises(ValueError, match=f"{where}: contains NaN or inf"):
        prumerge(x, cls_attn=a, keys=k)


def test_empty_batch():
    x, a, k = torch.zeros(0, 64, 8), torch.zeros(0, 64), torch.zeros(0, 64, 4)
    red = prumerge_plus(x, cls_attn=a, keys=k)
    assert len(red) == 0 and red.features.shape == (0, 0, 8) and red.to_list() == []


def test_shape_mismatch_errors_name_the_argument():
    x, a, k = planted(2, 64)
    with pytest.raises(ValueError, match="cls_attn: expected shape"):
        prumerge(x, cls_attn=a[:, :10], keys=k)
    with pytest.raises(ValueError, match="keys: expected shape"):
        prumerge(x, cls_attn=a, keys=k[:1])
    with pytest.raises(ValueError, match="needs cls_attn"):
        prumerge(x)
    with pytest.raises(ValueError, match="features: expected shape"):
        prumerge(x[0], cls_attn=a, keys=k)


@pytest.mark.parametrize(
    "opts, msg",
    [
        (dict(keep=0), "keep must be"),
        (dict(ratio=1.5), "ratio must be"),
        (dict(keep=3, ratio=0.1), "either keep or ratio"),
        (dict(mode="faithful", min_keep=2), "only apply in mode='clean'"),
        (dict(mode="fast"), "mode must be"),
        (dict(k_neighbors=0), "k_neighbors"),
    ],
)
def test_bad_options(opts, msg):
    with pytest.raises(ValueError, match=msg):
        PruMergeConfig(**opts)


# --- properties ---------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3),
    n=st.sampled_from([36, 49, 64, 100]),
    plus=st.booleans(),
    normalize=st.booleans(),
    seed=st.integers(0, 10_000),
    keep=st.one_of(st.none(), st.integers(1, 120)),
)
def test_outputs_are_the_rule_s_combinations(b, n, plus, normalize, seed, keep):
    """With one-hot features (X = I) every output row *is* its weight vector over the input tokens: a centre
    is itself (weight 1) plus at most k neighbours weighted by their attention (convex when normalised); the
    extra token is the pruned tokens weighted by their attention."""
    _, a, k = planted(b, n, seed=seed, outliers=(1, 8))
    x = torch.eye(n).expand(b, n, n).contiguous()
    fn = prumerge_plus if plus else prumerge
    red = fn(x, cls_attn=a, keys=k, keep=keep, normalize_weights=normalize)
    kk = min(32, n - 1)
    _, expected_centres = prumerge_clean_literal(x[:, :, :1], a, k, plus=plus, keep=keep)  # selection only
    for bi in range(b):
        w, anchors = red.item(bi)
        centres = anchors.tolist()
        kept = set(expected_centres[bi])
        assert centres[: len(kept)] == expected_centres[bi]
        assert len(w) in (len(kept), len(kept) + 1)
        if keep is not None:
            assert len(w) == min(keep, n), "keep counts every output token, the summary token included"
        assert (w >= 0).all()
        for s in range(len(w)):
            row = w[s]
            support = set(torch.nonzero(row).flatten().tolist())
            if normalize:
                assert abs(float(row.sum()) - 1) < 1e-5, "normalised merge is a convex combination"
            if s < len(kept):  # a centre
                c = centres[s]
                assert c in support and len(support) <= kk + 1
                if not normalize:
                    assert abs(float(row[c]) - 1.0) < 1e-5
                    for j in support - {c}:
                        assert abs(float(row[j]) - float(a[bi, j])) < 1e-6
            else:  # the extra token: exactly the pruned tokens
                assert support <= set(range(n)) - kept
                if not normalize:
                    for j in support:
                        assert abs(float(row[j]) - float(a[bi, j])) < 1e-6
    red2 = fn(x, cls_attn=a, keys=k, keep=keep, normalize_weights=normalize)
    assert torch.equal(red.features, red2.features), "deterministic"


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 4), n=st.sampled_from([36, 64, 144]), seed=st.integers(0, 10_000), plus=st.booleans())
def test_adaptive_counts_within_bounds_and_assignment_consistent(b, n, seed, plus):
    x, a, k = planted(b, n, seed=seed, outliers=(0, 10))
    fn = prumerge_plus if plus else prumerge
    red = fn(x, cls_attn=a, keys=k, min_keep=2, max_keep=20)
    for bi, cnt in enumerate(red.counts):
        feats, anchors = red.item(bi)
        centres = anchors[:-1] if cnt > 0 else anchors
        assert len(set(centres.tolist())) == len(centres), "clean anchors are distinct"
        assert centres.tolist() == sorted(centres.tolist()), "clean output is in raster order"
        assert 2 <= len(centres) <= (n if plus else 20)
        # every kept token is assigned to its own slot; every other token to a slot or the extra token
        asg = red.assignment[bi]
        for s, c in enumerate(centres.tolist()):
            assert int(asg[c]) == s
        assert (asg >= 0).all()
        assert torch.equal(red.features[bi, cnt:], torch.zeros_like(red.features[bi, cnt:]))


def test_keep_all_tokens_keeps_every_anchor_and_no_extra_token():
    x, a, k = planted(2, 64)
    red = prumerge(x, cls_attn=a, keys=k, keep=64)
    assert red.counts == [64, 64]
    assert red.anchors.tolist() == [list(range(64))] * 2


def test_reduce_prefers_precomputed_signals_when_q_k_are_also_given():
    from slimvlm.methods import reduce

    g = torch.Generator().manual_seed(8)
    q, k = torch.randn(2, 65, 16, generator=g), torch.randn(2, 65, 16, generator=g)
    x = torch.randn(2, 64, 8, generator=g)
    from_qk = reduce("prumerge", x, signals=dict(q=q, k=k), keep=6)
    both = reduce("prumerge", x, signals=dict(q=q, k=k, cls_attn=cls_attention_from_qk(q, k), keys=k[:, 1:]), keep=6)
    torch.testing.assert_close(both.features, from_qk.features, **TOL)
    with pytest.raises(ValueError, match="either q and k"):
        prumerge(x, q=q, k=k, cls_attn=cls_attention_from_qk(q, k), keys=k[:, 1:])


def test_summary_flag_marks_the_extra_token():
    x, a, k = planted(2, 64)
    assert prumerge(x, cls_attn=a, keys=k, keep=5).summary.tolist() == [True, True]
    assert prumerge(x, cls_attn=a, keys=k, keep=64).summary.tolist() == [False, False]  # nothing pruned
    assert prumerge(x, cls_attn=a, keys=k, keep=5, extra_token=False).summary.tolist() == [False, False]
    uniform = torch.full((2, 64), 1 / 64)
    red = prumerge(x, cls_attn=uniform, keys=k, mode="faithful")  # only the extra token
    assert red.summary.tolist() == [True, True] and red.has_summary(0) and red.counts == [1, 1]
    from slimvlm.methods import spatial

    assert not spatial(x, keep=16).has_summary(0)


# --- near-ties: faithful mode follows the exact order of the neighbour similarities --------------------------


def near_tie_inputs():
    """48 tokens. Token 0 has the largest attention; tokens 1-31 are clearly close to it (cos 0.55-0.99), tokens 32
    (u) and 33 (v) compete for its 32nd neighbour: v is closer by 2.6e-8 in exact arithmetic, less than float32
    resolves (both cosines round to the same float32 value); the rest are orthogonal to it."""
    n = 48
    keys = torch.zeros(1, n, 3)
    keys[0, :, 2] = 1.0
    keys[0, 0] = torch.tensor([1.0, 0.0, 0.0])
    for i in range(1, 32):
        keys[0, i] = torch.tensor([1.0, 0.05 * i, 0.0])
    keys[0, 32] = torch.tensor([1.0, 1.732048511505127, 0.0])  # u
    keys[0, 33] = torch.tensor([1.0, 1.7320483922958374, 0.0])  # v
    attn = torch.full((1, n), 0.01)
    attn[0, 0] = 0.5
    x = torch.randn(1, n, 6, generator=torch.Generator().manual_seed(0))
    return x, attn, keys


@pytest.mark.parametrize("plus", [False, True])
def test_faithful_near_tie_follows_the_exact_order(plus):
    x, attn, keys = near_tie_inputs()
    k64 = keys[0].double() / keys[0].double().norm(dim=-1, keepdim=True)
    assert float(k64[33] @ k64[0]) - float(k64[32] @ k64[0]) > 2e-8  # v is the closer one
    k32 = torch.nn.functional.normalize(keys[0], dim=-1)
    s32 = k32 @ k32[0]
    assert float(s32[33]) <= float(s32[32])  # premise: float32 products cannot tell them apart (tie or swap)
    # the official candidate list of token 0: the other kept token (PruMerge+: its grid sample 24), then the pruned
    # tokens in raster order; its 32 nearest by the exact cosine: tokens 1-31 and v (33), never u (32)
    fn = prumerge_plus if plus else prumerge
    red = fn(x, cls_attn=attn, keys=keys, keep=2 if plus else 1, mode="faithful")
    assert red.anchors[0, 0].item() == 0
    nbrs = list(range(1, 32)) + [33]
    want = x[0, 0] + sum(attn[0, j] * x[0, j] for j in nbrs)
    torch.testing.assert_close(red.features[0, 0], want, **TOL)
    wrong = x[0, 0] + sum(attn[0, j] * x[0, j] for j in list(range(1, 32)) + [32])
    assert not torch.allclose(red.features[0, 0], wrong, **TOL)
