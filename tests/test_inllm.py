"""slimvlm.inllm: schedules, scores against literal eager attention, remove vs mask agreement, KV lengths,
bit-identity when detached."""

from __future__ import annotations

import pytest
import torch

from slimvlm._compat import cache_from_output
from slimvlm.inllm import (
    InLLMPruner,
    Schedule,
    aim_retain_rates,
    aim_schedule,
    cache_lengths,
    fastv_schedule,
    fastv_scores,
    make_schedule,
    pagerank_importance,
    per_layer_schedule,
    pyramiddrop_schedule,
)
from slimvlm.testing import tiny_inputs, tiny_model

FAMILIES = ("llava", "llava-qwen2", "qwen2-vl")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


_MODELS: dict = {}


def model_of(family: str, impl: str = "sdpa"):
    key = (family, impl)
    if key not in _MODELS:
        _MODELS[key] = tiny_model(family, attn_implementation=impl)
    return _MODELS[key]


def inputs_of(model, family: str, batch: int):
    """B=1, or B=2 left-padded with different visual counts per sample."""
    if batch == 1:
        return tiny_inputs(model, family, ["what is in the picture?"])
    extra = {"image_sizes": [(32, 32), (16, 24)]} if family == "qwen2-vl" else {"images_per_prompt": [1, 2]}
    return tiny_inputs(model, family, ["hi", "what is in the picture?"], **extra)


def visual_of(model, inputs):
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    return (ids == model.config.image_token_id) & mask, mask


# --------------------------------------------------------------------------------------------- schedules


def test_aim_28_layer_table():
    r = aim_retain_rates(28)
    assert r[:14] == [1.0] * 14
    assert r[14:21] == [0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]  # layer 14 → 0.875 … 20 → 0.125
    assert r[21:] == [0.0] * 7  # 21+ → 0
    # the released code's formula, literally
    assert r == [1.0 if i < 14 else max(0.0, 1 - (i - 13) * 0.125) for i in range(28)]
    keep = aim_schedule(28).keep  # the decision of layer i applies from layer i + 1
    assert keep == tuple([1.0] * 15 + [0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125] + [0.0] * 6)
    assert aim_schedule(28).cut_layers == tuple(range(15, 23))
    assert aim_schedule(28).score_layers == tuple(range(14, 22))


def test_aim_32_layer_llama_table():
    r = aim_retain_rates(32)
    assert r == [1.0 if i < 13 else max(0.0, 1 - (i - 12) * 0.125) for i in range(32)]
    assert r[13] == 0.875 and r[19] == 0.125 and r[20] == 0.0 and r[12] == 1.0


def test_aim_explicit_bounds_and_counts():
    assert aim_retain_rates(4, 1, 4) == [1.0, 1 - 1 / 3, 1 - 2 / 3, 0.0]
    s = aim_schedule(4, 1, 4)
    assert s.keep == (1.0, 1.0, 1 - 1 / 3, 1 - 2 / 3)
    assert s.counts(16) == [16, 16, 10, 5]  # int(16 * 0.667) = 10, int(16 * 0.333) = 5
    assert aim_schedule(28).count(1568, 15) == 1372 and aim_schedule(28).count(49, 21) == 6  # int(6.125)


@pytest.mark.parametrize("l1,l2,layers", [(14, 14, 28), (15, 14, 28), (0, 10, 28), (14, 29, 28)])
def test_aim_rejects_bad_bounds(l1, l2, layers):
    with pytest.raises(ValueError, match="l1 < l2"):
        aim_retain_rates(layers, l1, l2)


def test_fastv_schedule():
    s = fastv_schedule(4, k=2, ratio=0.75)
    assert s.keep == (1.0, 1.0, 0.25, 0.25) and s.cut_layers == (2,) and s.score_layers == (1,)
    assert fastv_schedule(32).keep[:3] == (1.0, 1.0, 0.5) and fastv_schedule(32).count(576, 2) == 288
    for bad in (dict(k=0), dict(k=4), dict(k=2, ratio=1.5)):
        with pytest.raises(ValueError):
            fastv_schedule(4, **bad)


def test_pyramiddrop_schedule():
    s32 = pyramiddrop_schedule(32)
    assert s32.keep[7] == 1.0 and s32.keep[8] == 0.5 and s32.keep[15] == 0.5
    assert s32.keep[16] == 0.25 and s32.keep[24] == 0.125 and s32.keep[31] == 0.125
    assert s32.counts(576)[8] == 288 and s32.counts(576)[24] == 72
    assert pyramiddrop_schedule(4).keep == (1.0, 0.5, 0.25, 0.125)  # [8,16,24] scaled to [1,2,3]
    with pytest.raises(ValueError, match="not increasing"):
        pyramiddrop_schedule(3)  # [8,16,24] → [1,2,2]
    with pytest.raises(ValueError, match="must lie in"):
        pyramiddrop_schedule(2)  # → [0,1,2]
    with pytest.raises(ValueError, match="same non-zero length"):
        pyramiddrop_schedule(32, layers=(8, 16), ratios=(0.5,))


def test_per_layer_schedule_validation():
    assert per_layer_schedule([1, 1, 0.5, 0.5]).cut_layers == (2,)
    with pytest.raises(ValueError, match="keep\\[0\\] must be 1"):
        per_layer_schedule([0.5, 0.5])
    with pytest.raises(ValueError, match="must not increase"):
        per_layer_schedule([1, 0.5, 0.75])
    with pytest.raises(ValueError, match="fraction"):
        per_layer_schedule([1, 1.5])
    with pytest.raises(ValueError, match="language model has 4"):
        make_schedule([1, 0.5], 4)
    assert make_schedule(pyramiddrop_schedule(4), 4) == pyramiddrop_schedule(4)


def test_pruner_rejects_bad_arguments():
    m = model_of("llava")
    with pytest.raises(ValueError, match="score"):
        InLLMPruner(m, [1, 1, 0.5, 0.5], score="cls")
    with pytest.raises(ValueError, match="mode"):
        InLLMPruner(m, [1, 1, 0.5, 0.5], mode="drop")
    with pytest.raises(ValueError, match="4"):
        InLLMPruner(m, aim_schedule(28))


# --------------------------------------------------------------------------------------------- scores


def _literal_pagerank(probs_or_logits, valid, tau=0.1, iters=5, from_probs=True):
    """One sample: probs (H, N, N) of the tokens that take part; literal power iteration, float64."""
    x = probs_or_logits.double()
    h, n, _ = x.shape
    out = torch.zeros(n, dtype=torch.float64)
    for head in range(h):
        if from_probs:  # softmax(logits / tau) == probs ** (1 / tau), renormalised per row
            m = x[head] ** (1.0 / tau)
        else:
            m = torch.exp((x[head] - x[head].max(-1, keepdim=True).values) / tau)
        m = m / m.sum(-1, keepdim=True)
        dist = torch.full((n,), 1.0 / n, dtype=torch.float64)
        for _ in range(iters):
            new = torch.zeros(n, dtype=torch.float64)
            for i in range(n):
                new += dist[i] * m[i]
            dist = new
        out += dist**2
    return (out / h).sqrt()


def test_pagerank_importance_pure_function():
    g = torch.Generator().manual_seed(0)
    b, h, n = 2, 3, 7
    logits = torch.randn(b, h, n, n, generator=g)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[1, :2] = False  # left padding
    protected = torch.zeros(b, n, dtype=torch.bool)
    protected[:, -1] = True
    allowed = causal & valid[:, None, :, None] & valid[:, None, None, :]
    masked = logits.masked_fill(~allowed, torch.finfo(torch.float32).min)
    got = pagerank_importance(masked, valid, protected)
    for row in range(b):
        idx = valid[row].nonzero().flatten()
        sub = logits[row][:, idx][:, :, idx].masked_fill(~causal[: len(idx), : len(idx)], float("-inf"))
        want = _literal_pagerank(sub, None, from_probs=False)
        torch.testing.assert_close(got[row, idx[:-1]].double(), want[:-1], rtol=1e-5, atol=1e-8)
    assert got[1, :2].tolist() == [-1.0, -1.0] and got[:, -1].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("score", ["pagerank", "fastv"])
def test_scores_match_literal_eager_attention(family, batch, score):
    """First deciding layer: against the stock eager model's attention probabilities."""
    m = model_of(family, "eager")
    inp = inputs_of(m, family, batch)
    visual, valid = visual_of(m, inp)
    sched = [1.0, 1.0, 0.5, 0.25]  # decided by layers 1 and 2
    with torch.no_grad():
        att = m(**inp, output_attentions=True).attentions[1]
    with InLLMPruner(m, sched, score=score) as p, torch.no_grad():
        m(**inp)
        got = p.last_scores[1]
    for row in range(batch):
        idx = valid[row].nonzero().flatten()
        probs = att[row][:, idx][:, :, idx]
        if score == "pagerank":
            want = _literal_pagerank(probs, None)
        else:
            want = probs[:, -1, :].double().mean(0)  # last token, averaged over heads
        vis = visual[row, idx]
        torch.testing.assert_close(got[row, idx][vis].double(), want[vis], rtol=2e-4, atol=1e-8)
        assert bool((got[row, idx][~vis] == 1.0).all()) and bool((got[row][~valid[row]] == -1.0).all())


@pytest.mark.parametrize("score", ["pagerank", "fastv"])
def test_second_cut_scores_match_masked_eager_attention(score):
    """Second deciding layer: literal computation over the tokens still present, from the mask-mode run's
    eager attention (dropped keys masked)."""
    family = "llava"
    m = model_of(family, "eager")
    inp = inputs_of(m, family, 2)
    visual, valid = visual_of(m, inp)
    with InLLMPruner(m, [1.0, 1.0, 0.5, 0.25], score=score, mode="mask") as p, torch.no_grad():
        att = m(**inp, output_attentions=True).attentions[2]
        got = p.last_scores[2]
        first = p.last_scores[1]
    for row in range(2):
        active = valid[row] & ~(visual[row] & (got[row] == -1.0))
        assert int((visual[row] & active).sum()) == int(visual[row].sum()) // 2  # half were dropped at layer 2
        idx = active.nonzero().flatten()
        probs = att[row][:, idx][:, :, idx]
        want = _literal_pagerank(probs, None) if score == "pagerank" else probs[:, -1, :].double().mean(0)
        vis = visual[row, idx]
        torch.testing.assert_close(got[row, idx][vis].double(), want[vis], rtol=2e-4, atol=1e-8)
        # the kept half are the top-scored half of the first decision
        n = int(visual[row].sum())
        top = torch.sort(first[row].masked_fill(~visual[row], float("-inf")), descending=True, stable=True).indices
        assert set(top[: n // 2].tolist()) == set(idx[vis].tolist())


def test_fastv_scores_gqa_and_query_index():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 4, 6, 8, generator=g), torch.randn(1, 2, 6, 8, generator=g)
    got = fastv_scores(q, k, scaling=8**-0.5, query_index=torch.tensor([3]))
    kk = k.repeat_interleave(2, 1)
    want = torch.softmax(torch.einsum("hd,hnd->hn", q[0, :, 3], kk[0])[:, :4] * 8**-0.5, -1).mean(0)
    torch.testing.assert_close(got[0, :4], want)
    assert bool((got[0, 4:] == 0).all())


# --------------------------------------------------------------------------------------------- remove vs mask


def _expected_widths(sched: Schedule, visual, valid):
    length = visual.shape[1]
    n = visual.sum(1).tolist()
    text = (valid & ~visual).sum(1).tolist()
    first = min(sched.cut_layers)
    return [
        length if layer < first else max(t + sched.count(v, layer) for t, v in zip(text, n))
        for layer in range(sched.num_layers)
    ]


CASES = [(f, impl, b) for f in FAMILIES for impl in ("sdpa", "eager") for b in (1, 2)]


@pytest.mark.parametrize("family,impl,batch", CASES)
def test_remove_matches_mask(family, impl, batch):
    m = model_of(family, impl)
    inp = inputs_of(m, family, batch)
    visual, valid = visual_of(m, inp)
    length = inp["input_ids"].shape[1]
    with torch.no_grad():
        stock = m(**inp).logits[:, -1]
    for score, sched in (("pagerank", aim_schedule(4, 1, 4)), ("fastv", fastv_schedule(4, k=2, ratio=0.75))):
        out = {}
        for mode in ("remove", "mask"):
            with InLLMPruner(m, sched, score=score, mode=mode) as p:
                with torch.no_grad():
                    res = m(**inp)
                stats = p.last_stats
                gen = m.generate(**inp, max_new_tokens=6, do_sample=False)
            out[mode] = (res.logits[:, -1], gen, cache_lengths(cache_from_output(res)), stats)
        diff = (out["remove"][0] - out["mask"][0]).abs().max().item()
        assert diff <= 1e-5, (score, diff)
        assert torch.equal(out["remove"][1], out["mask"][1]), score
        assert (out["mask"][0] - stock).abs().max().item() > 1e-3  # the pruning did something
        widths = _expected_widths(sched, visual, valid)
        assert out["remove"][2] == widths, (out["remove"][2], widths)
        assert out["mask"][2] == [length] * 4
        assert out["remove"][3]["width"] == dict(enumerate(widths))
        n = visual.sum(1).tolist()
        assert out["remove"][3]["kept"] == {l: [sched.count(v, l) for v in n] for l in range(4)}
        assert out["remove"][3]["kept"] == out["mask"][3]["kept"]


def test_pipeline_kwargs_beams_and_decode_cache():
    """prepare(..., "none") kwargs (mm_encoder_outputs), beam search, and per-layer cache growth in decoding."""
    from slimvlm.pipeline import prepare

    family = "llava"
    m = model_of(family)
    inp = inputs_of(m, family, 2)
    sched = fastv_schedule(4, k=2, ratio=0.75)
    res = {}
    for mode in ("remove", "mask"):
        with InLLMPruner(m, sched, score="fastv", mode=mode):
            greedy = m.generate(**prepare(m, inp, "none").kwargs, max_new_tokens=5, do_sample=False)
            # fresh kwargs per call: generate expands mm_encoder_outputs in place for beams
            beams = m.generate(**prepare(m, inp, "none").kwargs, max_new_tokens=5, num_beams=3, do_sample=False)
            o = m.generate(
                **prepare(m, inp, "none").kwargs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True
            )
        res[mode] = (greedy, beams, cache_lengths(cache_from_output(o)))
    assert torch.equal(res["remove"][0], res["mask"][0])
    assert torch.equal(res["remove"][1], res["mask"][1])
    length = inp["input_ids"].shape[1]
    widths = _expected_widths(sched, *visual_of(m, inp))
    assert res["remove"][2] == [w + 3 for w in widths]  # 4 new tokens: the last one is not cached yet
    assert res["mask"][2] == [length + 3] * 4
    with InLLMPruner(m, sched, score="fastv"):
        direct = m.generate(**inp, max_new_tokens=5, do_sample=False)
    assert torch.equal(direct, res["remove"][0])


# --------------------------------------------------------------------------------------------- bit identity


@pytest.mark.parametrize("family", FAMILIES)
def test_detached_is_bit_identical(family):
    m = model_of(family)
    inp = inputs_of(m, family, 2)
    with torch.no_grad():
        ref = m(**inp).logits
    ref_gen = m.generate(**inp, max_new_tokens=4, do_sample=False)
    pruner = InLLMPruner(m, aim_schedule(4, 1, 4)).attach()
    with torch.no_grad():
        pruned = m(**inp).logits[:, -1]
    pruner.detach()
    with InLLMPruner(m, fastv_schedule(4), score="fastv", mode="mask"), torch.no_grad():
        m(**inp)
    with torch.no_grad():
        after = m(**inp).logits
    assert not torch.equal(pruned, ref[:, -1])
    assert torch.equal(after, ref)
    assert torch.equal(m.generate(**inp, max_new_tokens=4, do_sample=False), ref_gen)
    assert not any(l._forward_pre_hooks for l in m.model.language_model.layers)


def test_text_only_prompt_is_untouched_while_attached():
    m = model_of("llava")
    inp = tiny_inputs(m, "llava", ["hi", "what is in the picture?"], images_per_prompt=[0, 0])
    with torch.no_grad():
        ref = m(**inp).logits
    with InLLMPruner(m, aim_schedule(4, 1, 4)) as p, torch.no_grad():
        got = m(**inp).logits
        assert p.last_stats["n_visual"] == [0, 0]
    assert torch.equal(got, ref)


def test_language_model_without_visual_positions_raises():
    m = model_of("llava")
    inp = inputs_of(m, "llava", 1)
    emb = m.get_input_embeddings()(inp["input_ids"])
    with InLLMPruner(m, fastv_schedule(4)) as p, torch.no_grad():
        with pytest.raises(RuntimeError, match="no visual positions"):
            m.model.language_model(inputs_embeds=emb)
        visual, _ = visual_of(m, inp)
        p.set_visual_mask(visual)
        out = m.model.language_model(inputs_embeds=emb, use_cache=True)
        assert cache_lengths(cache_from_output(out))[2] == inp["input_ids"].shape[1] - 32


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_batch_without_attention_mask_uses_dead_slots(impl):
    """No attention mask (sdpa gets mask=None) and different visual counts per row: rows are padded with
    masked dead slots in prefill and decoding; remove still equals mask."""
    m = model_of("llava", impl)
    inp = dict(inputs_of(m, "llava", 2))
    inp.pop("attention_mask")  # the pad tokens now count as text
    sched = fastv_schedule(4, k=2, ratio=0.75)
    res = {}
    for mode in ("remove", "mask"):
        with InLLMPruner(m, sched, score="fastv", mode=mode):
            with torch.no_grad():
                o = m(**inp)
            g = m.generate(**inp, max_new_tokens=6, do_sample=False)
        res[mode] = (o.logits[:, -1], g, cache_lengths(cache_from_output(o)))
    assert (res["remove"][0] - res["mask"][0]).abs().max().item() <= 1e-5
    assert torch.equal(res["remove"][1], res["mask"][1])
    length = inp["input_ids"].shape[1]
    # row 0: 64 visual → 16 (width 112), row 1: 128 → 32 (64 live tokens + 48 dead slots)
    assert res["remove"][2] == [length, length, length - 64 + 16, length - 64 + 16]
