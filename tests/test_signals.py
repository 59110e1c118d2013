"""slimvlm.signals on tiny random transformers-5 towers (CLIP, SigLIP, DINOv2), eager vs sdpa."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    Dinov2Model,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from slimvlm.methods import reduce
from slimvlm.signals import SUPPORTED_TOWERS, capture_signals, record_qk, tower_spec

TINY = dict(image_size=32, patch_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4)
HEADS = 4


def _config(family: str):
    if family == "clip":
        return CLIPVisionModel, CLIPVisionConfig(**TINY)
    if family == "siglip":
        return SiglipVisionModel, SiglipVisionConfig(**TINY, vision_use_head=False)
    cfg = Dinov2Config(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, mlp_ratio=2)
    return Dinov2Model, cfg


# q/k weight scale per family: CLIP's and DINOv2's default inits give nearly uniform attention, so the
# checks would be weak; SigLIP's init is already peaked.
SHARPEN = {"clip": 4.0, "siglip": 1.0, "dinov2": 8.0}


def _sharpen(model: nn.Module, scale: float) -> None:
    """Larger q/k weights than the default init, so attention is far from uniform and the checks bite."""
    spec = tower_spec(model)
    with torch.no_grad():
        for i in range(spec.num_layers):
            q, k = spec.qk_modules(i)
            q.weight.mul_(scale)
            k.weight.mul_(scale)


def _pair(family: str) -> tuple[nn.Module, nn.Module]:
    """The same random weights under eager and sdpa attention."""
    # Separate config objects: transformers 5 `_from_config` stores the implementation on the config it is given
    # and the model keeps that very object, so a shared config would switch the first model to sdpa too.
    cls, cfg = _config(family)
    torch.manual_seed(0)
    eager = cls._from_config(cfg, attn_implementation="eager").eval()
    _sharpen(eager, SHARPEN[family])
    sdpa = cls._from_config(_config(family)[1], attn_implementation="sdpa").eval()
    sdpa.load_state_dict(eager.state_dict())
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    return eager, sdpa


@pytest.fixture(scope="module", params=["clip", "siglip", "dinov2"])
def towers(request):
    return request.param, *_pair(request.param)


@pytest.fixture(scope="module", params=["clip", "dinov2"])
def cls_towers(request):
    return request.param, *_pair(request.param)


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _norm1(layer: nn.Module) -> nn.Module:
    return layer.norm1 if hasattr(layer, "norm1") else layer.layer_norm1


def _no_hooks(model: nn.Module) -> bool:
    """No hook left on any q_proj/k_proj. (transformers 5 itself installs permanent output-capturing hooks on
    the layers and attention modules the first time hidden states are requested; those are not ours.)"""
    spec = tower_spec(model)
    mods = [m for i in range(spec.num_layers) for m in spec.qk_modules(i)]
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in mods)


def _hook_snapshot(model: nn.Module) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    return {
        name: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks))
        for name, m in model.named_modules()
        if m._forward_hooks or m._forward_pre_hooks
    }


# (a) per-head mean [CLS] attention from the hooks == eager output_attentions of that layer
@pytest.mark.parametrize("score_layer", [-1, -2, 0])
def test_head_mean_cls_attention_matches_eager(cls_towers, pixels, score_layer):
    _, eager, _ = cls_towers
    sig = capture_signals(eager, pixels, score_layer=score_layer)
    with torch.no_grad():
        att = eager(pixels, output_attentions=True).attentions[score_layer]  # (B, H, T, T)
    assert att.shape == (2, HEADS, 65, 65)
    expected = att[:, :, 0, 1:].mean(1)
    torch.testing.assert_close(sig.cls_attn_head_mean, expected, atol=1e-5, rtol=0)
    # the non-trivial attention really varies over patches (otherwise the check would be weak)
    assert float(expected.std()) > 1e-3


# (b) PruMerge form == a literal softmax(q kᵀ / sqrt(C)) row 0; q/k come from the right layer and input
@pytest.mark.parametrize("score_layer", [-1, -2])
def test_prumerge_form_is_literal(cls_towers, pixels, score_layer):
    _, eager, _ = cls_towers
    sig = capture_signals(eager, pixels, score_layer=score_layer)
    c = sig.q.shape[-1]
    literal = torch.softmax(sig.q @ sig.k.transpose(1, 2) / math.sqrt(c), dim=-1)[:, 0, 1:]
    torch.testing.assert_close(sig.cls_attn, literal, atol=1e-6, rtol=1e-5)
    # hooked q/k = that layer's projections of layer_norm1(its input hidden state)
    spec = tower_spec(eager)
    layer = spec.layers[score_layer]
    q_proj, k_proj = spec.qk_modules(score_layer)
    with torch.no_grad():
        hs = eager(pixels, output_hidden_states=True).hidden_states
        x = _norm1(layer)(hs[score_layer - 1])  # layer i reads hidden_states[i]; score_layer -1 reads [-2]
        torch.testing.assert_close(sig.q, q_proj(x), atol=1e-6, rtol=0)
        torch.testing.assert_close(sig.k, k_proj(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(sig.keys, sig.k[:, 1:])
    assert sig.head_mean_keys.shape == (2, 64, c // HEADS)
    torch.testing.assert_close(sig.head_mean_keys, sig.keys.reshape(2, 64, HEADS, c // HEADS).mean(2))


# (c) sdpa gives the same signals as eager
def test_sdpa_equals_eager(towers, pixels):
    _, eager, sdpa = towers
    for kw in ({}, {"score_layer": -2}):
        a, b = capture_signals(eager, pixels, **kw), capture_signals(sdpa, pixels, **kw)
        for name in ("features", "q", "k", "cls_attn", "keys", "head_mean_keys", "last_hidden_state"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-5, rtol=0, msg=name)
        if a.has_cls:
            torch.testing.assert_close(a.cls_attn_head_mean, b.cls_attn_head_mean, atol=1e-5, rtol=0)
            torch.testing.assert_close(a.cls_feature, b.cls_feature, atol=1e-5, rtol=0)
        assert a.grid == b.grid == (8, 8)


# (d) the tower's output is unchanged by the capture and no hook is left behind
def test_output_bit_identical_and_no_hooks_left(towers, pixels):
    _, eager, sdpa = towers
    for model in (eager, sdpa):
        with torch.no_grad():
            model(pixels, output_hidden_states=True)  # let transformers install its own capturing hooks first
            plain = model(pixels).last_hidden_state
        before = _hook_snapshot(model)
        assert _no_hooks(model)
        sig = capture_signals(model, pixels)
        assert torch.equal(sig.last_hidden_state, plain)
        assert _no_hooks(model)
        assert _hook_snapshot(model) == before
        with torch.no_grad():
            assert torch.equal(model(pixels).last_hidden_state, plain)


def test_hooks_removed_when_forward_raises(towers, pixels):
    _, _, sdpa = towers
    spec = tower_spec(sdpa)

    def boom(*_):
        raise RuntimeError("boom")

    handle = spec.layers[-1].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            capture_signals(sdpa, pixels)
    finally:
        handle.remove()
    assert _no_hooks(sdpa)


def test_record_qk_context(towers, pixels):
    _, _, sdpa = towers
    with record_qk(sdpa, layer=-1) as rec:
        assert rec.q is None
        with torch.no_grad():
            sdpa(pixels)
    assert rec.q is not None and rec.k is not None and rec.calls == 1
    assert _no_hooks(sdpa)
    sig = capture_signals(sdpa, pixels)
    assert torch.equal(rec.q, sig.q) and torch.equal(rec.k, sig.k)


# (e) SigLIP pseudo-[CLS] == literal column mean of the eager head-mean attention
@pytest.mark.parametrize("score_layer", [-1, -2])
def test_siglip_pseudo_cls_is_column_mean(pixels, score_layer):
    eager, sdpa = _pair("siglip")
    with torch.no_grad():
        att = eager(pixels, output_attentions=True).attentions[score_layer]  # (B, H, N, N)
    assert att.shape == (2, HEADS, 64, 64)
    expected = att.mean(1).mean(1)  # heads, then over query rows: attention each token receives
    for model in (eager, sdpa):
        sig = capture_signals(model, pixels, score_layer=score_layer)
        assert not sig.has_cls and sig.cls_feature is None and sig.cls_attn_head_mean is None
        assert sig.q.shape == (2, 64, 32) and sig.keys.shape == (2, 64, 32)
        torch.testing.assert_close(sig.cls_attn, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(sig.cls_attn.sum(1), torch.ones(2), atol=1e-5, rtol=0)
    assert float(expected.std()) > 1e-4
    with pytest.raises(ValueError, match="CLS"):
        sig.as_dict("qk")
    assert sig.as_dict("head_mean")["cls_attn"] is sig.cls_attn


# (f) features == hidden_states[feature_layer] without [CLS]
@pytest.mark.parametrize("feature_layer", [-2, -1, 1])
def test_features_are_selected_hidden_state(towers, pixels, feature_layer):
    family, _, sdpa = towers
    sig = capture_signals(sdpa, pixels, feature_layer=feature_layer)
    with torch.no_grad():
        hs = sdpa(pixels, output_hidden_states=True).hidden_states[feature_layer]
    if family == "siglip":
        assert torch.equal(sig.features, hs)
        assert sig.cls_feature is None
    else:
        assert torch.equal(sig.features, hs[:, 1:])
        assert torch.equal(sig.cls_feature, hs[:, 0])
    assert sig.features.shape == (2, 64, 32)
    assert sig.feature_layer == feature_layer


# (g) unsupported towers → ValueError naming the supported classes
@pytest.mark.parametrize(
    "module",
    [
        nn.Linear(4, 4),
        CLIPTextModel(CLIPTextConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=4, max_position_embeddings=16)),
    ],
)
def test_unsupported_tower(module):
    with pytest.raises(ValueError) as err:
        capture_signals(module, torch.zeros(1, 3, 32, 32))
    for name in SUPPORTED_TOWERS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="CLIPVisionModel"):
        tower_spec(module)


def test_wrapper_with_vision_model_is_unwrapped(pixels):
    torch.manual_seed(0)
    wrapped = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY, projection_dim=16)).eval()
    a = capture_signals(wrapped, pixels)
    b = capture_signals(wrapped.vision_model, pixels)
    assert torch.equal(a.cls_attn, b.cls_attn) and torch.equal(a.features, b.features)
    assert _no_hooks(wrapped)


def test_bad_inputs_give_clear_errors(towers):
    family, _, sdpa = towers
    with pytest.raises(ValueError, match="batch dimension"):
        capture_signals(sdpa, torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="channels"):
        capture_signals(sdpa, torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="floating"):
        capture_signals(sdpa, torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError):
        capture_signals(sdpa, [[0.0]])
    with pytest.raises(ValueError, match="out of range"):
        capture_signals(sdpa, torch.zeros(1, 3, 32, 32), score_layer=3)
    with pytest.raises(ValueError, match="out of range"):
        capture_signals(sdpa, torch.zeros(1, 3, 32, 32), feature_layer=-5)
    with pytest.raises(ValueError, match="output_hidden_states"):
        capture_signals(sdpa, torch.zeros(1, 3, 32, 32), output_hidden_states=False)
    if family in ("clip", "siglip"):
        with pytest.raises(ValueError, match="interpolate_pos_encoding"):
            capture_signals(sdpa, torch.zeros(1, 3, 48, 48))
    assert _no_hooks(sdpa)


def test_other_resolutions_and_grid(towers):
    family, _, sdpa = towers
    x = torch.randn(1, 3, 32, 48)
    kw = {} if family == "dinov2" else {"interpolate_pos_encoding": True}
    sig = capture_signals(sdpa, x, **kw)
    assert sig.grid == (8, 12)
    assert sig.features.shape == (1, 96, 32) and sig.cls_attn.shape == (1, 96)
    assert reduce("spatial", sig.features, signals=sig.as_dict(), keep=24).counts == [24]


def test_signals_feed_the_methods(cls_towers, pixels):
    _, _, sdpa = cls_towers
    sig = capture_signals(sdpa, pixels)
    via_attn = reduce("prumerge", sig.features, signals=sig.as_dict())
    via_qk = reduce("prumerge", sig.features, signals=sig.as_dict("qk"))
    assert torch.equal(via_attn.features, via_qk.features) and via_attn.counts == via_qk.counts
    vz = reduce("visionzip", sig.features, signals=sig.as_dict("head_mean"), dominant=8, contextual=4)
    assert vz.counts == [12, 12]  # [CLS] counted among the dominant tokens
    assert set(sig.as_dict()) == {"cls_attn", "keys", "cls_feature", "grid"}
    with pytest.raises(ValueError, match="style"):
        sig.as_dict("nope")
