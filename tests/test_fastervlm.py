"""FasterVLM (``slimvlm.methods.fastervlm``) against a literal transcription of the official rule
(Theia-4869/FasterVLM ``llava_arch.py`` ``encode_images``: head-mean [CLS] attention of ``attentions[-2]``, top-T,
boolean index mask over the projected features), written below with Python loops over tokens.

Through ``slimvlm.apply``: every tiny family (towers without [CLS] get the pseudo-[CLS]), and on tiny LLaVA the
kept tokens equal the official rule applied to the tower's own eager ``output_attentions``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from image_pipeline import FAMILY_CASES, FAMILY_IDS, check_selection, make_inputs, model_of, run
from slimvlm.methods import FasterVLMConfig, fastervlm, get

SETTINGS = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def inputs(seed: int, b: int, n: int, c: int = 8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, c, generator=g), torch.rand(b, n, generator=g)


# ------------------------------------------------------------------------------------------------ literal oracle


def official_fastervlm(features: torch.Tensor, attn: torch.Tensor, t: int) -> list[tuple[list[int], torch.Tensor]]:
    """Per image: the T largest attention values (ties to the lower index), then the boolean mask read in raster
    order, as ``image_feature[index_mask]`` does. Returns (kept indices, kept features)."""
    out = []
    for b in range(features.shape[0]):
        scores = [float(v) for v in attn[b]]
        ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        mask = [False] * len(scores)
        for i in ranked[:t]:
            mask[i] = True
        kept = [i for i in range(len(scores)) if mask[i]]
        out.append((kept, torch.stack([features[b, i] for i in kept])))
    return out


def check_against_official(red, features, attn, t):
    assert red.counts == [t] * features.shape[0]
    for b, (kept, feats) in enumerate(official_fastervlm(features, attn, t)):
        got, anchors = red.item(b)
        assert anchors.tolist() == kept
        torch.testing.assert_close(got, feats, atol=1e-5, rtol=0)
        assignment = [-1] * features.shape[1]
        for slot, i in enumerate(kept):
            assignment[i] = slot
        assert red.assignment[b].tolist() == assignment


@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize("keep", [144, 64, 32, 1, 576])
def test_matches_official_on_576(b, keep):
    x, attn = inputs(keep + b, b, 576)
    check_against_official(fastervlm(x, cls_attn=attn, keep=keep), x, attn, keep)


@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize("n,ratio", [(576, 0.25), (100, 0.1), (7, 0.5), (2048, 0.03)])
def test_ratio_budget_matches_official(b, n, ratio):
    x, attn = inputs(n, b, n)
    check_against_official(fastervlm(x, cls_attn=attn, ratio=ratio), x, attn, max(1, min(n, int(n * ratio))))


def test_ties_go_to_the_lower_index():
    x, _ = inputs(0, 1, 10)
    attn = torch.tensor([[0.1, 0.5, 0.5, 0.2, 0.5, 0.0, 0.5, 0.3, 0.1, 0.1]])
    red = fastervlm(x, cls_attn=attn, keep=3)
    assert red.anchors.tolist() == [[1, 2, 4]]
    check_against_official(red, x, attn, 3)


def test_hand_example():
    x = torch.arange(6.0).view(1, 6, 1)
    attn = torch.tensor([[0.1, 0.4, 0.05, 0.3, 0.0, 0.15]])
    red = fastervlm(x, cls_attn=attn, keep=3)
    assert red.anchors.tolist() == [[1, 3, 5]] and red.features.flatten().tolist() == [1.0, 3.0, 5.0]
    assert red.assignment.tolist() == [[-1, 0, -1, 1, -1, 2]]


# ------------------------------------------------------------------------------------------------ properties


@SETTINGS
@given(b=st.integers(1, 4), n=st.integers(1, 80), frac=st.floats(0.0, 1.0), seed=st.integers(0, 9999))
def test_properties(b, n, frac, seed):
    keep = max(1, round(frac * n))
    x, attn = inputs(seed, b, n)
    red = fastervlm(x, cls_attn=attn, keep=keep)
    assert red.counts == [keep] * b and red.features.shape == (b, keep, x.shape[-1])
    for i in range(b):
        anchors = red.anchors[i].tolist()
        assert anchors == sorted(set(anchors))
        assert torch.equal(red.features[i], x[i, anchors])  # kept tokens are unchanged
        dropped = torch.ones(n, dtype=torch.bool)
        dropped[anchors] = False
        if bool(dropped.any()):  # nothing dropped outranks a kept token
            assert float(attn[i, anchors].min()) >= float(attn[i, dropped].max())
    again = fastervlm(x.clone(), cls_attn=attn.clone(), keep=keep)
    assert all(torch.equal(getattr(red, f), getattr(again, f)) for f in ("features", "anchors", "lengths", "assignment"))
    # only the order of the attention matters
    moved = fastervlm(x, cls_attn=attn * 3.0 + 1.0, keep=keep)
    assert torch.equal(moved.anchors, red.anchors)


@pytest.mark.parametrize("b", [1, 3])
def test_identity_at_full_budget(b):
    x, attn = inputs(1, b, 50)
    red = fastervlm(x, cls_attn=attn, ratio=1.0)
    assert torch.equal(red.features, x)
    assert red.anchors.tolist() == [list(range(50))] * b and red.assignment.tolist() == [list(range(50))] * b


def test_default_budget_is_a_quarter_and_keep_is_clamped():
    x, attn = inputs(2, 2, 576)
    assert fastervlm(x, cls_attn=attn).counts == [144, 144]
    assert fastervlm(x[:, :30], cls_attn=attn[:, :30], keep=500).counts == [30, 30]
    assert FasterVLMConfig(keep=64).count(576) == 64


# ------------------------------------------------------------------------------------------------ degenerate inputs


@pytest.mark.parametrize("where", ["features", "cls_attn"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_raise(where, bad):
    x, attn = inputs(0, 2, 36)
    {"features": x, "cls_attn": attn}[where].view(-1)[5] = bad
    with pytest.raises(ValueError, match=where):
        fastervlm(x, cls_attn=attn, keep=8)


def test_missing_or_misshaped_attention_raises():
    x, attn = inputs(0, 2, 36)
    with pytest.raises(ValueError, match="cls_attn"):
        fastervlm(x, keep=8)
    with pytest.raises(ValueError, match="cls_attn"):
        fastervlm(x, cls_attn=attn[:, :-1], keep=8)


def test_empty_batch_single_token_and_constant_attention():
    red = fastervlm(torch.zeros(0, 36, 4), cls_attn=torch.zeros(0, 36), keep=8)
    assert len(red) == 0 and red.assignment.shape == (0, 36)
    x, _ = inputs(0, 2, 1)
    assert fastervlm(x, cls_attn=torch.ones(2, 1), keep=3).anchors.tolist() == [[0], [0]]
    x, _ = inputs(0, 2, 20)
    assert fastervlm(x, cls_attn=torch.full((2, 20), 0.05), keep=4).anchors.tolist() == [[0, 1, 2, 3]] * 2


@pytest.mark.parametrize("opts,word", [({"keep": 0}, "keep"), ({"ratio": 1.5}, "ratio"), ({"mode": "x"}, "mode")])
def test_bad_options_raise_naming_the_option(opts, word):
    x, attn = inputs(0, 1, 36)
    with pytest.raises(ValueError, match=word):
        fastervlm(x, cls_attn=attn, **opts)


def test_declaration():
    info = get("fastervlm")
    assert info.applies == "pre_projector" and info.needs == ("cls_attn",)
    assert (info.signals.score_layer, info.signals.style) == (-2, "head_mean")
    assert not info.adaptive and info.pruner is None


# ------------------------------------------------------------------------------------------------ through slimvlm.apply


@pytest.mark.parametrize("fam,modality", FAMILY_CASES, ids=FAMILY_IDS)
def test_through_apply_on_every_family(fam, modality):
    model = model_of(fam)
    check_selection(model, make_inputs(model, fam, modality), "fastervlm", keep=5)


@pytest.mark.parametrize("b", [1, 2])
def test_apply_on_llava_equals_official_on_eager_attentions(b):
    """Tiny LLaVA (CLIP with [CLS]): the official rule on ``vision_tower(..., output_attentions=True)
    .attentions[-2][:, :, 0, 1:].mean(1)`` and the stock projected tokens gives what the LM receives."""
    model = model_of("llava", attn="eager")
    inp = make_inputs(model, "llava", "image", prompts=("Describe the image.", "What is red?")[:b])
    keep = 9
    _, pairs = run(model, inp, "fastervlm", keep=keep)
    with torch.no_grad():
        tower = model.model.vision_tower(inp["pixel_values"], output_attentions=True)
        attn = tower.attentions[-2][:, :, 0, 1:].mean(1)
        tokens = model.model.get_image_features(pixel_values=inp["pixel_values"], return_dict=True).pooler_output
    tokens = torch.stack(list(tokens))
    for (injected, _), (kept, feats) in zip(pairs, official_fastervlm(tokens, attn, keep)):
        torch.testing.assert_close(injected, feats, atol=1e-5, rtol=0)
