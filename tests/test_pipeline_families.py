"""The pipeline (slimvlm.apply) on the LLaVA-NeXT family adapters: LLaVA-NeXT, LLaVA-OneVision, Video-LLaVA
and LLaVA-NeXT-Video, images and videos, on the tiny offline models of slimvlm.testing.

1. identity ("none") is bit-identical to the stock model (logits, greedy tokens), B=1 and a left-padded B=2
   with different images per prompt; the adapters' pre-projector encoders give the stock tokens bit for bit;
2. every registered method runs forward, greedy, beam search and sampling (num_return_sequences=2) with a
   fixed budget, PruMerge / PruMerge+ also adaptive; kept counts follow the budget per frame;
3. a left-padded batch gives, row by row, the greedy tokens of each prompt run alone (clean mode);
4. the language model's prefill is text + kept tokens;
5. protected tokens survive: LLaVA-NeXT / OneVision ``image_newline`` rows (equal to
   ``model.model.image_newline`` exactly) and Video-LLaVA's per-frame [CLS];
6. videos are reduced per frame: kept = Σ over frames, frames do not influence each other;
7. OneVision multi-image (``batch_num_images``) and ``anyres_max_9`` downscaled images; clear errors.

Oracles come from the stock ``get_*_features`` and ``slimvlm.methods.reduce``, not from the adapters.
"""

from __future__ import annotations

import pytest
import torch

from slimvlm.methods import get as get_method
from torch import nn

from slimvlm import testing as T
from slimvlm.methods import available, make_config, reduce
from slimvlm.models import adapter_for
from slimvlm.models.base import SignalRequest
from slimvlm.pipeline import apply, reduce_item

CASES = [
    ("llava-next", "image"),
    ("llava-onevision", "image"),
    ("llava-onevision", "video"),
    ("video-llava", "image"),
    ("video-llava", "video"),
    ("llava-next-video", "image"),
    ("llava-next-video", "video"),
]
CASE_IDS = [f"{f}-{m}" for f, m in CASES]
VIDEO_CASES = [c for c in CASES if c[1] == "video"]
ANYRES = ("llava-next", "llava-onevision", "llava-next-video")
PROMPTS = ("Describe the image in detail.", "What?")
KEEP = {"keep": 8}
GEN = dict(max_new_tokens=4)


_MODELS: dict[str, nn.Module] = {}


def model_of(fam: str) -> nn.Module:
    if fam not in _MODELS:
        _MODELS[fam] = T.tiny_model(fam)
    return _MODELS[fam]


def images_per_prompt(modality: str, bsz: int) -> list[int]:
    if modality == "image":
        return [1] * bsz
    return [0] if bsz == 1 else [1, 0]  # video: row 0 has an image and a video, row 1 a video only


def make_inputs(model, fam: str, modality: str, bsz: int, **kw):
    ipp = images_per_prompt(modality, bsz)
    if fam in ANYRES and "image_sizes" not in kw and sum(ipp):
        kw["image_sizes"] = [(64, 40), (32, 32)][: sum(ipp)]  # different sizes → different token counts
    return T.tiny_inputs(model, fam, list(PROMPTS[:bsz]), images_per_prompt=ipp, video=modality == "video", **kw)


def stock_items(model, inputs) -> list[tuple[str, torch.Tensor, int]]:
    """(modality, tokens (n, D), frames) per image / video, in scatter order, from the stock encoders."""
    enc = T.encode_visual(model, inputs)
    fam = T.family_of(model)
    out = []
    for modality in ("image", "video"):
        if modality not in enc:
            continue
        pooled = enc[modality].pooler_output
        if modality == "video":
            v, f = inputs["pixel_values_videos"].shape[:2]
            if fam == "video-llava":  # (V·F, 1 + p, D): one entry per frame
                pooled = pooled.reshape(v, -1, pooled.shape[-1])
            out += [(modality, t, f) for t in pooled]
        else:
            out += [(modality, t, 1) for t in pooled]
    return out


def protected_rows(model, modality: str, tokens: torch.Tensor, frames: int) -> torch.Tensor:
    """Bool mask of the tokens the pipeline must keep: LLaVA-NeXT / OneVision newlines (rows equal to
    image_newline) and Video-LLaVA's per-frame [CLS] (first token of each frame)."""
    fam = T.family_of(model)
    if fam == "video-llava":
        mask = torch.zeros(tokens.shape[0], dtype=torch.bool)
        if modality == "video":
            mask[:: tokens.shape[0] // frames] = True
        return mask
    if fam == "llava-next-video" and modality == "video":
        return torch.zeros(tokens.shape[0], dtype=torch.bool)
    return (tokens == model.model.image_newline.to(tokens.dtype)).all(-1)


def expected_after(method: str, opts: dict, n_free_per_frame: int, frames: int, n_protected: int) -> int | None:
    """None when adaptive, or temporal (a per-video budget split by the method's own rule, whose counts
    tests/test_<method>.py check)."""
    if method == "none":
        return n_free_per_frame * frames + n_protected
    if not opts or get_method(method).temporal:
        return None
    k = min(opts["keep"], n_free_per_frame)  # every token counts, PruMerge's summary token included
    return k * frames + n_protected


class PrefillCapture:
    """Forward pre-hook on the language model: records the first call's inputs_embeds / attention_mask."""

    def __init__(self, model):
        self.model = model
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def __enter__(self):
        def hook(_m, _args, kwargs):
            self.calls.append((kwargs["inputs_embeds"].detach().clone(), kwargs.get("attention_mask")))

        self.handle = self.model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def injected_per_item(model, kw: dict, embeds: torch.Tensor, stats) -> list[torch.Tensor]:
    """The rows the stock forward scattered into each item's placeholders (stats order)."""
    ph = T.placeholder_token_ids(model)
    ids = kw["input_ids"]
    out = []
    for modality in ("image", "video"):
        rows = [s for s in stats if s.modality == modality]
        if not rows:
            continue
        flat = embeds.reshape(-1, embeds.shape[-1])[(ids == ph[modality]).flatten()]
        for part in flat.split([s.tokens_after for s in rows]):
            out.append(part)
    return out


# ============================================================================================ 1. identity


@pytest.mark.parametrize("bsz", [1, 2])
@pytest.mark.parametrize("fam,modality", CASES, ids=CASE_IDS)
def test_identity_is_bit_identical_to_stock(fam, modality, bsz):
    model = model_of(fam)
    inputs = make_inputs(model, fam, modality, bsz)
    if bsz == 2:
        assert bool((inputs["attention_mask"][:, 0] == 0).any()), "B=2 must be left padded"
    slim = apply(model, "none")
    with torch.no_grad():
        stock = model(**inputs).logits
        got = slim(**inputs).logits
    assert torch.equal(got, stock), f"max diff {(got - stock).abs().max().item()}"
    items = stock_items(model, inputs)
    assert [(s.modality, s.tokens_before, s.tokens_after) for s in slim.last_stats] == [
        (m, t.shape[0], t.shape[0]) for m, t, _ in items
    ]
    stock_tokens = model.generate(**inputs, **GEN, do_sample=False)
    slim_tokens = slim.generate(**inputs, **GEN, do_sample=False)
    assert torch.equal(slim_tokens, stock_tokens)


@pytest.mark.parametrize("fam,modality", CASES, ids=CASE_IDS)
def test_pre_projector_encoder_gives_stock_tokens(fam, modality):
    """The tower-signal path (PruMerge / VisionZip) re-encodes the pixels itself: same tokens bit for bit, and
    the pre-projector features project onto them (OneVision videos reduce post-projector tokens)."""
    model = model_of(fam)
    inputs = make_inputs(model, fam, modality, 2)
    adapter = adapter_for(model)
    items = stock_items(model, inputs)
    for req in (SignalRequest(-1, "full_width"), SignalRequest(-2, "head_mean")):
        with torch.no_grad():
            enc = adapter.encode(inputs, need_pre=True, signals=req)
        assert len(enc) == len(items)
        for it, (m, tokens, frames) in zip(enc, items):
            assert it.modality == m and it.frames == frames
            assert torch.equal(it.tokens, tokens)
            prot = protected_rows(model, m, tokens, frames)
            assert torch.equal(it.protected if it.protected is not None else torch.zeros_like(prot), prot)
            with torch.no_grad():
                proj = adapter.project(it, it.pre[~prot])
            torch.testing.assert_close(proj, tokens[~prot], rtol=0, atol=1e-6)
            assert it.signals["cls_attn"].shape == (tokens.shape[0],)
            assert it.signals["keys"].shape[0] == tokens.shape[0]
            assert bool((it.signals["cls_attn"][~prot] >= 0).all())


# ============================================================================================ 2. every method


def _method_cases():
    for fam, modality in CASES:
        for method in [m for m in available() if get_method(m).stage != "in_llm"]:  # AIM/FastV: test_aim_fastv.py
            opts = {} if method == "none" else KEEP
            yield pytest.param(fam, modality, method, opts, id=f"{fam}-{modality}-{method}")
            if method in ("prumerge", "prumerge+"):
                yield pytest.param(fam, modality, method, {}, id=f"{fam}-{modality}-{method}-adaptive")


@pytest.mark.parametrize("fam,modality,method,opts", list(_method_cases()))
def test_every_method_forward_and_generate(fam, modality, method, opts):
    model = model_of(fam)
    inputs = make_inputs(model, fam, modality, 2)
    items = stock_items(model, inputs)
    slim = apply(model, method, **opts)
    with PrefillCapture(model) as cap, torch.no_grad():
        logits = slim(**inputs).logits
    stats = list(slim.last_stats)
    kw = slim.prepare(**inputs)
    ids, mask = kw["input_ids"], kw["attention_mask"]
    b, length = ids.shape
    assert logits.shape[:2] == (b, length) and bool(torch.isfinite(logits).all())

    # kept counts follow the budget, per frame, protected tokens on top
    assert [(s.modality, s.tokens_before) for s in stats] == [(m, t.shape[0]) for m, t, _ in items]
    for s, (m, tokens, frames) in zip(stats, items):
        n_prot = int(protected_rows(model, m, tokens, frames).sum())
        want = expected_after(method, opts, (tokens.shape[0] - n_prot) // frames, frames, n_prot)
        if want is None:
            assert n_prot + frames <= s.tokens_after <= tokens.shape[0] + frames
        else:
            assert s.tokens_after == want, (s, want)

    # 4. prefill = text + kept tokens, row by row
    embeds, lm_mask = cap.calls[0]
    assert embeds.shape[1] == length
    orig = inputs["attention_mask"].bool()
    ph = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
    for tid in T.placeholder_token_ids(model).values():
        ph |= inputs["input_ids"] == tid
    text = (orig & ~ph).sum(1)
    kept = torch.zeros(b, dtype=torch.long)
    for s in stats:
        kept[s.row] += s.tokens_after
    assert torch.equal(lm_mask.sum(1).cpu() if lm_mask is not None else torch.full((b,), length), text + kept)

    with PrefillCapture(model) as cap:
        greedy = slim.generate(**inputs, **GEN, do_sample=False)
    assert greedy.shape[0] == b and torch.equal(greedy[:, :length], ids)
    embeds, lm_mask = cap.calls[0]  # generate's prefill: the same reduced sequence
    assert embeds.shape[1] == length and torch.equal(lm_mask.sum(1).cpu(), text + kept)
    beam = slim.generate(**inputs, **GEN, num_beams=2, do_sample=False)
    assert beam.shape[0] == b and torch.equal(beam[:, :length], ids)
    torch.manual_seed(0)
    s1 = slim.generate(**inputs, **GEN, do_sample=True, num_return_sequences=2)
    torch.manual_seed(0)
    s2 = slim.generate(**inputs, **GEN, do_sample=True, num_return_sequences=2)
    assert s1.shape[0] == 2 * b and torch.equal(s1[:, :length], ids.repeat_interleave(2, 0))
    assert torch.equal(s1, s2)


# ============================================================================================ 3. batch == alone


def _alone(model, fam: str, modality: str, batch, row: int):
    """Row ``row`` of the batched inputs as a single-prompt input (padding stripped, its pixels only)."""
    keep = batch["attention_mask"][row].bool()
    alone = {"input_ids": batch["input_ids"][row][keep][None], "attention_mask": batch["attention_mask"][row][keep][None]}
    ipp = images_per_prompt(modality, 2)
    first = sum(ipp[:row])
    sel = list(range(first, first + ipp[row]))
    if sel:
        alone["pixel_values"] = batch["pixel_values"][sel]
        if "image_sizes" in batch:
            alone["image_sizes"] = batch["image_sizes"][sel]
        if "batch_num_images" in batch:
            alone["batch_num_images"] = batch["batch_num_images"][row : row + 1]
    if batch.get("pixel_values_videos") is not None:
        alone["pixel_values_videos"] = batch["pixel_values_videos"][row : row + 1]
    return alone


def _batch_cases():
    for fam, modality in CASES:
        for method in [m for m in available() if get_method(m).stage != "in_llm"]:  # AIM/FastV: test_aim_fastv.py
            yield pytest.param(fam, modality, method, {} if method == "none" else KEEP, id=f"{fam}-{modality}-{method}")
        for method in ("prumerge", "prumerge+"):
            yield pytest.param(fam, modality, method, {}, id=f"{fam}-{modality}-{method}-adaptive")


@pytest.mark.parametrize("fam,modality,method,opts", list(_batch_cases()))
def test_batched_equals_each_prompt_alone(fam, modality, method, opts):
    model = model_of(fam)
    batch = make_inputs(model, fam, modality, 2)
    slim = apply(model, method, **opts)
    out = slim.generate(**batch, **GEN, do_sample=False)
    batch_stats = list(slim.last_stats)
    length = slim.prepare(**batch)["input_ids"].shape[1]
    for row in range(2):
        alone = _alone(model, fam, modality, batch, row)
        single = slim.generate(**alone, **GEN, do_sample=False)
        assert [(s.modality, s.tokens_before, s.tokens_after) for s in slim.last_stats] == [
            (s.modality, s.tokens_before, s.tokens_after) for s in batch_stats if s.row == row
        ]
        new_alone = single[0, slim.prepare(**alone)["input_ids"].shape[1] :].tolist()
        new_batch = out[row, length:].tolist()
        assert new_batch[: len(new_alone)] == new_alone
        assert all(t == T.PAD_ID for t in new_batch[len(new_alone) :])


# ============================================================================================ 5. protected tokens


PROTECTED_CASES = [c for c in CASES if not (c[0] == "video-llava" and c[1] == "image") and c != ("llava-next-video", "video")]


@pytest.mark.parametrize("method,opts", [("random", KEEP), ("prumerge", KEEP), ("visionzip", KEEP), ("pool", KEEP), ("prumerge+", {})])
@pytest.mark.parametrize("fam,modality", PROTECTED_CASES, ids=[f"{f}-{m}" for f, m in PROTECTED_CASES])
def test_protected_tokens_survive_at_their_places(fam, modality, method, opts):
    model = model_of(fam)
    inputs = make_inputs(model, fam, modality, 2)
    items = stock_items(model, inputs)
    slim = apply(model, method, **opts)
    kw = slim.prepare(**inputs)
    with PrefillCapture(model) as cap, torch.no_grad():
        slim(**inputs)
    injected = injected_per_item(model, kw, cap.calls[0][0], slim.last_stats)
    # the pipeline's own per-item result, with the source position of every injected token
    adapter = adapter_for(model)
    info_needs_tower = method in ("prumerge", "prumerge+", "visionzip")
    req = SignalRequest(-2, "head_mean") if method == "visionzip" else SignalRequest(-1, "full_width")
    with torch.no_grad():
        enc = adapter.encode(inputs, need_pre=info_needs_tower, signals=req if info_needs_tower else None)
        reduced = [reduce_item(it, method, make_config(method, **opts), adapter, info_needs_tower) for it in enc]
    newline = getattr(model.model, "image_newline", None)
    for (m, tokens, frames), got, (red, src) in zip(items, injected, reduced):
        prot = protected_rows(model, m, tokens, frames)
        n_prot = int(prot.sum())
        assert torch.equal(got, red)
        if n_prot == 0:  # Video-LLaVA's images (next to its videos) have nothing to protect
            assert (fam, m) == ("video-llava", "image")
            continue
        assert bool((src[1:] >= src[:-1]).all()), "tokens stay in source order"
        at_prot = prot[src]
        assert int(at_prot.sum()) == n_prot, "every protected token is injected once"
        assert torch.equal(got[at_prot], tokens[prot])
        if fam == "video-llava":  # per-frame [CLS] first in each frame
            assert bool(at_prot[0])
        else:  # newline rows equal image_newline exactly; the item ends with a newline
            assert torch.equal(got[at_prot], newline[None].expand(n_prot, -1).to(got.dtype))
            assert bool(at_prot[-1])
            assert int((got == newline).all(-1).sum()) >= n_prot


# ============================================================================================ 6. per frame


@pytest.mark.parametrize("fam,modality", VIDEO_CASES, ids=[f"{f}-{m}" for f, m in VIDEO_CASES])
def test_video_sequential_keeps_the_first_tokens_of_every_frame(fam, modality):
    model = model_of(fam)
    inputs = make_inputs(model, fam, modality, 1)
    slim = apply(model, "sequential", keep=3)
    kw = slim.prepare(**inputs)
    with PrefillCapture(model) as cap, torch.no_grad():
        slim(**inputs)
    (got,) = injected_per_item(model, kw, cap.calls[0][0], slim.last_stats)
    ((_, tokens, frames),) = stock_items(model, inputs)
    prot = protected_rows(model, "video", tokens, frames)
    free = tokens[~prot].reshape(frames, -1, tokens.shape[-1])
    parts = []
    for f in range(frames):
        if fam == "video-llava":
            parts.append(tokens[prot][f : f + 1])  # the frame's [CLS]
        parts.append(free[f, :3])
    if fam == "llava-onevision":
        parts.append(tokens[prot])  # one newline at the end of the video
    assert torch.equal(got, torch.cat(parts))


@pytest.mark.parametrize("fam,modality", VIDEO_CASES, ids=[f"{f}-{m}" for f, m in VIDEO_CASES])
def test_video_adaptive_count_is_the_sum_over_frames(fam, modality):
    model = model_of(fam)
    inputs = make_inputs(model, fam, modality, 1)
    slim = apply(model, "prumerge")
    with torch.no_grad():
        slim(**inputs)
    (stat,) = slim.last_stats
    with torch.no_grad():
        (it,) = adapter_for(model).encode(inputs, need_pre=True, signals=SignalRequest(-1, "full_width"))
    free = ~it.protected if it.protected is not None else torch.ones(it.num_tokens, dtype=torch.bool)
    f = it.frames
    feats = it.pre[free].reshape(f, -1, it.pre.shape[-1])
    attn = it.signals["cls_attn"][free].reshape(f, -1)
    keys = it.signals["keys"][free].reshape(f, feats.shape[1], -1)
    per_frame = [reduce("prumerge", feats[i : i + 1], {"cls_attn": attn[i : i + 1], "keys": keys[i : i + 1]}).counts[0] for i in range(f)]
    assert stat.tokens_after == sum(per_frame) + int((~free).sum())


@pytest.mark.parametrize("method,opts", [("tome", KEEP), ("prumerge", {}), ("visionzip", KEEP)])
@pytest.mark.parametrize("fam,modality", VIDEO_CASES, ids=[f"{f}-{m}" for f, m in VIDEO_CASES])
def test_video_frames_are_reduced_independently(fam, modality, method, opts):
    """Changing one frame's pixels changes only that frame's reduced tokens."""
    model = model_of(fam)
    inputs = make_inputs(model, fam, modality, 1)
    other = dict(inputs)
    pvv = inputs["pixel_values_videos"].clone()
    pvv[0, 1] = torch.randn(pvv.shape[2:], generator=torch.Generator().manual_seed(7))
    other["pixel_values_videos"] = pvv
    adapter = adapter_for(model)
    cls = method in ("prumerge", "visionzip")
    req = SignalRequest(-2, "head_mean") if method == "visionzip" else SignalRequest(-1, "full_width")
    outs = []
    for inp in (inputs, other):
        with torch.no_grad():
            (it,) = adapter.encode(inp, need_pre=cls, signals=req if cls else None)
            tokens, src = reduce_item(it, method, make_config(method, **opts), adapter, cls)
        n_per_frame = (it.num_tokens - (0 if it.protected is None else int(it.protected.sum()))) // it.frames
        stride = n_per_frame + (1 if fam == "video-llava" else 0)
        frame_of = src // stride if fam != "llava-onevision" else torch.clamp(src // n_per_frame, max=it.frames - 1)
        outs.append((tokens, frame_of))
    (t0, f0), (t1, f1) = outs
    for f in (0, 2, 3):
        torch.testing.assert_close(t0[f0 == f], t1[f1 == f], rtol=0, atol=1e-6)
    changed = t0[f0 == 1], t1[f1 == 1]
    assert changed[0].shape != changed[1].shape or not torch.equal(*changed)


# ============================================================================================ 7. family specifics


def test_onevision_multi_image_respects_batch_num_images():
    model = model_of("llava-onevision")
    inputs = T.tiny_inputs(model, "llava-onevision", ["a", "bb"], images_per_prompt=[2, 1], image_sizes=(64, 64))
    assert inputs["batch_num_images"].tolist() == [2, 1]
    slim = apply(model, "none")
    with torch.no_grad():
        assert torch.equal(slim(**inputs).logits, model(**inputs).logits)
    assert [s.tokens_before for s in slim.last_stats] == [65, 65, T.num_visual_tokens(model, image_size=(64, 64))]
    for method, opts in (("prumerge", KEEP), ("pool", KEEP), ("visionzip", KEEP)):
        slim = apply(model, method, **opts)
        out = slim.generate(**inputs, **GEN, do_sample=False)
        assert out.shape[0] == 2
        # base-tile-only images keep their square grid and their one newline
        assert [s.tokens_after for s in slim.last_stats][:2] == [8 + 1] * 2
    no_bni = {k: v for k, v in inputs.items() if k != "batch_num_images"}
    with pytest.raises(ValueError, match="batch_num_images"):
        apply(model, "none").generate(**no_bni, **GEN)


def test_onevision_downscaled_image_reduces_llm_tokens():
    """anyres_max_9 bilinear downscale: the image has no pre-projector features; PruMerge / VisionZip reduce its
    LLM-width tokens with signals resampled like the tokens."""
    model = model_of("llava-onevision")
    inputs = T.tiny_inputs(model, "llava-onevision", ["a"], image_sizes=(128, 96))
    adapter = adapter_for(model)
    with torch.no_grad():
        (it,) = adapter.encode(inputs, need_pre=True, signals=SignalRequest(-1, "full_width"))
    assert it.projected and torch.equal(it.pre, it.tokens)
    (_, tokens, _), = stock_items(model, inputs)
    assert torch.equal(it.tokens, tokens)
    n_tiles = int(adapter.tile_counts(inputs)[0])
    # each tile's [CLS] attention sums to 1; resampling keeps the mass
    assert abs(float(it.signals["cls_attn"].sum()) - n_tiles) < 0.05
    slim = apply(model, "none")
    with torch.no_grad():
        assert torch.equal(slim(**inputs).logits, model(**inputs).logits)
    for method in ("prumerge", "prumerge+", "visionzip"):
        slim = apply(model, method, **KEEP)
        slim.generate(**inputs, **GEN, do_sample=False)
        assert slim.last_stats[0].tokens_after < tokens.shape[0]


def test_video_llava_mixed_image_and_video_and_deprecated_alias():
    model = model_of("video-llava")
    inputs = make_inputs(model, "video-llava", "video", 2)
    alias = {("pixel_values_images" if k == "pixel_values" else k): v for k, v in inputs.items()}
    with torch.no_grad():
        stock = model(**inputs).logits
        assert torch.equal(apply(model, "none")(**alias).logits, stock)
    both = dict(inputs, pixel_values_images=inputs["pixel_values"])
    with pytest.raises(ValueError, match="not both"):
        apply(model, "none")(**both)


@pytest.mark.parametrize("fam", ["llava-next", "llava-onevision", "llava-next-video"])
def test_anyres_grid_fallback_is_one_row(fam):
    """Packed anyres images have no single raster grid: spatial / pool see one 1 × N row (documented)."""
    model = model_of(fam)
    inputs = make_inputs(model, fam, "image", 1)
    with torch.no_grad():
        (it,) = adapter_for(model).encode(inputs, need_pre=False, signals=None)
    n_free = it.num_tokens - int(it.protected.sum())
    assert it.grid == (1, n_free)


def test_clear_errors():
    nxt = model_of("llava-next")
    inputs = make_inputs(nxt, "llava-next", "image", 1)
    no_sizes = {k: v for k, v in inputs.items() if k != "image_sizes"}
    with pytest.raises(ValueError, match="image_sizes"):
        apply(nxt, "none")(**no_sizes)
    bad = dict(inputs, image_sizes=torch.cat([inputs["image_sizes"]] * 2))
    with pytest.raises(ValueError, match="image_sizes"):
        apply(nxt, "none")(**bad)
    nv = model_of("llava-next-video")
    vid = make_inputs(nv, "llava-next-video", "video", 1)
    flat = dict(vid, pixel_values_videos=vid["pixel_values_videos"][0])
    with pytest.raises(ValueError, match="pixel_values_videos must have shape"):
        apply(nv, "none")(**flat)
    with pytest.raises(ValueError, match="one selected layer"):
        apply(nxt, "prumerge", keep=8)(**inputs, vision_feature_layer=[-2, -1])


@pytest.mark.parametrize("fam,modality", [("llava-next", "image"), ("video-llava", "video"), ("llava-onevision", "video")])
def test_mismatched_placeholder_count_is_refused(fam, modality):
    model = model_of(fam)
    inputs = make_inputs(model, fam, modality, 1)
    ids = inputs["input_ids"].clone()
    tid = T.placeholder_token_ids(model)[modality]
    first = int((ids[0] == tid).nonzero()[0])
    bad = dict(inputs, input_ids=torch.cat([ids[:, :first], ids[:, first + 1 :]], 1), attention_mask=inputs["attention_mask"][:, 1:])
    for method, opts in (("none", {}), ("prumerge", KEEP)):
        with pytest.raises(ValueError, match="placeholder"):
            apply(model, method, **opts).generate(**bad, **GEN)
