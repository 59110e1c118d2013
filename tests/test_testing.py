"""The tiny offline VLM factory (slimvlm.testing): every family x modality runs the stock forward/generate, the
placeholder counts equal what the model's own encoders produce, batches are left padded, weights are seeded."""

from __future__ import annotations

import pytest
import torch

from slimvlm import testing as T

CASES = [(fam, mod) for fam in T.FAMILIES for mod in T.FAMILY_MODALITIES[fam]]
IDS = [f"{fam}-{mod}" for fam, mod in CASES]
ANYRES = ("llava-next", "llava-onevision", "llava-next-video")
QWEN = ("qwen2-vl", "qwen2.5-vl")

# Placeholders of one default (32x32) image / default video, worked out by hand from the tiny configs.
EXPECTED_DEFAULT = {
    ("llava", "image"): 64,  # 8x8 patches, CLS dropped
    ("llava-qwen2", "image"): 64,
    ("llava-next", "image"): 136,  # base 64 + 1x2 grid unpadded to 8x8 + 8 newlines
    ("llava-onevision", "image"): 136,  # SigLIP 64 (no CLS) + 1x1 grid 8x8 + 8 newlines
    ("llava-onevision", "video"): 65,  # 4 frames x 4x4 (2x pooling) + 1 newline
    ("video-llava", "image"): 64,
    ("video-llava", "video"): 520,  # 8 frames x (64 + CLS)
    ("llava-next-video", "image"): 136,
    ("llava-next-video", "video"): 64,  # 4 frames x 4x4 (avg-pool stride 2)
    ("qwen2-vl", "image"): 16,  # grid (1, 8, 8) / 2x2 merge
    ("qwen2-vl", "video"): 32,  # grid (2, 8, 8) / 2x2 merge
    ("qwen2.5-vl", "image"): 16,
    ("qwen2.5-vl", "video"): 32,
}


_MODELS: dict[str, torch.nn.Module] = {}


def model_of(fam: str):
    if fam not in _MODELS:
        _MODELS[fam] = T.tiny_model(fam)
    return _MODELS[fam]


def sizes_for(fam: str, n: int) -> list[tuple[int, int]] | None:
    """Different image sizes (hence token counts) where the family supports them."""
    if fam in ANYRES:
        return [(32, 32), (64, 40), (40, 64), (96, 32)][:n]
    if fam in QWEN:
        return [(32, 32), (48, 32), (32, 48), (16, 24)][:n]
    return None


def make_inputs(model, fam, mod, prompts=("Describe it.",), images_per_prompt=None, **kw):
    video = mod == "video"
    if images_per_prompt is None:
        images_per_prompt = [0 if video else 1] * len(prompts)
    return T.tiny_inputs(model, fam, list(prompts), images_per_prompt=images_per_prompt, video=video, **kw)


def own_feature_count(model, fam, inputs, mod) -> int:
    """Visual features the model's own get_*_features produce, with the kwargs written out per family."""
    base = model.model
    with torch.no_grad():
        if mod == "image":
            kw = {"pixel_values": inputs["pixel_values"]}
            if fam in ANYRES:
                kw["image_sizes"] = inputs["image_sizes"]
            if fam == "llava-onevision":
                kw["batch_num_images"] = inputs["batch_num_images"]
            if fam in QWEN:
                kw["image_grid_thw"] = inputs["image_grid_thw"]
            pooled = base.get_image_features(**kw).pooler_output
        else:
            kw = {"pixel_values_videos": inputs["pixel_values_videos"]}
            if fam in QWEN:
                kw["video_grid_thw"] = inputs["video_grid_thw"]
            pooled = base.get_video_features(**kw).pooler_output
    hidden = model.config.text_config.hidden_size
    if isinstance(pooled, torch.Tensor):
        return pooled.numel() // hidden
    return sum(x.numel() for x in pooled) // hidden


def run_lengths(inputs, token_id) -> list[int]:
    return [e - s for row in T.placeholder_runs(inputs["input_ids"], token_id) for s, e in row]


# ----------------------------------------------------------------------------------------------------- tests


def test_tokenizer_fixed_ids_and_deterministic():
    tok = T.tiny_tokenizer()
    assert tok is T.tiny_tokenizer()  # cached
    assert tok.convert_tokens_to_ids(list(T.SPECIAL_TOKENS)) == list(range(10))
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert len(tok) <= T.TEXT_VOCAB_SIZE
    fresh = T.tiny_tokenizer.__wrapped__()
    assert fresh.get_vocab() == tok.get_vocab()
    text = "USER: Describe the image. <image> ASSISTANT: a red car\n"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids == fresh.encode(text, add_special_tokens=False)
    assert 4 in ids and tok.decode(ids) == text
    assert len(tok.encode("the image", add_special_tokens=False)) < len("the image")  # merges were learnt


@pytest.mark.parametrize("fam", T.FAMILIES)
def test_model_shape_and_metadata(fam):
    model = model_of(fam)
    assert type(model).__name__ == T.FAMILY_CLASSES[fam]
    assert T.family_of(model) == fam
    assert not model.training
    n = sum(p.numel() for p in model.parameters())
    assert 150_000 < n < 350_000, n
    base = model.model
    if fam in QWEN:
        towers = [base.visual]
    elif fam == "video-llava":
        towers = [base.image_tower, base.video_tower]
    else:
        towers = [base.vision_tower]
    for tower in towers:
        layers = tower.blocks if fam in QWEN else tower.encoder.layers
        assert len(layers) == 3
    gc = model.generation_config
    assert (gc.pad_token_id, gc.eos_token_id, gc.bos_token_id) == (T.PAD_ID, T.EOS_ID, T.BOS_ID)
    ph = T.placeholder_token_ids(model)
    assert set(ph) == set(T.FAMILY_MODALITIES[fam])
    expected = {"image": 6, "video": 7} if fam in QWEN else {"image": 4, "video": 5}
    assert ph == {m: expected[m] for m in T.FAMILY_MODALITIES[fam]}
    assert model.config.text_config._attn_implementation == "sdpa"
    assert model.config.vision_config._attn_implementation == "sdpa"


@pytest.mark.parametrize(("fam", "mod"), CASES, ids=IDS)
def test_forward_generate_and_counts(fam, mod):
    model = model_of(fam)
    inputs = make_inputs(model, fam, mod)
    ids = inputs["input_ids"]
    tok_id = T.placeholder_token_ids(model)[mod]
    n_ph = int((ids == tok_id).sum())
    # placeholders == features the model's own encoder produces == the hand-worked default
    assert n_ph == own_feature_count(model, fam, inputs, mod) == EXPECTED_DEFAULT[(fam, mod)]
    assert T.num_visual_tokens(model, mod) == n_ph
    assert T.visual_feature_lengths(model, inputs)[mod] == run_lengths(inputs, tok_id) == [n_ph]
    if fam in QWEN:
        tt = inputs["mm_token_type_ids"]
        assert torch.equal(tt == (1 if mod == "image" else 2), ids == tok_id)
        assert int((ids == T.VISION_START_ID).sum()) == int((ids == T.VISION_END_ID).sum()) == 1

    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, ids.shape[1], T.TEXT_VOCAB_SIZE)
    assert torch.isfinite(logits).all()

    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert ids.shape[1] < out.shape[1] <= ids.shape[1] + 3
    assert torch.equal(out[:, : ids.shape[1]], ids)


@pytest.mark.parametrize(("fam", "mod"), CASES, ids=IDS)
def test_left_padded_batch(fam, mod):
    """B=2, different numbers (and sizes) of images per prompt; the padded row equals the prompt run alone."""
    model = model_of(fam)
    video = mod == "video"
    prompts = ["What is this?", "Describe the two pictures."]
    for ipp in ([2, 1], [1, 3]):
        sizes = sizes_for(fam, sum(ipp))
        inputs = T.tiny_inputs(model, fam, prompts, images_per_prompt=ipp, video=video, image_sizes=sizes)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        lens = mask.sum(1)
        assert lens[0] != lens[1]
        for b in range(2):  # left padding: zeros then ones, pad ids exactly where the mask is 0
            pad = ids.shape[1] - int(lens[b])
            assert mask[b, :pad].sum() == 0 and mask[b, pad:].all()
            assert (ids[b, :pad] == T.PAD_ID).all()
        for m, tok_id in T.placeholder_token_ids(model).items():
            if m == "image" or video:
                runs = run_lengths(inputs, tok_id)
                assert T.visual_feature_lengths(model, inputs)[m] == runs
                assert sum(runs) == int((ids == tok_id).sum()) == own_feature_count(model, fam, inputs, m)
        if fam in ANYRES and fam != "llava-onevision" or fam in QWEN:
            assert len(set(run_lengths(inputs, T.placeholder_token_ids(model)["image"]))) > 1  # sizes matter
        with torch.no_grad():
            logits = model(**inputs).logits
        assert logits.shape == (2, ids.shape[1], T.TEXT_VOCAB_SIZE)
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert out.shape[0] == 2 and torch.equal(out[:, : ids.shape[1]], ids)

    # [1, 3]: row 0 is the shorter one, so it is padded; its pixels are drawn first, so a lone run matches.
    assert mask[0, 0] == 0
    alone = T.tiny_inputs(model, fam, prompts[:1], images_per_prompt=[1], video=video, image_sizes=sizes_for(fam, 1))
    with torch.no_grad():
        ref = model(**alone).logits
    torch.testing.assert_close(logits[0, -ref.shape[1]:], ref[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fam", T.FAMILIES)
def test_determinism(fam):
    mod = T.FAMILY_MODALITIES[fam][-1]
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = T.tiny_model(fam, seed=0)
    assert torch.equal(torch.rand(3), before)  # the caller's RNG stream is untouched
    b = T.tiny_model(fam, seed=0)
    c = T.tiny_model(fam, seed=1)
    ia, ib = make_inputs(a, fam, mod, seed=0), make_inputs(b, fam, mod, seed=0)
    for k in ia:
        assert torch.equal(ia[k], ib[k]), k
    with torch.no_grad():
        la, lb, lc = a(**ia).logits, b(**ib).logits, c(**ia).logits
        ld = a(**make_inputs(a, fam, mod, seed=1)).logits
    assert torch.equal(la, lb)
    assert not torch.allclose(la, lc)  # other weights
    assert not torch.allclose(la, ld)  # other pixels


@pytest.mark.parametrize(("fam", "mod"), CASES, ids=IDS)
def test_precomputed_features_path(fam, mod):
    """encode_visual gives what forward accepts as mm_encoder_outputs (the pipeline's injection point)."""
    model = model_of(fam)
    inputs = make_inputs(model, fam, mod, prompts=["a", "bb"], images_per_prompt=[1, 2])
    enc = T.encode_visual(model, inputs)
    assert set(enc) == ({"image", "video"} if mod == "video" else {"image"})
    rest = {k: v for k, v in inputs.items() if k not in ("pixel_values", "pixel_values_videos")}
    with torch.no_grad():
        ref = model(**inputs).logits
        got = model(**rest, mm_encoder_outputs=enc).logits
    assert torch.equal(ref, got)


def test_other_dtype_and_attention():
    model = T.tiny_model("qwen2.5-vl", dtype=torch.bfloat16, attn_implementation="eager")
    assert model.dtype == torch.bfloat16
    assert model.config.vision_config._attn_implementation == "eager"
    inputs = T.tiny_inputs(model, "qwen2.5-vl", ["a", "bb"], images_per_prompt=[2, 1], video=True)
    assert inputs["pixel_values"].dtype == inputs["pixel_values_videos"].dtype == torch.bfloat16
    assert torch.equal(inputs["second_per_grid_ts"], torch.ones(2))
    with torch.no_grad():
        assert model(**inputs).logits.dtype == torch.bfloat16


def test_onevision_multi_image_uses_base_tile_only():
    model = model_of("llava-onevision")
    inputs = T.tiny_inputs(model, "llava-onevision", ["a", "b"], images_per_prompt=[2, 1], image_sizes=(128, 128))
    assert inputs["batch_num_images"].tolist() == [2, 1]
    assert run_lengths(inputs, 4) == [65, 65, 664]  # 664 = 64 + 4x4 grid 32x32 downscaled to 24x24 + newlines
    assert T.visual_feature_lengths(model, inputs)["image"] == [65, 65, 664]


def test_bad_arguments():
    llava = model_of("llava")
    with pytest.raises(ValueError, match="no video"):
        T.tiny_inputs(llava, "llava", ["a"], video=True)
    with pytest.raises(ValueError, match="only takes"):
        T.tiny_inputs(llava, "llava", ["a"], image_sizes=[(64, 64)])
    with pytest.raises(ValueError, match="not 'llava-next'"):
        T.tiny_inputs(llava, "llava-next", ["a"])
    with pytest.raises(ValueError, match="images_per_prompt"):
        T.tiny_inputs(llava, "llava", ["a", "b"], images_per_prompt=[1])
    with pytest.raises(ValueError, match="image_sizes"):
        T.tiny_inputs(model_of("llava-next"), "llava-next", ["a"], image_sizes=[(32, 32), (32, 32)])
    with pytest.raises(ValueError, match="multiples of 8"):
        T.tiny_inputs(model_of("qwen2-vl"), "qwen2-vl", ["a"], image_sizes=(30, 32))
    with pytest.raises(ValueError, match="unknown family"):
        T.tiny_model("llava-2")
