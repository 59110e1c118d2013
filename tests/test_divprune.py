"""DivPrune (``slimvlm.methods.divprune``) against a literal transcription of the official rule
(vbdi/divprune ``llava_arch.py`` ``DivPrune``): the distance matrix built token pair by token pair (float64), the
first choice by the second-smallest entry of each column, then the smallest distance of each column to the rows
chosen so far, re-gathered at every step as the official ``index_select`` does.

Through ``slimvlm.apply``: every tiny family, and on tiny LLaVA the kept tokens equal the official rule applied to
the stock projected tokens.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from image_pipeline import FAMILY_CASES, FAMILY_IDS, check_selection, make_inputs, model_of, run
from slimvlm.methods import DivPruneConfig, divprune, get

SETTINGS = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def inputs(seed: int, b: int, n: int, c: int = 8):
    return torch.randn(b, n, c, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ literal oracle


def distance_matrix(x: torch.Tensor) -> list[list[float]]:
    """``1 - cos`` of every token with every token, one row (token) at a time, float64."""
    xd = x.double()
    norms = xd.norm(dim=-1)
    rows = []
    for i in range(xd.shape[0]):
        rows.append((1.0 - (xd @ xd[i]) / (norms * norms[i])).tolist())
    return rows


def official_choice(x: torch.Tensor, k: int, exclude_chosen: bool = False, dist=None) -> list[int]:
    """One image: the indices in order of choice. ``exclude_chosen=False`` is the official rule (a chosen token
    stays a candidate); True is slimvlm's clean mode."""
    d = distance_matrix(x) if dist is None else dist
    n = len(d)
    chosen: list[int] = []
    for i in range(k):
        if i == 0:
            scores = [sorted(d[r][j] for r in range(n))[1] for j in range(n)]  # topk(2, largest=False).values[1]
        else:
            scores = [min(d[r][j] for r in chosen) for j in range(n)]  # min over index_select(rows=chosen)
        if exclude_chosen:
            scores = [-math.inf if j in chosen else s for j, s in enumerate(scores)]
        best = max(range(n), key=lambda j: (scores[j], -j))  # argmax: the first maximum
        chosen.append(best)
    return chosen


def check_against_official(red, x, k, mode="faithful"):
    assert red.counts == [k] * x.shape[0]
    for b in range(x.shape[0]):
        kept = sorted(official_choice(x[b], k, exclude_chosen=mode == "clean"))
        got, anchors = red.item(b)
        assert anchors.tolist() == kept
        torch.testing.assert_close(got, x[b, kept], atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["faithful", "clean"])
@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize("keep", [64, 32, 1])
def test_matches_official_on_576(mode, b, keep):
    x = inputs(keep + b, b, 576, c=6)
    check_against_official(divprune(x, keep=keep, mode=mode), x, keep, mode)


@pytest.mark.parametrize("mode", ["faithful", "clean"])
@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize("n,keep", [(100, 25), (30, 30), (2, 1), (2, 2), (57, 10)])
def test_small_sizes_match_official(mode, b, n, keep):
    x = inputs(n + keep, b, n)
    check_against_official(divprune(x, keep=keep, mode=mode), x, keep, mode)


def test_ratio_uses_the_shared_rule():
    # int(576 * 0.1) = 57 (the official round() would give 58)
    x = inputs(0, 1, 576, c=6)
    red = divprune(x, ratio=0.1)
    check_against_official(red, x, 57)


def test_first_choice_is_the_token_farthest_from_its_nearest_neighbour():
    # 1-D directions: three clustered tokens and one alone at 90 degrees
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.05], [1.0, -0.05], [0.0, 1.0]]])
    red = divprune(x, keep=1)
    assert red.anchors.tolist() == [[3]]
    red = divprune(x, keep=2)  # then the token farthest from token 3: the cluster member at -0.05 rad
    assert red.anchors.tolist() == [[2, 3]]


# ------------------------------------------------------------------------------------------------ the defect


def test_faithful_rechooses_a_token_once_only_duplicates_remain():
    """Five tokens, only two distinct directions: once both are chosen every remaining score is 0 (duplicates) and
    so is a chosen token's own; the official argmax takes the first index, chosen or not."""
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]])
    d = [[0.0 if (i in (0, 1, 4)) == (j in (0, 1, 4)) else 1.0 for j in range(5)] for i in range(5)]
    want = official_choice(x[0], 4, dist=d)
    assert len(set(want)) < 4  # the premise: the official rule chooses a token twice
    faithful = divprune(x, keep=4, mode="faithful")
    assert faithful.anchors[0].tolist() == sorted(want)
    clean = divprune(x, keep=4, mode="clean")
    assert clean.anchors[0].tolist() == sorted(official_choice(x[0], 4, exclude_chosen=True, dist=d))
    assert len(set(clean.anchors[0].tolist())) == 4


# ------------------------------------------------------------------------------------------------ properties


@SETTINGS
@given(b=st.integers(1, 3), n=st.integers(1, 60), frac=st.floats(0.0, 1.0), seed=st.integers(0, 9999))
def test_properties(b, n, frac, seed):
    keep = max(1, round(frac * n))
    x = inputs(seed, b, n)
    red = divprune(x, keep=keep)
    assert red.counts == [keep] * b and red.features.shape == (b, keep, x.shape[-1])
    for i in range(b):
        anchors = red.anchors[i].tolist()
        assert anchors == sorted(set(anchors))
        assert torch.equal(red.features[i], x[i, anchors])
    again = divprune(x.clone(), keep=keep)
    assert torch.equal(again.anchors, red.anchors)


def test_only_directions_matter():
    x = inputs(9, 2, 80)
    scale = torch.rand(2, 80, 1, generator=torch.Generator().manual_seed(1)) * 4 + 0.5
    assert torch.equal(divprune(x * scale, keep=20).anchors, divprune(x, keep=20).anchors)


@pytest.mark.parametrize("mode", ["faithful", "clean"])
def test_identity_at_full_budget(mode):
    x = inputs(1, 3, 40)
    red = divprune(x, ratio=1.0, mode=mode)
    assert torch.equal(red.features, x) and red.anchors.tolist() == [list(range(40))] * 3


def test_default_budget_and_mode():
    assert DivPruneConfig().count(576) == 144 and DivPruneConfig().mode == "clean"
    assert divprune(inputs(0, 1, 40), keep=400).counts == [40]


# ------------------------------------------------------------------------------------------------ degenerate inputs


def test_degenerate_inputs():
    with pytest.raises(ValueError, match="features"):
        divprune(torch.tensor([[[1.0, float("nan")], [0.0, 1.0]]]), keep=1)
    assert len(divprune(torch.zeros(0, 5, 3), keep=2)) == 0
    assert divprune(torch.ones(2, 1, 3), keep=3).anchors.tolist() == [[0], [0]]
    # zero tokens count as orthogonal to all: no NaN, and clean mode still keeps distinct tokens
    z = torch.zeros(1, 12, 4)
    z[0, 3] = torch.tensor([1.0, 0, 0, 0])
    red = divprune(z, keep=5)
    assert red.counts == [5] and len(set(red.anchors[0].tolist())) == 5 and bool(torch.isfinite(red.features).all())
    same = divprune(torch.full((2, 20, 3), 0.7), keep=6)
    assert same.anchors.tolist() == [[0, 1, 2, 3, 4, 5]] * 2


@pytest.mark.parametrize("opts,word", [({"mode": "fast"}, "mode"), ({"keep": 1.5}, "keep"), ({"ratio": 0}, "ratio")])
def test_bad_options_raise_naming_the_option(opts, word):
    with pytest.raises(ValueError, match=word):
        divprune(inputs(0, 1, 10), **opts)


def test_declaration():
    info = get("divprune")
    assert info.applies == "post_projector" and info.signals is None and info.needs == ()


# ------------------------------------------------------------------------------------------------ through slimvlm.apply


@pytest.mark.parametrize("fam,modality", FAMILY_CASES, ids=FAMILY_IDS)
def test_through_apply_on_every_family(fam, modality):
    model = model_of(fam)
    check_selection(model, make_inputs(model, fam, modality), "divprune", keep=5)


def test_apply_on_llava_equals_official_on_stock_tokens():
    model = model_of("llava")
    inp = make_inputs(model, "llava", "image")
    keep = 11
    _, pairs = run(model, inp, "divprune", keep=keep)
    with torch.no_grad():
        tokens = model.model.get_image_features(pixel_values=inp["pixel_values"], return_dict=True).pooler_output
    for (injected, _), tok in zip(pairs, tokens):
        kept = sorted(official_choice(tok, keep))
        torch.testing.assert_close(injected, tok[kept], atol=0, rtol=0)
