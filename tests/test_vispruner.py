"""VisPruner (``slimvlm.methods.vispruner``) against a literal transcription of the official rule
(Theia-4869/VisPruner ``llava_arch.py`` ``encode_images``), written below with Python lists and a loop over the
``a`` tokens of every round (float64 cosines, one token at a time).

Through ``slimvlm.apply``: every tiny family, and on tiny LLaVA the kept tokens equal the official rule applied to
the tower's own eager ``output_attentions`` and ``hidden_states[-2]``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from image_pipeline import FAMILY_CASES, FAMILY_IDS, check_selection, make_inputs, model_of, run
from slimvlm.methods import VisPrunerConfig, get, vispruner

SETTINGS = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def inputs(seed: int, b: int, n: int, c: int = 8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, c, generator=g), torch.rand(b, n, generator=g)


# ------------------------------------------------------------------------------------------------ literal oracle


def unit(v: torch.Tensor) -> torch.Tensor:
    v = v.double()
    norm = math.sqrt(sum(float(e) ** 2 for e in v))
    return v / norm if norm > 0 else v


def official_vispruner(features, attn, t: int, important_ratio: float = 0.5) -> list[list[int]]:
    """Per image, the kept indices in raster order."""
    out = []
    n = features.shape[1]
    for b in range(features.shape[0]):
        t_imp = int(t * important_ratio)
        t_div = t - t_imp
        scores = [float(v) for v in attn[b]]
        order = sorted(range(n), key=lambda i: (-scores[i], i))  # argsort(descending=True)
        important, residual = order[:t_imp], order[t_imp:]
        units = torch.stack([unit(features[b, i]) for i in range(n)])
        while t_div > 0:
            r = min(8, len(residual) - t_div)
            if r <= 0:
                break
            a, bb = residual[0::2], residual[1::2]
            b_units = units[bb]
            a_scores = []
            for i in a:  # each a token's best match among the b tokens
                a_scores.append(float((b_units @ units[i]).max()))
            distinct = sorted(range(len(a)), key=lambda p: (-a_scores[p], p))[r:]
            residual = [a[p] for p in distinct] + bb
        selected = important + residual if t_div > 0 else important
        mask = [False] * n
        for i in selected:
            mask[i] = True
        out.append([i for i in range(n) if mask[i]])
    return out


def check_against_official(red, features, attn, t, important_ratio=0.5):
    assert red.counts == [t] * features.shape[0]
    for b, kept in enumerate(official_vispruner(features, attn, t, important_ratio)):
        got, anchors = red.item(b)
        assert anchors.tolist() == kept
        torch.testing.assert_close(got, features[b, kept], atol=1e-5, rtol=0)


@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize("keep,important_ratio", [(144, 0.5), (64, 0.5), (64, 0.75), (32, 0.5), (32, 0.0), (32, 1.0)])
def test_matches_official_on_576(b, keep, important_ratio):
    x, attn = inputs(keep + b, b, 576)
    red = vispruner(x, cls_attn=attn, keep=keep, important_ratio=important_ratio)
    check_against_official(red, x, attn, keep, important_ratio)


@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize("n,keep", [(40, 36), (40, 1), (9, 2), (100, 31), (17, 16), (30, 3)])
def test_small_and_odd_sizes_match_official(b, n, keep):
    """Odd residual lengths, rounds where ``a`` has fewer tokens than ``r'`` (the slice drops them all), T_imp = 0."""
    x, attn = inputs(n * 7 + keep, b, n, c=5)
    check_against_official(vispruner(x, cls_attn=attn, keep=keep), x, attn, keep)


def test_duplicates_are_removed_before_distinct_tokens():
    # 12 tokens: 0..3 important by attention; of the rest, tokens 4..7 are near copies of 8..11 except 7, which is
    # distinct: the diverse pass must keep the distinct ones.
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, 16, generator=g)
    x = torch.cat([torch.randn(4, 16, generator=g), base + 1e-3 * torch.randn(4, 16, generator=g), base])[None]
    x[0, 7] = torch.randn(16, generator=g) * 5
    attn = torch.linspace(1.0, 0.0, 12)[None]
    red = vispruner(x, cls_attn=attn, keep=8)
    check_against_official(red, x, attn, 8)
    assert 7 in red.anchors[0].tolist()


# ------------------------------------------------------------------------------------------------ properties


@SETTINGS
@given(b=st.integers(1, 3), n=st.integers(1, 70), frac=st.floats(0.0, 1.0), r=st.floats(0.0, 1.0),
       seed=st.integers(0, 9999))
def test_properties(b, n, frac, r, seed):
    keep = max(1, round(frac * n))
    x, attn = inputs(seed, b, n)
    red = vispruner(x, cls_attn=attn, keep=keep, important_ratio=r)
    assert red.counts == [keep] * b and red.features.shape == (b, keep, x.shape[-1])
    t_imp = int(keep * r)
    for i in range(b):
        anchors = red.anchors[i].tolist()
        assert anchors == sorted(set(anchors))
        assert torch.equal(red.features[i], x[i, anchors])
        top = sorted(range(n), key=lambda j: (-float(attn[i, j]), j))[:t_imp]
        assert set(top) <= set(anchors)  # the important tokens are all kept
    again = vispruner(x.clone(), cls_attn=attn.clone(), keep=keep, important_ratio=r)
    assert torch.equal(again.anchors, red.anchors) and torch.equal(again.features, red.features)


@pytest.mark.parametrize("b", [1, 3])
def test_identity_at_full_budget(b):
    x, attn = inputs(1, b, 50)
    red = vispruner(x, cls_attn=attn, ratio=1.0)
    assert torch.equal(red.features, x) and red.anchors.tolist() == [list(range(50))] * b


def test_important_ratio_one_is_fastervlm_rule():
    x, attn = inputs(5, 2, 64)
    red = vispruner(x, cls_attn=attn, keep=10, important_ratio=1.0)
    for i in range(2):
        top = sorted(sorted(range(64), key=lambda j: (-float(attn[i, j]), j))[:10])
        assert red.anchors[i].tolist() == top


def test_split_and_default_budget():
    assert VisPrunerConfig(keep=64).split(576) == (32, 32)
    assert VisPrunerConfig(keep=64, important_ratio=0.75).split(576) == (48, 16)
    assert VisPrunerConfig(keep=5).split(576) == (2, 3)  # int(5 * 0.5) = 2
    x, attn = inputs(2, 1, 576)
    assert vispruner(x, cls_attn=attn).counts == [144]


# ------------------------------------------------------------------------------------------------ degenerate inputs


@pytest.mark.parametrize("where", ["features", "cls_attn"])
def test_non_finite_inputs_raise(where):
    x, attn = inputs(0, 2, 36)
    {"features": x, "cls_attn": attn}[where].view(-1)[3] = float("nan")
    with pytest.raises(ValueError, match=where):
        vispruner(x, cls_attn=attn, keep=8)


def test_missing_attention_raises():
    x, attn = inputs(0, 2, 36)
    with pytest.raises(ValueError, match="cls_attn"):
        vispruner(x, keep=8)
    with pytest.raises(ValueError, match="cls_attn"):
        vispruner(x, cls_attn=attn[:1], keep=8)


def test_degenerate_tokens():
    # all tokens equal, zero tokens (orthogonal to all, no NaN), a single token, an empty batch
    for x in (torch.full((2, 30, 4), 0.5), torch.zeros(2, 30, 4)):
        red = vispruner(x, cls_attn=torch.full((2, 30), 0.1), keep=9)
        assert red.counts == [9, 9] and len(set(red.anchors[0].tolist())) == 9
        assert bool(torch.isfinite(red.features).all())
    assert vispruner(torch.ones(1, 1, 3), cls_attn=torch.ones(1, 1), keep=4).anchors.tolist() == [[0]]
    red = vispruner(torch.zeros(0, 10, 3), cls_attn=torch.zeros(0, 10), keep=4)
    assert len(red) == 0


@pytest.mark.parametrize("opts,word", [({"important_ratio": 1.5}, "important_ratio"),
                                       ({"important_ratio": -0.1}, "important_ratio"), ({"keep": -3}, "keep")])
def test_bad_options_raise_naming_the_option(opts, word):
    x, attn = inputs(0, 1, 36)
    with pytest.raises(ValueError, match=word):
        vispruner(x, cls_attn=attn, **opts)


def test_declaration():
    info = get("vispruner")
    assert info.applies == "pre_projector" and info.needs == ("cls_attn",)
    assert (info.signals.score_layer, info.signals.style) == (-2, "head_mean")


# ------------------------------------------------------------------------------------------------ through slimvlm.apply


@pytest.mark.parametrize("fam,modality", FAMILY_CASES, ids=FAMILY_IDS)
def test_through_apply_on_every_family(fam, modality):
    model = model_of(fam)
    check_selection(model, make_inputs(model, fam, modality), "vispruner", keep=5)


@pytest.mark.parametrize("b", [1, 2])
def test_apply_on_llava_equals_official_on_eager_attentions(b):
    """Tiny LLaVA: the official rule on ``attentions[-2]`` ([CLS] row, head mean) and the features
    ``hidden_states[-2][:, 1:]`` keeps the stock projected tokens the LM receives."""
    model = model_of("llava", attn="eager")
    inp = make_inputs(model, "llava", "image", prompts=("Describe the image.", "What is red?")[:b])
    keep = 12
    _, pairs = run(model, inp, "vispruner", keep=keep)
    with torch.no_grad():
        tower = model.model.vision_tower(inp["pixel_values"], output_attentions=True, output_hidden_states=True)
        attn = tower.attentions[-2][:, :, 0, 1:].mean(1)
        feats = tower.hidden_states[-2][:, 1:]
        tokens = model.model.get_image_features(pixel_values=inp["pixel_values"], return_dict=True).pooler_output
    for (injected, _), kept, tok in zip(pairs, official_vispruner(feats, attn, keep), tokens):
        torch.testing.assert_close(injected, tok[kept], atol=1e-5, rtol=0)
