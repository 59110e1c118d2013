"""``positions="original"``: kept tokens keep their position in the full prompt (1-D RoPE families).

Oracles, computed without the pipeline's position code:
- the full prompt's positions as ``generate`` numbers them: ``cumsum(attention_mask) - 1`` (pads at 0);
- a reduced prefill == the FULL sequence with the dropped visual tokens masked out of attention and the full
  prompt's positions (selection methods: each kept token is its own anchor), sdpa and eager, B=1 and left-padded B=2;
- identity ("none") with original positions == the stock model (its generate numbers the prompt the same way);
- ``generate`` continues from the full prompt's length, seen at the language model's input with a hook;
- LLaVA-NeXT-style families (protected newline / [CLS] tokens): identity is stock, text keeps its positions.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimvlm.pipeline import POSITIONS, apply, prepare
import test_pipeline_families as families
from test_pipeline import make_inputs, model_of, placeholder_mask, reference_kept

ONE_D = ("llava", "llava-qwen2")
QWEN = ("qwen2-vl", "qwen2.5-vl")
FAMILY_CASES = [("llava-next", "image"), ("llava-onevision", "image"), ("llava-onevision", "video"),
                ("video-llava", "video"), ("llava-next-video", "video")]


def full_positions(mask: torch.Tensor) -> torch.Tensor:
    """1-D positions of the full prompt, as ``generate`` builds them from a 2-D mask (pads at 0)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


class PositionSpy:
    """Records the ``position_ids`` each call of the language model receives."""

    def __init__(self, model: nn.Module):
        self.seen: list[torch.Tensor] = []
        self.handle = model.model.language_model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.seen.append(kwargs["position_ids"].clone())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("bsz", [1, 2])
@pytest.mark.parametrize("fam", ONE_D)
def test_identity_with_original_positions_is_stock(fam, bsz):
    """Bit for bit the stock forward and generate, also on a left-padded batch (B=2): nothing moved, so no
    position_ids are passed and the stock model numbers the prompt its own way (forward: 0..L-1, pads included)."""
    model = model_of(fam)
    inputs = make_inputs(model, fam, "image", bsz)
    if bsz == 2:
        assert bool((inputs["attention_mask"][:, 0] == 0).any())  # a left-padded row
    slim = apply(model, "none", positions="original")
    assert "position_ids" not in prepare(model, inputs, "none", positions="original").kwargs
    with torch.no_grad():
        assert torch.equal(slim(**inputs).logits, model(**inputs).logits)
    gen = dict(max_new_tokens=4, do_sample=False)
    assert torch.equal(slim.generate(**inputs, **gen), model.generate(**inputs, **gen))


@pytest.mark.parametrize("fam", ONE_D)
def test_original_positions_of_a_reduced_left_padded_row_shift_by_its_pads(fam):
    """What the docs say of a reduced prompt: the generate numbering (pads not counted), which on a left-padded
    row is the stock forward's 0..L-1 shifted by the row's pads; a method keeping every token in place passes
    none, like the identity."""
    model = model_of(fam)
    inputs = make_inputs(model, fam, "image", 2)
    kw = prepare(model, inputs, "spatial", positions="original", keep=16).kwargs
    mask = kw["attention_mask"]
    pos = kw["position_ids"]
    for b in range(2):
        real = pos[b][mask[b] == 1]
        assert int(real[0]) == 0  # numbered from the first real token, as generate numbers the full prompt
    n = int((inputs["input_ids"][0] == model.config.image_token_id).sum())
    assert "position_ids" not in prepare(model, inputs, "spatial", positions="original", keep=n).kwargs


def _masked_cases():
    for fam in ONE_D:
        for method, opts in (("spatial", {"keep": 16}), ("random", {"ratio": 0.3}), ("sequential", {"keep": 9})):
            for attn in ("sdpa", "eager"):
                for bsz in (1, 2):
                    yield pytest.param(fam, method, opts, attn, bsz, id=f"{fam}-{method}-{attn}-B{bsz}")


@pytest.mark.parametrize("fam,method,opts,attn,bsz", list(_masked_cases()))
def test_original_positions_prefill_equals_masked_full_sequence(fam, method, opts, attn, bsz):
    model = model_of(fam, attn)
    inputs = make_inputs(model, fam, "image", bsz)
    keep, _, _, _ = reference_kept(model, fam, inputs, method, opts)
    full = full_positions(inputs["attention_mask"])
    kw = prepare(model, inputs, method, positions="original", **opts).kwargs
    new_mask = kw["attention_mask"] != 0
    # every kept token (text or visual) keeps its full-prompt position, in order
    for b in range(bsz):
        assert kw["position_ids"][b][new_mask[b]].tolist() == full[b][keep[b]].tolist()
    ref_in = dict(inputs, attention_mask=keep.long(), position_ids=full)
    with torch.no_grad():
        ref = model(**ref_in).logits
        got = model(**kw).logits
    for b in range(bsz):
        a, e = got[b][new_mask[b]], ref[b][keep[b]]
        assert a.shape == e.shape
        d = (a - e).abs().max().item()
        assert d <= 1e-5, f"row {b}: logits of kept positions differ by {d}"


@pytest.mark.parametrize("method,opts", [("prumerge+", {"keep": 16}), ("prumerge", {}), ("tome", {"keep": 16}),
                                         ("aim-merge", {"keep": 16}), ("visionzip", {"keep": 16})])
def test_merged_tokens_take_a_placeholder_position_and_text_keeps_its_own(method, opts):
    model = model_of("llava")
    inputs = make_inputs(model, "llava", "image", 2)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    full = full_positions(mask)
    ph = placeholder_mask(model, ids)
    p = prepare(model, inputs, method, positions="original", **opts)
    kw = p.kwargs
    new_mask = kw["attention_mask"] != 0
    new_ph = placeholder_mask(model, kw["input_ids"]) & new_mask
    for b in range(2):
        # text: exactly the full prompt's text positions, in order
        text_new = kw["position_ids"][b][new_mask[b] & ~new_ph[b]].tolist()
        assert text_new == full[b][(mask[b] != 0) & ~ph[b]].tolist()
        # visual: each merged / kept token sits at one of its image's placeholder positions (its anchor)
        vis_new = kw["position_ids"][b][new_ph[b]]
        allowed = set(full[b][ph[b]].tolist())
        assert set(vis_new.tolist()) <= allowed
        assert int(new_ph[b].sum()) == sum(s.tokens_after for s in p.stats if s.row == b)
        assert int(kw["position_ids"][b][new_mask[b]][-1]) == int(mask[b].sum()) - 1  # the last token keeps its place


@pytest.mark.parametrize("method,opts", [("spatial", {"keep": 16}), ("aim", {"keep": 16}), ("fastv", {})])
def test_generate_continues_from_the_full_prompt_length(method, opts):
    model = model_of("llava")
    inputs = make_inputs(model, "llava", "image", 2)
    n_full = inputs["attention_mask"].sum(1)  # valid tokens of each row's full prompt
    steps = 3
    results = {}
    for positions in POSITIONS:
        slim = apply(model, method, positions=positions, **opts)
        with PositionSpy(model) as spy:
            slim.generate(**inputs, max_new_tokens=steps, do_sample=False, min_new_tokens=steps)
        assert len(spy.seen) == steps  # one prefill, then one call per further token
        n_new = slim.prepare(**inputs)["attention_mask"].sum(1)
        results[positions] = [s[:, -1] for s in spy.seen]
        start = n_full if positions == "original" else n_new
        for t, last in enumerate(results[positions]):
            assert last.tolist() == (start - 1 + t).tolist(), f"{positions}, step {t}"
    if method != "fastv":  # a pre-LLM reduction: the two numberings differ by the dropped tokens
        assert not torch.equal(results["original"][0], results["renumber"][0])


def test_fastv_original_positions_equal_renumbered_ones_in_generate():
    """FastV reduces nothing before the LLM, so the full prompt's positions are generate's own numbering."""
    model = model_of("llava")
    inputs = make_inputs(model, "llava", "image", 2)
    gen = dict(max_new_tokens=4, do_sample=False)
    a = apply(model, "fastv", positions="original").generate(**inputs, **gen)
    b = apply(model, "fastv").generate(**inputs, **gen)
    assert torch.equal(a, b)


@pytest.mark.parametrize("fam", QWEN)
def test_qwen_keeps_its_mrope_positions_and_refuses_renumber(fam):
    model = model_of(fam)
    inputs = make_inputs(model, fam, "image", 2)
    default = prepare(model, inputs, "spatial", ratio=0.5).kwargs["position_ids"]
    original = prepare(model, inputs, "spatial", positions="original", ratio=0.5).kwargs["position_ids"]
    assert torch.equal(default, original)
    assert apply(model, "none").positions == "original"
    with pytest.raises(ValueError, match="M-RoPE"):
        apply(model, "spatial", positions="renumber", ratio=0.5)
    with pytest.raises(ValueError, match="M-RoPE"):
        prepare(model, inputs, "spatial", positions="renumber", ratio=0.5)


def test_unknown_positions_value_is_refused_naming_the_choices():
    model = model_of("llava")
    with pytest.raises(ValueError, match="positions must be one of 'renumber', 'original', got 'first'"):
        apply(model, "spatial", positions="first", keep=4)
    slim = apply(model, "spatial", positions="original", keep=4)
    assert slim.positions == "original" and "positions='original'" in repr(slim)
    assert apply(model, "spatial", keep=4).positions == "renumber"


@pytest.mark.parametrize("fam,modality", [c for c in FAMILY_CASES], ids=[f"{f}-{m}" for f, m in FAMILY_CASES])
def test_next_families_identity_is_stock_and_reduction_keeps_text_positions(fam, modality):
    """LLaVA-NeXT / OneVision / Video-LLaVA (newline rows and per-frame [CLS] are protected tokens)."""
    model = families.model_of(fam)
    inputs = families.make_inputs(model, fam, modality, 2)
    gen = dict(max_new_tokens=3, do_sample=False)
    assert torch.equal(apply(model, "none", positions="original").generate(**inputs, **gen), model.generate(**inputs, **gen))
    mask = inputs["attention_mask"]
    full = full_positions(mask)
    ph = placeholder_mask(model, inputs["input_ids"])
    kw = prepare(model, inputs, "spatial", positions="original", keep=8).kwargs
    new_mask = kw["attention_mask"] != 0
    new_ph = placeholder_mask(model, kw["input_ids"]) & new_mask
    for b in range(2):
        assert kw["position_ids"][b][new_mask[b] & ~new_ph[b]].tolist() == full[b][(mask[b] != 0) & ~ph[b]].tolist()
        assert set(kw["position_ids"][b][new_ph[b]].tolist()) <= set(full[b][ph[b]].tolist())
    with torch.no_grad():
        assert torch.isfinite(model(**kw).logits).all()
