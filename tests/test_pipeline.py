"""The encode → reduce → rebuild pipeline (slimvlm.apply / slimvlm.prepare) on the tiny offline VLMs.

Families: LLaVA (Llama and Qwen2 LMs, images) and Qwen2-VL / Qwen2.5-VL (images and videos).

1. identity ("none") is bit-identical to the stock model (logits and greedy tokens), B=1 and a left-padded B=2;
2. every registered method runs forward, greedy, beam search and seeded sampling (num_return_sequences=2);
   [CLS]-signal methods are refused on Qwen with a clear ValueError;
3. a left-padded batch gives, row by row, the greedy tokens of each prompt run alone;
4. the kept count reaches the language model (prefill length = text + kept tokens; last_stats agree);
5. Qwen: kept visual tokens keep their anchor's 3-D M-RoPE position, text positions are unchanged;
6. reduced prefill == full sequence with the dropped tokens masked out of attention (≤ 1e-5), sdpa and eager;
7. errors: unsupported models, unknown methods / options, missing mm_token_type_ids, position_ids, bad counts.

References (anchors, kept positions, 3-D positions) are computed independently of the pipeline: from the
model's own ``get_*_features`` / ``get_rope_index`` and ``slimvlm.methods.reduce`` on the per-frame grid.
"""

from __future__ import annotations

import pytest
import torch

from slimvlm.methods import get as get_method
from torch import nn

import slimvlm
from slimvlm import testing as T
from slimvlm.methods import available, reduce
from slimvlm.pipeline import ItemStats, Prepared, apply, prepare

FAMS = ("llava", "llava-qwen2", "qwen2-vl", "qwen2.5-vl")
QWEN = ("qwen2-vl", "qwen2.5-vl")
CASES = [(f, "image") for f in FAMS] + [(f, "video") for f in QWEN]
CASE_IDS = [f"{f}-{m}" for f, m in CASES]
PROMPTS = ("Describe the image in detail.", "What?")
CLS_METHODS = ("prumerge", "prumerge+", "visionzip")
SELECTION = ("spatial", "random", "sequential")


_MODELS: dict[tuple[str, str], nn.Module] = {}


def model_of(fam: str, attn: str = "sdpa") -> nn.Module:
    if (fam, attn) not in _MODELS:
        _MODELS[(fam, attn)] = T.tiny_model(fam, attn_implementation=attn)
    return _MODELS[(fam, attn)]


def images_per_prompt(modality: str, bsz: int) -> list[int]:
    if modality == "image":
        return [1] if bsz == 1 else [2, 1]
    return [0] if bsz == 1 else [1, 0]  # video: row 0 has an image and a video, row 1 a video only


#: non-square Qwen images of different sizes (token grids 6x4, 4x6, 2x3), in prompt order
MIXED_SIZES = [(48, 32), (32, 48), (16, 24)]


def image_sizes_for(fam: str, modality: str, bsz: int, mixed: bool):
    n = sum(images_per_prompt(modality, bsz))
    return MIXED_SIZES[:n] if (mixed and fam in QWEN and n) else None


def make_inputs(model, fam: str, modality: str, bsz: int, mixed: bool = False):
    return T.tiny_inputs(
        model,
        fam,
        list(PROMPTS[:bsz]),
        images_per_prompt=images_per_prompt(modality, bsz),
        video=modality == "video",
        image_sizes=image_sizes_for(fam, modality, bsz, mixed),
    )


def budget(fam: str) -> dict:
    return {"keep": 16} if fam.startswith("llava") else {"ratio": 0.5}


def supported_methods(fam: str) -> list[str]:
    # AIM / FastV also prune inside the LLM (shorter logits in remove mode): tests/test_aim_fastv.py covers them
    return [m for m in available() if get_method(m).stage != "in_llm" and not (fam in QWEN and m in CLS_METHODS)]


def expected_after(method: str, opts: dict, before: int, frames: int) -> int | None:
    """Kept tokens of one item for a fixed budget (None when adaptive, or temporal: a per-video budget split by
    the method's own rule, whose counts tests/test_<method>.py check)."""
    if method == "none":
        return before
    if not opts or get_method(method).temporal:
        return None
    per_frame = before // frames
    if "keep" in opts:
        k = min(opts["keep"], per_frame)
    else:
        k = max(1, min(per_frame, int(per_frame * opts["ratio"])))
    return k * frames  # every token counts, PruMerge's summary token included


def item_layout(model, fam: str, inputs) -> list[dict]:
    """Per image / video, in the order the stock model scatters them (all images, then all videos): its
    modality, batch row, placeholder positions in the flattened (B*L) input, frames and per-frame grid."""
    ph = T.placeholder_token_ids(model)
    ids = inputs["input_ids"]
    b, length = ids.shape
    out = []
    for modality in ("image", "video"):
        if modality not in ph:
            continue
        if fam in QWEN:
            grids = inputs.get("image_grid_thw" if modality == "image" else "video_grid_thw")
            grids = [] if grids is None else grids.tolist()
            merge = model.config.vision_config.spatial_merge_size
            shapes = [(t, h // merge, w // merge) for t, h, w in grids]
        else:
            n_img = 0 if inputs.get("pixel_values") is None else inputs["pixel_values"].shape[0]
            shapes = [(1, 8, 8)] * n_img
        runs = [(r, s, e) for r, spans in enumerate(T.placeholder_runs(ids, ph[modality])) for s, e in spans]
        assert len(runs) == len(shapes), "tiny_inputs wrote one placeholder run per item"
        for (row, s, e), (t, gh, gw) in zip(runs, shapes):
            assert e - s == t * gh * gw
            pos = torch.arange(row * length + s, row * length + e)
            out.append(dict(modality=modality, row=row, pos=pos, frames=t, grid=(gh, gw)))
    return out


@torch.no_grad()
def stock_features(model, fam: str, inputs) -> list[torch.Tensor]:
    """Each item's LLM-width tokens from the model's own encoders (same item order as item_layout)."""
    enc = T.encode_visual(model, inputs)
    return [t for modality in ("image", "video") if modality in enc for t in enc[modality].pooler_output]


def reference_kept(model, fam: str, inputs, method: str, opts: dict):
    """For a selection-only method: the kept mask over the ORIGINAL (B, L) sequence (valid text + kept
    placeholders), the kept placeholder positions per item (flat indices, in output order) and the kept
    features per item, computed with slimvlm.methods.reduce on each item's per-frame grid."""
    layout = item_layout(model, fam, inputs)
    feats = stock_features(model, fam, inputs)
    assert len(feats) == len(layout)
    ids = inputs["input_ids"]
    mask = inputs["attention_mask"].bool()
    ph = placeholder_mask(model, ids)
    keep = (mask & ~ph).flatten().clone()
    kept_pos, kept_feats = [], []
    for it, f in zip(layout, feats):
        t, (gh, gw) = it["frames"], it["grid"]
        n_f = gh * gw
        red = reduce(method, f.reshape(t, n_f, -1), signals={"grid": (gh, gw)}, **opts)
        anchors, kf = [], []
        for fr in range(t):
            x, a = red.item(fr)
            assert bool((a >= 0).all())
            anchors.append(a + fr * n_f)
            kf.append(x)
        anchors = torch.cat(anchors)
        # selection-only: each kept token is exactly its anchor token
        torch.testing.assert_close(torch.cat(kf), f[anchors], rtol=0, atol=0)
        pos = it["pos"][anchors]
        keep[pos] = True
        kept_pos.append(pos)
        kept_feats.append(torch.cat(kf))
    return keep.view_as(ids), kept_pos, kept_feats, layout


def placeholder_mask(model, ids: torch.Tensor) -> torch.Tensor:
    """True where ``ids`` holds one of the model's image / video placeholder tokens."""
    ph = torch.zeros_like(ids, dtype=torch.bool)
    for tid in T.placeholder_token_ids(model).values():
        ph |= ids == tid
    return ph


def text_positions(mask: torch.Tensor) -> torch.Tensor:
    """1-D positions as generate builds them from a 2-D mask."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)


def rope_kwargs(fam: str, inputs) -> dict:
    kw = dict(
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"),
        attention_mask=inputs["attention_mask"],
    )
    if inputs.get("second_per_grid_ts") is not None:
        kw["second_per_grid_ts"] = inputs["second_per_grid_ts"]
    return kw


def per_row(x: torch.Tensor, valid: torch.Tensor) -> list[torch.Tensor]:
    return [x[b][valid[b]] for b in range(x.shape[0])]


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

    kw = slim.prepare(**inputs)
    assert torch.equal(kw["input_ids"], inputs["input_ids"])
    assert torch.equal(kw["attention_mask"], inputs["attention_mask"])
    stats = slim.last_stats
    assert all(isinstance(s, ItemStats) and s.tokens_before == s.tokens_after for s in stats)
    assert len(stats) == len(item_layout(model, fam, inputs))

    gen = dict(max_new_tokens=5, do_sample=False)
    stock_tokens = model.generate(**inputs, **gen)
    slim_tokens = slim.generate(**inputs, **gen)
    assert torch.equal(slim_tokens, stock_tokens)


# ============================================================================================ 2. every method


def _method_cases():
    for fam, modality in CASES:
        for method in supported_methods(fam):
            opts = {} if method == "none" else budget(fam)
            yield pytest.param(fam, modality, method, opts, id=f"{fam}-{modality}-{method}-{opts or 'default'}")
            if method in ("prumerge", "prumerge+"):
                yield pytest.param(fam, modality, method, {}, id=f"{fam}-{modality}-{method}-adaptive")


@pytest.mark.parametrize("fam,modality,method,opts", list(_method_cases()))
def test_every_method_forward_and_generate(fam, modality, method, opts):
    model = model_of(fam)
    inputs = make_inputs(model, fam, modality, 2)
    layout = item_layout(model, fam, inputs)
    slim = apply(model, method, **opts)
    kw = slim.prepare(**inputs)
    stats = list(slim.last_stats)
    assert [(s.row, s.modality, s.tokens_before) for s in stats] == [
        (it["row"], it["modality"], len(it["pos"])) for it in layout
    ]
    for s, it in zip(stats, layout):
        want = expected_after(method, opts, s.tokens_before, it["frames"])
        if want is None:  # adaptive or temporal budget
            assert 1 <= s.tokens_after <= s.tokens_before + it["frames"]
        else:
            assert s.tokens_after == want, (s, want)
    ids = kw["input_ids"]
    b, length = ids.shape

    with torch.no_grad():
        logits = slim(**inputs).logits
    assert logits.shape[:2] == (b, length)
    assert bool(torch.isfinite(logits).all())

    greedy = slim.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert greedy.shape[0] == b and length < greedy.shape[1] <= length + 4
    assert torch.equal(greedy[:, :length], ids)
    # generate's prefill agrees with the forward (row 1 is unpadded in the reduced batch whenever it is the
    # longer one; use the unpadded row for the comparison)
    full_rows = (kw["attention_mask"] != 0).all(1).nonzero().flatten().tolist()
    assert full_rows
    for r in full_rows:
        top2 = logits[r, -1].topk(2).values
        if float(top2[0] - top2[1]) > 1e-4:
            assert int(greedy[r, length]) == int(logits[r, -1].argmax())
    assert greedy.tolist() == slim.generate(**inputs, max_new_tokens=4, do_sample=False).tolist()

    beam = slim.generate(**inputs, max_new_tokens=4, num_beams=2, do_sample=False)
    assert beam.shape[0] == b and torch.equal(beam[:, :length], ids)

    torch.manual_seed(0)
    s1 = slim.generate(**inputs, max_new_tokens=4, do_sample=True, num_return_sequences=2)
    torch.manual_seed(0)
    s2 = slim.generate(**inputs, max_new_tokens=4, do_sample=True, num_return_sequences=2)
    assert s1.shape[0] == 2 * b
    assert torch.equal(s1[:, :length], ids.repeat_interleave(2, 0))
    assert torch.equal(s1, s2)
    assert slim.last_stats == stats


@pytest.mark.parametrize("method", CLS_METHODS)
@pytest.mark.parametrize("fam,modality", [c for c in CASES if c[0] in QWEN], ids=lambda x: str(x))
def test_cls_methods_run_on_qwen_with_its_pseudo_cls(fam, modality, method):
    # Qwen's tower has no [CLS]; its adapter gives the pseudo-[CLS] "attention received" (tests/test_qwen_signals.py)
    model = model_of(fam)
    inputs = make_inputs(model, fam, modality, 1)
    slim = apply(model, method, **budget(fam))
    with torch.no_grad():
        logits = slim(**inputs).logits
    assert torch.isfinite(logits).all()
    assert all(s.tokens_after < s.tokens_before for s in slim.last_stats)


def test_methods_needing_signals_are_refused_up_front_without_them():
    from slimvlm.models.qwen2_vl import Qwen2VLAdapter
    from slimvlm.pipeline import _signal_request

    class NoSignals(Qwen2VLAdapter):
        attention_signals = False

    adapter = NoSignals(model_of("qwen2-vl"))
    for method in CLS_METHODS:
        with pytest.raises(ValueError, match=r"no \[CLS\] token"):
            _signal_request(adapter, method)
    assert _signal_request(adapter, "spatial") is None


# ============================================================================================ 3. batch == alone


def _slice_pixels(fam: str, batch, alone, row: int, layout) -> None:
    """Put row ``row``'s pixels of the batched inputs into the single-prompt inputs ``alone`` (in place)."""
    if fam not in QWEN:
        sel = [i for i, it in enumerate(layout) if it["modality"] == "image" and it["row"] == row]
        if sel:
            alone["pixel_values"] = batch["pixel_values"][sel]
        return
    for modality, pix, grid_key in (("image", "pixel_values", "image_grid_thw"), ("video", "pixel_values_videos", "video_grid_thw")):
        if batch.get(pix) is None:
            continue
        rows = [it["row"] for it in layout if it["modality"] == modality]
        grids = batch[grid_key]
        sizes = grids.prod(-1).tolist()
        chunks = list(batch[pix].split(sizes))
        sel = [i for i, r in enumerate(rows) if r == row]
        if not sel:
            assert alone.get(pix) is None
            continue
        alone[pix] = torch.cat([chunks[i] for i in sel])
        assert torch.equal(alone[grid_key], grids[sel])
        if modality == "video" and batch.get("second_per_grid_ts") is not None:
            alone["second_per_grid_ts"] = batch["second_per_grid_ts"][sel]


def _batch_cases():
    for fam, modality in CASES:
        for method in supported_methods(fam):
            opts = {} if method == "none" else budget(fam)
            yield pytest.param(fam, modality, method, opts, False, id=f"{fam}-{modality}-{method}")
            if fam in QWEN:
                yield pytest.param(fam, modality, method, opts, True, id=f"{fam}-{modality}-{method}-mixed-sizes")
            if method in ("prumerge", "prumerge+"):
                yield pytest.param(fam, modality, method, {}, False, id=f"{fam}-{modality}-{method}-adaptive")


@pytest.mark.parametrize("fam,modality,method,opts,mixed", list(_batch_cases()))
def test_batched_equals_each_prompt_alone(fam, modality, method, opts, mixed):
    model = model_of(fam)
    batch = make_inputs(model, fam, modality, 2, mixed)
    layout = item_layout(model, fam, batch)
    ipp = images_per_prompt(modality, 2)
    assert batch["attention_mask"].sum(1).tolist()[0] != batch["attention_mask"].sum(1).tolist()[1]
    slim = apply(model, method, **opts)
    max_new = 5
    got = slim.generate(**batch, max_new_tokens=max_new, do_sample=False)
    batch_stats = list(slim.last_stats)
    red = slim.prepare(**batch)
    red_len, red_mask = red["input_ids"].shape[1], red["attention_mask"]
    for row in range(2):
        sizes = image_sizes_for(fam, modality, 2, mixed)
        if sizes is not None:
            sizes = sizes[: ipp[0]] if row == 0 else sizes[ipp[0] :]
        alone = T.tiny_inputs(
            model, fam, [PROMPTS[row]], images_per_prompt=[ipp[row]], video=modality == "video", image_sizes=sizes or None
        )
        valid = batch["attention_mask"][row] != 0
        # the single prompt is the batch row without its left padding
        assert torch.equal(alone["input_ids"][0], batch["input_ids"][row][valid])
        if fam in QWEN:
            assert torch.equal(alone["mm_token_type_ids"][0], batch["mm_token_type_ids"][row][valid])
        if row == 0:
            # pixels are drawn prompt by prompt from one seeded generator: prompt 0's are the same alone
            snapshot = {k: v.clone() for k, v in alone.items() if k.startswith("pixel_values")}
            _slice_pixels(fam, batch, alone, row, layout)
            for k, v in snapshot.items():
                assert torch.equal(alone[k], v), f"{k} of prompt 0 differ between batch and alone"
        else:
            _slice_pixels(fam, batch, alone, row, layout)
        ref = slim.generate(**alone, max_new_tokens=max_new, do_sample=False)
        alone_stats = slim.last_stats
        assert [(s.modality, s.tokens_before, s.tokens_after) for s in alone_stats] == [
            (s.modality, s.tokens_before, s.tokens_after) for s in batch_stats if s.row == row
        ]
        a_len = slim.prepare(**alone)["input_ids"].shape[1]
        new_alone = ref[0, a_len:].tolist()
        new_alone += [T.PAD_ID] * (max_new - len(new_alone))
        new_batch = got[row, red_len:].tolist()
        new_batch += [T.PAD_ID] * (max_new - len(new_batch))
        assert new_batch == new_alone, f"row {row}: batched {new_batch} != alone {new_alone}"
        # the reduced prompt of the row is the reduced prompt alone
        assert torch.equal(got[row, :red_len][red_mask[row] != 0], ref[0, :a_len])


# ============================================================================================ 4. kept count → LLM


def _count_cases():
    for fam, modality in CASES:
        for method in ("none", "spatial", "tome", "pool", "aim-merge") + (("prumerge",) if fam not in QWEN else ()):
            opts = {} if method == "none" else budget(fam)
            yield pytest.param(fam, modality, method, opts, id=f"{fam}-{modality}-{method}")
        if fam not in QWEN:
            yield pytest.param(fam, modality, "prumerge+", {}, id=f"{fam}-{modality}-prumerge+-adaptive")


@pytest.mark.parametrize("bsz", [1, 2])
@pytest.mark.parametrize("fam,modality,method,opts", list(_count_cases()))
def test_kept_count_reaches_language_model(fam, modality, method, opts, bsz):
    model = model_of(fam)
    inputs = make_inputs(model, fam, modality, bsz)
    layout = item_layout(model, fam, inputs)
    ph_ids = list(T.placeholder_token_ids(model).values())
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    is_ph = torch.isin(ids, torch.tensor(ph_ids))
    text = ((mask != 0) & ~is_ph).sum(1)

    p = prepare(model, inputs, method, **opts)
    assert isinstance(p, Prepared)
    kept = torch.zeros(bsz, dtype=torch.long)
    for s in p.stats:
        kept[s.row] += s.tokens_after
    assert [s.tokens_before for s in p.stats] == [len(it["pos"]) for it in layout]
    new_ids, new_mask = p.kwargs["input_ids"], p.kwargs["attention_mask"]
    assert new_mask.sum(1).tolist() == (text + kept).tolist()
    assert new_ids.shape[1] == int((text + kept).max())
    assert torch.isin(new_ids, torch.tensor(ph_ids)).sum(1).tolist() == kept.tolist()
    # text tokens unchanged, in order
    new_ph = torch.isin(new_ids, torch.tensor(ph_ids))
    for b in range(bsz):
        assert torch.equal(new_ids[b][(new_mask[b] != 0) & ~new_ph[b]], ids[b][(mask[b] != 0) & ~is_ph[b]])
    # the injected features have the kept count
    mm = p.kwargs["mm_encoder_outputs"]
    injected = sum(t.shape[0] for out in mm.values() for t in out.pooler_output)
    assert injected == int(kept.sum())
    assert "pixel_values" not in p.kwargs and "pixel_values_videos" not in p.kwargs

    seen: list[tuple[int, torch.Tensor | None]] = []

    def hook(_mod, _args, kwargs):
        am = kwargs.get("attention_mask")
        seen.append((kwargs["inputs_embeds"].shape[1], am.clone() if isinstance(am, torch.Tensor) else am))

    handle = model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        slim = apply(model, method, **opts)
        with torch.no_grad():
            slim(**inputs)
        fwd = seen[:]
        seen.clear()
        slim.generate(**inputs, max_new_tokens=2, do_sample=False)
        gen_prefill = seen[0]
    finally:
        handle.remove()
    assert len(fwd) == 1
    for length, am in (fwd[0], gen_prefill):
        if am is None:
            real = torch.full((bsz,), length)
        else:
            assert am.dim() == 2 and am.shape[1] == length
            real = length - (am == 0).sum(1)
        assert real.tolist() == (text + kept).tolist()
    assert sum(s.tokens_after for s in slim.last_stats) == int(kept.sum())
    assert slim.last_stats == p.stats


# ============================================================================================ 5. Qwen positions


@pytest.mark.parametrize("mixed", [False, True], ids=["square", "mixed-sizes"])
@pytest.mark.parametrize("bsz", [1, 2])
@pytest.mark.parametrize("opts", [{"ratio": 0.5}, {"keep": 3}], ids=["ratio0.5", "keep3"])
@pytest.mark.parametrize("method", SELECTION)
@pytest.mark.parametrize("fam,modality", [c for c in CASES if c[0] in QWEN], ids=lambda x: str(x))
def test_qwen_kept_tokens_take_anchor_positions(fam, modality, method, opts, bsz, mixed):
    model = model_of(fam)
    inputs = make_inputs(model, fam, modality, bsz, mixed)
    keep, kept_pos, kept_feats, layout = reference_kept(model, fam, inputs, method, opts)
    with torch.no_grad():
        pos3d, _ = model.model.get_rope_index(inputs["input_ids"], **rope_kwargs(fam, inputs))

    p = prepare(model, inputs, method, **opts)
    kw = p.kwargs
    new_mask = kw["attention_mask"] != 0
    pos = kw["position_ids"]
    assert pos.shape == (4, bsz, kw["input_ids"].shape[1])
    assert [s.tokens_after for s in p.stats] == [len(k) for k in kept_pos]

    # the injected features are the anchors' own features, in order
    inj = [t for m in ("image", "video") if m in kw["mm_encoder_outputs"] for t in kw["mm_encoder_outputs"][m].pooler_output]
    assert len(inj) == len(kept_feats)
    for a, e in zip(inj, kept_feats):
        assert torch.equal(a, e)

    # the reduced sequence is the original one restricted to the kept positions
    for a, e in zip(per_row(kw["input_ids"], new_mask), per_row(inputs["input_ids"], keep)):
        assert torch.equal(a, e)
    for a, e in zip(per_row(kw["mm_token_type_ids"], new_mask), per_row(inputs["mm_token_type_ids"], keep)):
        assert torch.equal(a, e)
    # rows 1-3: every kept token (visual: its anchor; text: itself) keeps its original (t, h, w) position
    for b in range(bsz):
        got = pos[1:, b][:, new_mask[b]]
        want = pos3d[:, b][:, keep[b]]
        assert torch.equal(got, want), f"row {b}:\n{got}\n!=\n{want}"
    # row 0: text positions as generate builds them from the reduced mask
    for b in range(bsz):
        assert pos[0, b][new_mask[b]].tolist() == list(range(int(new_mask[b].sum())))
    # explicit check of the visual anchors: each kept placeholder's position is its anchor's
    flat3d = pos3d.reshape(3, -1)
    ph = torch.tensor(list(T.placeholder_token_ids(model).values()))
    for b in range(bsz):
        vis_new = torch.isin(kw["input_ids"][b], ph) & new_mask[b]
        anchors_b = torch.cat([k for k, it in zip(kept_pos, layout) if it["row"] == b] or [torch.zeros(0, dtype=torch.long)])
        # placeholder order in the row: by flat position (items of one row sorted by their run start)
        anchors_b = anchors_b.sort().values
        assert torch.equal(pos[1:, b][:, vis_new], flat3d[:, anchors_b])


# ============================================================================================ 6. == masked full sequence


def _masked_cases():
    for fam, modalities in (("llava", ("image",)), ("qwen2-vl", ("image", "video"))):
        budgets = ({"keep": 16}, {"ratio": 0.3}) if fam == "llava" else ({"ratio": 0.5}, {"keep": 3})
        for modality in modalities:
            for method in ("spatial", "random"):
                for opts in budgets:
                    for attn in ("sdpa", "eager"):
                        for bsz in (1, 2):
                            for mixed in (False, True) if fam in QWEN else (False,):
                                tag = "-".join(f"{k}{v}" for k, v in opts.items()) + ("-mixed" if mixed else "")
                                yield pytest.param(
                                    fam, modality, method, opts, attn, bsz, mixed,
                                    id=f"{fam}-{modality}-{method}-{tag}-{attn}-B{bsz}",
                                )


@pytest.mark.parametrize("fam,modality,method,opts,attn,bsz,mixed", list(_masked_cases()))
def test_reduced_prefill_equals_masked_full_sequence(fam, modality, method, opts, attn, bsz, mixed):
    model = model_of(fam, attn)
    inputs = make_inputs(model, fam, modality, bsz, mixed)
    keep, _, _, _ = reference_kept(model, fam, inputs, method, opts)
    p = prepare(model, inputs, method, **opts)
    kw = dict(p.kwargs)
    new_mask = kw["attention_mask"]

    ref_in = dict(inputs)
    ref_in["attention_mask"] = keep.long()
    if fam in QWEN:
        with torch.no_grad():
            pos3d, _ = model.model.get_rope_index(inputs["input_ids"], **rope_kwargs(fam, inputs))
        ref_in["position_ids"] = torch.cat([text_positions(inputs["attention_mask"])[None], pos3d], 0)
    else:
        # 1-D RoPE: contiguous positions over the kept tokens (official LLaVA / PruMerge behaviour)
        ref_in["position_ids"] = text_positions(keep)
        kw["position_ids"] = text_positions(new_mask)
    with torch.no_grad():
        ref = model(**ref_in).logits
        got = model(**kw).logits

    diff = (got[:, -1] - ref[:, -1]).abs().max().item()
    assert diff <= 1e-5, f"next-token logits differ by {diff}"
    for b in range(bsz):
        a, e = got[b][new_mask[b] != 0], ref[b][keep[b]]
        assert a.shape == e.shape
        d = (a - e).abs().max().item()
        assert d <= 1e-5, f"row {b}: logits of kept positions differ by {d}"

    # generate's prefill uses the same positions: its first greedy token is the reference's argmax
    slim = apply(model, method, **opts)
    out = slim.generate(**inputs, max_new_tokens=1, do_sample=False)
    for b in range(bsz):
        top2 = ref[b, -1].topk(2).values
        if float(top2[0] - top2[1]) > 1e-4:
            assert int(out[b, -1]) == int(ref[b, -1].argmax()), f"row {b}"


# ============================================================================================ 7. errors


def _supported_names() -> tuple[str, ...]:
    return ("LlavaForConditionalGeneration", "Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")


def test_unsupported_model_class_is_refused_with_supported_names():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    llama = LlamaForCausalLM(cfg).eval()
    for bad in (llama, nn.Linear(4, 4)):
        with pytest.raises(ValueError) as exc:
            apply(bad, "none")
        msg = str(exc.value)
        assert type(bad).__name__ in msg
        for name in _supported_names():
            assert name in msg
        with pytest.raises(ValueError, match="LlavaForConditionalGeneration"):
            prepare(bad, {"input_ids": torch.ones(1, 3, dtype=torch.long)}, "spatial")
        with pytest.raises(ValueError):
            slimvlm.apply(bad, "spatial", keep=4)


@pytest.mark.parametrize(
    "method,opts,match",
    [
        ("no-such-method", {}, "unknown method"),
        ("PruMerge", {}, "unknown method"),
        ("spatial", {"kep": 4}, "kep"),
        ("none", {"keep": 4}, "keep"),
        ("random", {"keep": 0}, "keep"),
        ("random", {"ratio": 0.0}, "ratio"),
        ("sequential", {"ratio": 1.5}, "ratio"),
        ("tome", {"keep": 4, "ratio": 0.5}, "not both"),
        ("spatial", {"keep": 4, "sample_grid": (2, 2)}, "not both"),
        ("pool", {"keep": 2.5}, "keep"),
    ],
)
@pytest.mark.parametrize("fam", ["llava", "qwen2-vl"])
def test_bad_method_or_option_fails_at_apply(fam, method, opts, match):
    model = model_of(fam)
    with pytest.raises(ValueError, match=match):
        apply(model, method, **opts)


@pytest.mark.parametrize("modality", ["image", "video"])
@pytest.mark.parametrize("fam", QWEN)
def test_qwen_without_mm_token_type_ids_is_refused(fam, modality):
    model = model_of(fam)
    inputs = dict(make_inputs(model, fam, modality, 2))
    del inputs["mm_token_type_ids"]
    slim = apply(model, "spatial", ratio=0.5)
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        slim.generate(**inputs, max_new_tokens=2)
    with pytest.raises(ValueError, match="mm_token_type_ids"), torch.no_grad():
        slim(**inputs)
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        prepare(model, inputs, "none")


@pytest.mark.parametrize("fam", FAMS)
def test_position_ids_are_refused(fam):
    model = model_of(fam)
    inputs = dict(make_inputs(model, fam, "image", 1))
    length = inputs["input_ids"].shape[1]
    position_ids = torch.arange(length)[None]
    if fam in QWEN:
        position_ids = position_ids[None].expand(3, 1, length)
    slim = apply(model, "spatial", **budget(fam))
    with pytest.raises(ValueError, match="position_ids"):
        slim.generate(**inputs, position_ids=position_ids, max_new_tokens=2)
    with pytest.raises(ValueError, match="position_ids"), torch.no_grad():
        slim(**inputs, position_ids=position_ids)
    with pytest.raises(ValueError, match="position_ids"):
        prepare(model, dict(inputs, position_ids=position_ids), "none")


def _drop_one_placeholder(model, inputs, row: int) -> dict:
    """Delete the first placeholder token of ``row`` (re-padding that row on the left)."""
    out = dict(inputs)
    ph = torch.tensor(list(T.placeholder_token_ids(model).values()))
    ids = inputs["input_ids"]
    j = int(torch.isin(ids[row], ph).nonzero()[0])
    keys = [k for k in ("input_ids", "attention_mask", "mm_token_type_ids") if k in inputs]
    for k in keys:
        x = inputs[k].clone()
        pad = T.PAD_ID if k == "input_ids" else 0
        x[row] = torch.cat([torch.tensor([pad], dtype=x.dtype), x[row, :j], x[row, j + 1 :]])
        out[k] = x
    if bool((out["attention_mask"][:, 0] == 0).all()):
        for k in keys:  # every row now starts with padding: drop that column
            out[k] = out[k][:, 1:]
    return out


@pytest.mark.parametrize("bsz", [1, 2])
@pytest.mark.parametrize("fam,modality", CASES, ids=CASE_IDS)
def test_mismatched_placeholder_count_is_refused(fam, modality, bsz):
    model = model_of(fam)
    inputs = make_inputs(model, fam, modality, bsz)
    bad = _drop_one_placeholder(model, inputs, row=bsz - 1)
    ph = torch.tensor(list(T.placeholder_token_ids(model).values()))
    assert int(torch.isin(bad["input_ids"], ph).sum()) == int(torch.isin(inputs["input_ids"], ph).sum()) - 1
    for method, opts in (("none", {}), ("spatial", budget(fam))):
        slim = apply(model, method, **opts)
        with pytest.raises(ValueError, match="placeholder"):
            slim.generate(**bad, max_new_tokens=2)
        with pytest.raises(ValueError, match="placeholder"), torch.no_grad():
            slim(**bad)
        with pytest.raises(ValueError, match="placeholder"):
            prepare(model, bad, method, **opts)


def test_last_stats_name_the_method_and_budget():
    model = model_of("llava")
    inputs = make_inputs(model, "llava", "image", 2)
    slim = apply(model, "spatial", keep=9)
    with torch.no_grad():
        slim(**inputs)
    assert [(s.method, dict(s.options), s.tokens_after) for s in slim.last_stats] == [("spatial", {"keep": 9}, 9)] * len(
        slim.last_stats
    )
    assert len(slim.last_stats) >= 2
