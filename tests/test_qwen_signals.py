"""Qwen2-VL / Qwen2.5-VL attention signals and pre-projector path (slimvlm.models.qwen2_vl).

1. the captured pseudo-[CLS] score (attention received, per LLM token) and keys equal a literal computation
   written here from an independent hook on the last block (its input before ``norm1``), with the RoPE, the
   per-chunk and per-head softmax spelled out (float64 loops; no ``output_attentions``);
2. Qwen2.5-VL: the same computed entirely in the ORIGINAL patch order (patches un-permuted with the
   ``window_index`` recorded from the tower's own call) gives the adapter's per-LLM-token signals; a tower whose
   last block uses window attention is covered too;
3. sdpa and eager towers give the same signals (1e-5) and pre-projector features;
4. ``project(pre)`` is the stock ``get_*_features`` output (bit-identical), mixed image sizes, several items;
5. the hooks are gone afterwards, also when the forward raises;
6. ``apply(model, m)`` for prumerge / prumerge+ / visionzip (fixed budget and default / adaptive): forward,
   greedy and beam search on images and videos; a left-padded B=2 batch gives each prompt's tokens alone;
   the kept count reaches the language model.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimvlm import testing as T
from slimvlm.models import adapter_for
from slimvlm.models.base import SignalRequest
from slimvlm.models.qwen2_vl import Qwen2VLAdapter, capture_tower
from slimvlm.pipeline import apply, prepare

FAMS = ("qwen2-vl", "qwen2.5-vl")
METHODS = ("prumerge", "prumerge+", "visionzip")
PROMPTS = ("Describe the image in detail.", "What?")
#: non-square images of different sizes (LLM grids 6x4, 3x5, 2x3), all in one tower call
MIXED = [(48, 32), (24, 40), (16, 24)]


_MODELS: dict[tuple, nn.Module] = {}


def model_of(fam: str, attn: str = "sdpa") -> nn.Module:
    if (fam, attn) not in _MODELS:
        _MODELS[(fam, attn)] = T.tiny_model(fam, attn_implementation=attn)
    return _MODELS[(fam, attn)]


def windowed_last_block_model() -> nn.Module:
    """Tiny Qwen2.5-VL whose LAST vision block uses window attention (full attention in block 0 only)."""
    if ("windowed",) not in _MODELS:
        import transformers as tf

        cfg = T.tiny_config("qwen2.5-vl")
        cfg.vision_config.fullatt_block_indexes = [0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = tf.Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa")
        model = model.eval()
        gc = model.generation_config
        gc.pad_token_id, gc.eos_token_id, gc.bos_token_id = T.PAD_ID, T.EOS_ID, T.BOS_ID
        _MODELS[("windowed",)] = model
    return _MODELS[("windowed",)]


def inputs_for(model, fam: str, modality: str, bsz: int = 1, mixed: bool = False):
    if modality == "image":
        ipp = [2, 1][:bsz] if mixed or bsz == 2 else [1]
        sizes = MIXED[: sum(ipp)] if mixed else None
        return T.tiny_inputs(model, fam, list(PROMPTS[:bsz]), images_per_prompt=ipp, image_sizes=sizes)
    ipp = [1, 0][:bsz] if bsz == 2 else [0]
    sizes = MIXED[:1] if bsz == 2 and mixed else None
    return T.tiny_inputs(model, fam, list(PROMPTS[:bsz]), images_per_prompt=ipp, video=True, image_sizes=sizes)


def encode(model, inputs, style: str = "full_width"):
    with torch.no_grad():
        return adapter_for(model).encode(inputs, need_pre=True, signals=SignalRequest(-1, style))


def cat_signal(items, name: str, modality: str) -> torch.Tensor:
    return torch.cat([it.signals[name] for it in items if it.modality == modality])


def hook_count(model) -> int:
    visual = model.model.visual
    return sum(
        len(getattr(m, d))
        for m in visual.modules()
        for d in ("_forward_pre_hooks", "_forward_hooks")
    )


# ---------------------------------------------------------------------------------------- literal reference


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def literal_qk(block, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q, k ``(N, H, d)`` (float64, after RoPE) of ``block`` for its input ``x`` (before norm1)."""
    attn = block.attn
    h = block.norm1(x).double()
    n, c = h.shape
    heads = attn.num_heads
    d = c // heads
    qkv = h @ attn.qkv.weight.double().T + attn.qkv.bias.double()
    q, k = qkv[:, :c].reshape(n, heads, d), qkv[:, c : 2 * c].reshape(n, heads, d)
    cos, sin = cos.double()[:, None, :], sin.double()[:, None, :]
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def literal_received(q: torch.Tensor, k: torch.Tensor, bounds: list[int]) -> torch.Tensor:
    """Per token: within its chunk, mean over heads of the mean over queries of softmax(q kᵀ / √d)."""
    n, heads, d = q.shape
    out = torch.zeros(n, dtype=torch.float64)
    for s, e in zip(bounds[:-1], bounds[1:]):
        for hd in range(heads):
            a = (q[s:e, hd] @ k[s:e, hd].T / d**0.5).softmax(-1)  # (L, L), rows = queries
            out[s:e] += a.mean(0) / heads
    return out


class BlockInput:
    """Independent capture: a pre-hook on the last BLOCK (not its attention) and on the merger, plus the
    ``window_index`` the tower passes to its own ``permute_input_for_window_attn``."""

    def __init__(self, model):
        self.visual = model.model.visual
        self.rec: dict = {}

    def __enter__(self):
        rec, visual = self.rec, self.visual

        def on_block(_m, args, kwargs):
            rec["x"] = args[0]
            rec["cu"] = kwargs["cu_seqlens"]
            rec["cos"], rec["sin"] = kwargs["position_embeddings"]

        self.handle = visual.blocks[-1].register_forward_pre_hook(on_block, with_kwargs=True)
        if hasattr(visual, "permute_input_for_window_attn"):
            orig = visual.permute_input_for_window_attn

            def spy(t, window_index, seq_len):
                rec["window_index"] = window_index
                return orig(t, window_index, seq_len)

            visual.permute_input_for_window_attn = spy
        return rec

    def __exit__(self, *exc):
        self.handle.remove()
        self.visual.__dict__.pop("permute_input_for_window_attn", None)


def reference(model, fam: str, inputs, modality: str, *, original_order: bool):
    """(cls_attn per LLM token, prumerge keys per LLM token) for all items of ``modality``, LLM order."""
    pix, grid_key = ("pixel_values", "image_grid_thw") if modality == "image" else ("pixel_values_videos", "video_grid_thw")
    fn = model.model.get_image_features if modality == "image" else model.model.get_video_features
    with torch.no_grad(), BlockInput(model) as rec:
        fn(inputs[pix], inputs[grid_key], return_dict=True)
    block = model.model.visual.blocks[-1]
    x, cos, sin = rec["x"], rec["cos"], rec["sin"]
    wi = rec.get("window_index")
    if original_order and wi is not None:
        # tower slot g*4+j holds original patch window_index[g]*4+j: put every patch back at its place
        src = (wi[:, None] * 4 + torch.arange(4)).flatten()
        x, cos, sin = (torch.empty_like(t).index_copy_(0, src, t) for t in (x, cos, sin))
        # full attention per temporal slice (the block must be a full-attention one)
        sizes = [h * w for t, h, w in inputs[grid_key].tolist() for _ in range(t)]
        bounds = [0] + torch.tensor(sizes).cumsum(0).tolist()
        assert bounds == rec["cu"].tolist(), "the last block must attend per frame for this reference"
    else:
        bounds = rec["cu"].tolist()
    with torch.no_grad():
        q, k = literal_qk(block, x, cos, sin)
    score = literal_received(q, k, bounds).view(-1, 4).sum(-1)
    keys = k.reshape(k.shape[0], -1).view(-1, 4, k.shape[1] * k.shape[2]).mean(1)
    if not original_order and wi is not None:
        rev = torch.argsort(wi)
        score, keys = score[rev], keys[rev]
    return score, keys, bounds


# ============================================================================================ 1-2. signals


@pytest.mark.parametrize("modality", ["image", "video"])
@pytest.mark.parametrize("fam", FAMS)
def test_signals_equal_literal_attention(fam, modality):
    model = model_of(fam)
    inputs = inputs_for(model, fam, modality, bsz=2, mixed=True)
    items = encode(model, inputs)
    score, keys, bounds = reference(model, fam, inputs, modality, original_order=False)
    got = cat_signal(items, "cls_attn", modality)
    assert got.shape == score.shape
    torch.testing.assert_close(got.double(), score, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(cat_signal(items, "keys", modality).double(), keys, rtol=1e-5, atol=1e-5)
    # every chunk (temporal slice) distributes one unit of received attention over its LLM tokens
    per_chunk = [(e - s) // 4 for s, e in zip(bounds[:-1], bounds[1:])]
    sums = torch.stack([c.sum() for c in got.split(per_chunk)])
    torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-5)
    # head-mean style (VisionZip's): same score, keys averaged over heads
    vz = encode(model, inputs, style="head_mean")
    heads = model.model.visual.blocks[-1].attn.num_heads
    torch.testing.assert_close(cat_signal(vz, "cls_attn", modality), got, rtol=0, atol=0)
    hm = keys.view(keys.shape[0], heads, -1).mean(1)
    torch.testing.assert_close(cat_signal(vz, "keys", modality).double(), hm, rtol=1e-5, atol=1e-5)
    for it in items:
        t, (gh, gw) = it.frames, it.grid
        assert it.num_tokens == t * gh * gw
        assert it.signals["cls_attn"].shape == (it.num_tokens,)
        assert "cls_feature" not in it.signals


@pytest.mark.parametrize("modality", ["image", "video"])
def test_qwen25_unpermutation_in_original_order(modality):
    """Everything recomputed in the ORIGINAL patch order (no argsort anywhere) gives the adapter's signals."""
    fam = "qwen2.5-vl"
    model = model_of(fam)
    inputs = inputs_for(model, fam, modality, bsz=2, mixed=True)
    items = encode(model, inputs)
    score, keys, _ = reference(model, fam, inputs, modality, original_order=True)
    torch.testing.assert_close(cat_signal(items, "cls_attn", modality).double(), score, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(cat_signal(items, "keys", modality).double(), keys, rtol=1e-5, atol=1e-5)
    # the permutation is not trivial for these sizes (otherwise the test would prove nothing)
    with torch.no_grad(), BlockInput(model) as rec:
        if modality == "image":
            model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        else:
            model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
    wi = rec["window_index"]
    assert not torch.equal(wi, torch.arange(wi.numel()))


def test_qwen25_windowed_last_block_uses_its_windows():
    model = windowed_last_block_model()
    fam = "qwen2.5-vl"
    inputs = inputs_for(model, fam, "image", bsz=2, mixed=True)
    items = encode(model, inputs)
    score, keys, bounds = reference(model, fam, inputs, "image", original_order=False)
    n_frames = len(inputs["image_grid_thw"])
    assert len(bounds) - 1 > n_frames  # windows, not frames
    torch.testing.assert_close(cat_signal(items, "cls_attn", "image").double(), score, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(cat_signal(items, "keys", "image").double(), keys, rtol=1e-5, atol=1e-5)
    for it in items:  # the pre path is exact here too
        assert torch.equal(adapter_for(model).project(it, it.pre), it.tokens)


# ============================================================================================ 3. sdpa == eager


@pytest.mark.parametrize("modality", ["image", "video"])
@pytest.mark.parametrize("fam", FAMS)
def test_sdpa_and_eager_towers_give_the_same_signals(fam, modality):
    sdpa, eager = model_of(fam, "sdpa"), model_of(fam, "eager")
    assert eager.model.visual.config._attn_implementation == "eager"
    assert sdpa.model.visual.config._attn_implementation == "sdpa"
    inputs = inputs_for(sdpa, fam, modality, bsz=2, mixed=True)
    a, b = encode(sdpa, inputs), encode(eager, inputs)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for name in ("cls_attn", "keys"):
            torch.testing.assert_close(x.signals[name], y.signals[name], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x.pre, y.pre, rtol=1e-5, atol=1e-5)


# ============================================================================================ 4. project(pre)


@pytest.mark.parametrize("modality", ["image", "video"])
@pytest.mark.parametrize("fam", FAMS)
def test_project_pre_is_the_stock_tokens(fam, modality):
    model = model_of(fam)
    inputs = inputs_for(model, fam, modality, bsz=2, mixed=True)
    adapter = adapter_for(model)
    items = encode(model, inputs)
    stock = T.encode_visual(model, inputs)
    want = [t for m in ("image", "video") if m in stock for t in stock[m].pooler_output]
    assert len(items) == len(want)
    c = model.config.vision_config
    width = (c.embed_dim if fam == "qwen2-vl" else c.hidden_size) * c.spatial_merge_size**2
    for it, w in zip(items, want):
        assert torch.equal(it.tokens, w)
        assert it.pre.shape == (w.shape[0], width)
        with torch.no_grad():
            got = adapter.project(it, it.pre)
        assert torch.equal(got, w), f"max diff {(got - w).abs().max().item()}"
        with torch.no_grad():  # a subset (as after a reduction) projects to the same rows
            sub = adapter.project(it, it.pre[1::3])
        torch.testing.assert_close(sub, w[1::3], rtol=0, atol=1e-6)
    # no signals, no pre: the plain stock path, no hooks
    with torch.no_grad():
        plain = adapter.encode(inputs, need_pre=False, signals=None)
    assert all(it.pre is None and not it.signals for it in plain)
    assert all(torch.equal(it.tokens, w) for it, w in zip(plain, want))


# ============================================================================================ 5. hooks


@pytest.mark.parametrize("fam", FAMS)
def test_hooks_are_removed_also_on_errors(fam):
    model = model_of(fam)
    visual = model.model.visual
    before = hook_count(model)
    inputs = inputs_for(model, fam, "image")
    encode(model, inputs)
    prepare(model, inputs, "prumerge+")
    assert hook_count(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with capture_tower(visual):
            assert hook_count(model) == before + 3
            raise RuntimeError("boom")
    assert hook_count(model) == before

    # an error inside the tower forward while the adapter's hooks are on
    def fail(*_a, **_k):
        raise RuntimeError("tower failed")

    h = visual.blocks[-1].mlp.register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="tower failed"):
            encode(model, inputs)
    finally:
        h.remove()
    assert hook_count(model) == before


def test_adapter_declares_attention_signals():
    assert Qwen2VLAdapter.attention_signals is True and Qwen2VLAdapter.has_cls is False
    for fam in FAMS:
        for m in METHODS:
            apply(model_of(fam), m)  # accepted up front


# ============================================================================================ 6. end to end


def _cases():
    for fam in FAMS:
        for modality in ("image", "video"):
            for m in METHODS:
                yield pytest.param(fam, modality, m, {"ratio": 0.5}, id=f"{fam}-{modality}-{m}-ratio0.5")
                yield pytest.param(fam, modality, m, {}, id=f"{fam}-{modality}-{m}-default")


def expected_after(method: str, opts: dict, before: int, frames: int) -> int | None:
    per_frame = before // frames
    if method == "visionzip":
        k = per_frame if not opts else max(1, min(per_frame, int(per_frame * opts["ratio"])))  # 54+10 ≥ 16
        return k * frames
    if not opts:
        return None  # adaptive
    return max(1, min(per_frame, int(per_frame * opts["ratio"]))) * frames  # the summary token is one of them


@pytest.mark.parametrize("fam,modality,method,opts", list(_cases()))
def test_apply_forward_generate_batch_and_counts(fam, modality, method, opts):
    model = model_of(fam)
    batch = inputs_for(model, fam, modality, bsz=2, mixed=True)
    slim = apply(model, method, **opts)
    kw = slim.prepare(**batch)
    stats = list(slim.last_stats)
    for s, it in zip(stats, encode(model, batch)):
        want = expected_after(method, opts, s.tokens_before, it.frames)
        if want is None:
            assert 1 <= s.tokens_after <= s.tokens_before + it.frames
        else:
            assert s.tokens_after == want, (s, want)
    assert any(s.tokens_after < s.tokens_before for s in stats) or (method == "visionzip" and not opts)
    ids, mask = kw["input_ids"], kw["attention_mask"]
    length = ids.shape[1]

    # the kept count reaches the language model (forward and generate's prefill)
    ph = torch.tensor([T.QWEN_IMAGE_ID, T.QWEN_VIDEO_ID])
    text = ((batch["attention_mask"] != 0) & ~torch.isin(batch["input_ids"], ph)).sum(1)
    kept = torch.zeros(2, dtype=torch.long)
    for s in stats:
        kept[s.row] += s.tokens_after
    assert mask.sum(1).tolist() == (text + kept).tolist()
    assert torch.isin(ids, ph).sum(1).tolist() == kept.tolist()
    seen = []

    def on_lm(_m, _a, kwargs):
        seen.append((kwargs["inputs_embeds"].shape[1], kwargs.get("attention_mask")))

    h = model.model.language_model.register_forward_pre_hook(on_lm, with_kwargs=True)
    try:
        with torch.no_grad():
            logits = slim(**batch).logits
        greedy = slim.generate(**batch, max_new_tokens=4, do_sample=False)
    finally:
        h.remove()
    assert logits.shape[:2] == (2, length) and bool(torch.isfinite(logits).all())
    for n, am in (seen[0], seen[1]):
        assert n == length
        real = n - (am == 0).sum(1) if isinstance(am, torch.Tensor) and am.dim() == 2 else torch.full((2,), n)
        assert real.tolist() == (text + kept).tolist()
    assert torch.equal(greedy[:, :length], ids) and greedy.shape[1] <= length + 4
    beam = slim.generate(**batch, max_new_tokens=4, num_beams=2, do_sample=False)
    assert beam.shape[0] == 2 and torch.equal(beam[:, :length], ids)

    # batched == each prompt alone (greedy tokens, reduced prompt, stats)
    ipp = [2, 1] if modality == "image" else [1, 0]
    sizes = MIXED[: sum(ipp)]
    img_rows = [r for r, n in enumerate(ipp) for _ in range(n)]
    img_chunks = list(batch["pixel_values"].split(batch["image_grid_thw"].prod(-1).tolist()))
    vid_chunks = (
        list(batch["pixel_values_videos"].split(batch["video_grid_thw"].prod(-1).tolist())) if modality == "video" else []
    )
    for row in range(2):
        mine = [i for i, r in enumerate(img_rows) if r == row]
        alone = T.tiny_inputs(
            model, fam, [PROMPTS[row]], images_per_prompt=[ipp[row]], video=modality == "video",
            image_sizes=[sizes[i] for i in mine] or None,
        )
        valid = batch["attention_mask"][row] != 0
        assert torch.equal(alone["input_ids"][0], batch["input_ids"][row][valid])
        if mine:
            alone["pixel_values"] = torch.cat([img_chunks[i] for i in mine])
            assert torch.equal(alone["image_grid_thw"], batch["image_grid_thw"][mine])
        if vid_chunks:
            alone["pixel_values_videos"] = vid_chunks[row]
        ref = slim.generate(**alone, max_new_tokens=4, do_sample=False)
        assert [(s.modality, s.tokens_before, s.tokens_after) for s in slim.last_stats] == [
            (s.modality, s.tokens_before, s.tokens_after) for s in stats if s.row == row
        ]
        a_len = slim.prepare(**alone)["input_ids"].shape[1]
        assert torch.equal(greedy[row, :length][mask[row] != 0], ref[0, :a_len])
        new_b = greedy[row, length:].tolist()
        new_a = ref[0, a_len:].tolist()
        assert new_b[: len(new_a)] == new_a and all(t == T.PAD_ID for t in new_b[len(new_a) :])
