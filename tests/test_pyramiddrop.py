"""PyramidDrop: the official rule transcribed literally (``pdrop_forward`` / ``pdrop_rank_drop`` of
Cooperx521/PyramidDrop, inference, one sample, and its decoding) against slimvlm's remove and mask modes,
B=1 and B=4 with different visual counts; budgets; every family through slimvlm.apply."""

from __future__ import annotations

import math

import pytest
import torch

import slimvlm
from slimvlm.inllm import InLLMPruner, pyramiddrop_schedule
from slimvlm.methods import get
from slimvlm.testing import tiny_inputs, tiny_model

from inllm_oracle import FAMILY_CASES, PROMPTS, SIZES, ManualLM, capture, generates_on_family, remove_and_mask


@pytest.fixture(scope="module")
def model():
    return tiny_model("llava-next")


def official_pdrop(model, embeds, visual, layer_list, ratios, steps=3):
    """``pdrop_forward`` for one sample, literally: after layer ``rank_layer - 1``, layer ``rank_layer``'s own
    q/k on its input rank the image tokens by the last instruction token's attention (float32 softmax, mean over
    heads), the top ``int(n * ratio[s + 1])`` stay in order, positions restart at 0; decoding lowers the position
    by the tokens dropped at each stage. Returns first logits, per-stage scores and kept sets (original
    positions), and the greedy tokens."""
    lm = ManualLM(model)
    ratio_list = [1.0] + list(ratios)
    vis = [i for i in range(len(visual)) if bool(visual[i])]
    image_index, n = vis[0], len(vis)
    assert vis == list(range(image_index, image_index + n)), "the official code takes one contiguous image"
    prompt_len = embeds.shape[0] - n
    h = embeds[None]
    orig = list(range(embeds.shape[0]))
    position_ids = list(range(h.shape[1]))
    scores, kept = {}, {}
    with torch.no_grad():
        for layer_idx in range(len(lm.layers)):
            h = lm.layer(layer_idx, h, position_ids)
            rank_layer = layer_idx + 1
            if rank_layer in layer_list:
                stage = layer_list.index(rank_layer)
                image_tokens = int(n * ratio_list[stage])
                keep_length = int(n * ratio_list[stage + 1])
                q, k = lm.qk(rank_layer, h, position_ids)
                last = prompt_len + image_tokens - 1
                heads = []
                for hd in range(q.shape[0]):
                    row = []
                    for j in range(h.shape[1]):
                        row.append(float(q[hd, last] @ k[hd, j]) / math.sqrt(q.shape[-1]) if j <= last else -math.inf)
                    heads.append(torch.softmax(torch.tensor(row, dtype=torch.float64), 0))
                avg = torch.stack(heads).mean(0)[image_index : image_index + image_tokens]
                scores[rank_layer] = {orig[image_index + i]: float(avg[i]) for i in range(image_tokens)}
                top = sorted(sorted(range(image_tokens), key=lambda i: (-float(avg[i]), i))[:keep_length])
                idx = list(range(image_index)) + [image_index + i for i in top] + list(
                    range(image_index + image_tokens, h.shape[1])
                )
                h = h[:, idx]
                orig = [orig[i] for i in idx]
                kept[rank_layer] = set(orig[image_index : image_index + keep_length])
                position_ids = list(range(len(idx)))
        first = lm.logits(h)
        tokens, logits = [], first
        for step in range(steps):
            token = int(logits.argmax())
            tokens.append(token)
            x = lm.embed(token)
            pos = embeds.shape[0] + step
            for layer_idx in range(len(lm.layers)):
                x = lm.layer(layer_idx, x, [pos])
                if layer_idx + 1 in layer_list:
                    stage = layer_list.index(layer_idx + 1)
                    pos -= int(n * ratio_list[stage]) - int(n * ratio_list[stage + 1])
            logits = lm.logits(x)
    return first, scores, kept, tokens


@pytest.mark.parametrize("batch", [1, 4])
def test_matches_the_official_rule(model, batch):
    inputs = tiny_inputs(model, "llava-next", PROMPTS[:batch], image_sizes=SIZES[:batch])
    rows, _ = capture(model, inputs)
    schedule = pyramiddrop_schedule(4)  # [8, 16, 24] of 32 → [1, 2, 3]
    assert schedule.cut_layers == (1, 2, 3)
    results = {}
    for mode in ("remove", "mask"):
        with InLLMPruner(model, schedule, score="pyramiddrop", mode=mode, positions="renumber") as p:
            with torch.no_grad():
                logits = model(**inputs).logits[:, -1]
            stats, scores = p.last_stats, p.last_scores
            gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        results[mode] = logits, stats, scores, gen[:, inputs["input_ids"].shape[1] :]
    pad = (~inputs["attention_mask"].bool()).sum(1).tolist()
    counts = set()
    for b, (embeds, visual) in enumerate(rows):
        first, want_scores, want_kept, tokens = official_pdrop(model, embeds, visual, [1, 2, 3], [0.5, 0.25, 0.125])
        counts.add(int(visual.sum()))
        for mode, (logits, stats, scores, gen) in results.items():
            torch.testing.assert_close(logits[b], first, atol=1e-5, rtol=1e-5)
            assert gen[b].tolist() == tokens, mode
            for layer, want in want_scores.items():
                got = {i: float(scores[layer][b, i + pad[b]]) for i in want}
                assert max(abs(got[i] - want[i]) for i in want) <= 1e-5
                kept = stats["kept_mask"][layer][b].nonzero().flatten() - pad[b]
                assert set(kept.tolist()) == want_kept[layer], (mode, layer)
    assert batch == 1 or len(counts) == batch, "every row has its own visual count"


def test_remove_shortens_and_matches_mask(model):
    inputs = tiny_inputs(model, "llava-next", PROMPTS, image_sizes=SIZES)
    out = remove_and_mask(model, inputs, "pyramiddrop", keep=40)
    n = out["mask"][3]["n_visual"]
    assert out["mask"][3]["kept"] == {0: n, 1: [40] * 4, 2: [20] * 4, 3: [10] * 4}  # keep=40 → 40, 20, 10
    length = inputs["input_ids"].shape[1]
    text = (inputs["attention_mask"].sum(1) - torch.tensor(n)).tolist()
    assert out["remove"][2] == [length] + [max(t + c for t in text) for c in (40, 20, 10)]
    assert out["mask"][2] == [length] * 4


def test_schedule_and_budget():
    s = pyramiddrop_schedule(32)
    assert s.counts(576)[7:9] == [576, 288] and s.counts(576)[16] == 144 and s.counts(576)[24] == 72
    assert pyramiddrop_schedule(32, keep=288).counts(576) == s.counts(576)  # keep = n · ratio[0] is the official
    assert pyramiddrop_schedule(4, keep=64).counts(576) == [576, 64, 32, 16]
    assert pyramiddrop_schedule(4, keep=64).counts(50) == [50, 50, 32, 16]  # at most all of them
    info = get("pyramiddrop")
    assert info.layer_counts(info.make_config(keep=64), 576, 32) == [576] * 8 + [64] * 8 + [32] * 8 + [16] * 8
    assert info.layer_counts(info.make_config(), 576, 4) == [576, 288, 144, 72]
    assert info.make_config().count(576) == 576  # nothing happens before the LLM


def test_cost_gives_the_schedule(capsys):
    from slimvlm.cli import main

    assert main(["cost", "--model", "vicuna-7b", "--visual", "576", "--text", "40", "-m", "pyramiddrop", "--keep", "64", "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    label = next(k for k in report if k.startswith("pyramiddrop"))
    assert report[label]["tokens_per_layer"] == [616] * 8 + [104] * 8 + [72] * 8 + [56] * 8


@pytest.mark.parametrize("fam,video", FAMILY_CASES)
def test_every_family_generates_with_beams_and_sampling(fam, video):
    slim = generates_on_family(fam, video, "pyramiddrop", keep=8)
    assert slim.pruner.positions == ("original" if fam.startswith("qwen") else "renumber")


def test_bad_options():
    m = tiny_model("llava")
    with pytest.raises(ValueError, match="renumber must be"):
        slimvlm.apply(m, "pyramiddrop", renumber="yes")
    with pytest.raises(ValueError, match="non-increasing"):
        slimvlm.apply(m, "pyramiddrop", ratios=(0.25, 0.5, 0.125))
    with pytest.raises(ValueError, match="not increasing"):
        slimvlm.apply(m, "pyramiddrop", layers=(8, 9, 24))  # → [1, 1, 3] on 4 layers
    with pytest.raises(ValueError, match="M-RoPE"):
        slimvlm.apply(tiny_model("qwen2-vl"), "pyramiddrop", renumber=True)
    with pytest.raises(ValueError, match="keep"):
        slimvlm.apply(m, "pyramiddrop", keep=0)
    assert slimvlm.apply(m, "pyramiddrop", renumber=False).pruner.positions == "original"


def test_full_budget_is_stock_and_text_rows_pass_through():
    m = tiny_model("llava")
    inputs = tiny_inputs(m, "llava", ["no image here", "one image"], images_per_prompt=[0, 1])
    with torch.no_grad():
        stock = m(**inputs).logits
        full = slimvlm.apply(m, "pyramiddrop", ratios=(1.0, 1.0, 1.0))(**inputs).logits
    assert torch.equal(full, stock)  # nothing to cut: bit-identical
    for mode in ("remove", "mask"):
        slim = slimvlm.apply(m, "pyramiddrop", prune_mode=mode)
        with torch.no_grad():
            slim(**inputs)
        assert slim.last_inllm_stats["kept"][3] == [0, 8]  # the text-only row has nothing to prune
