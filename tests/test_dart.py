"""DART: the official ``get_retained_image_token`` / ``DART.forward`` (ZichenWen1/DART) transcribed literally for
one sample — Python sets, one loop per pivot — against slimvlm's remove and mask modes, B=1 and B=4 with
different visual counts; budgets; every family through slimvlm.apply."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import slimvlm
from slimvlm.inllm import InLLMPruner, fastv_schedule
from slimvlm.methods import get
from slimvlm.testing import tiny_inputs, tiny_model

from inllm_oracle import FAMILY_CASES, PROMPTS, SIZES, ManualLM, capture, generates_on_family, remove_and_mask


@pytest.fixture(scope="module")
def model():
    return tiny_model("llava-next")


def retained_image_tokens(any_states, last_state, start, length, per_pivot, p_img=4, p_txt=4):
    """``get_retained_image_token``: keys (N, H·D) rank the pivots by L1 norm; each pivot, in the iteration order
    of the Python set, takes the not yet taken image tokens least cosine-similar to it. ``per_pivot(i)``: how many
    the i-th pivot takes (official: TOKEN_TOPK for all)."""
    img_l1 = torch.norm(any_states[start : start + length], p=1, dim=-1)
    txt_l1 = torch.norm(any_states[start + length :], p=1, dim=-1)
    image_indices = (img_l1.topk(p_img).indices + start).tolist()
    query_indices = (txt_l1.topk(min(p_txt, len(txt_l1))).indices + start + length).tolist()
    indices_set = set(image_indices + query_indices)
    valid = set(range(start, start + length)) - set(image_indices)
    valid_list = list(valid)
    for i, item in enumerate(list(indices_set)):
        sims = [-float(F.cosine_similarity(last_state[item], last_state[j], dim=-1)) for j in valid_list]
        top = sorted(range(len(valid_list)), key=lambda t: (-sims[t], valid_list[t]))[: per_pivot(i)]
        picked = [valid_list[t] for t in top]
        indices_set.update(picked)
        valid.difference_update(picked)
        valid_list = list(valid)
    indices_set.difference_update(query_indices)
    return sorted(indices_set)


def official_dart(model, embeds, visual, k_layer, keep, p_img=4, p_txt=4, steps=3):
    """``DART.forward`` for one sample: before layer K, layer K-1's post-RoPE keys and its output through the final
    norm choose the image tokens; the others leave the sequence, the kept ones keep their positions
    (``position_ids = keep_indexs``). Returns first logits, the kept image positions, the greedy tokens."""
    lm = ManualLM(model)
    vis = [i for i in range(len(visual)) if bool(visual[i])]
    start, length = vis[0], len(vis)
    assert vis == list(range(start, start + length))
    extra, pivots = keep - p_img, p_img + p_txt
    h, positions = embeds[None], list(range(embeds.shape[0]))
    h_in = h
    with torch.no_grad():
        for layer_idx in range(len(lm.layers)):
            if layer_idx == k_layer:
                _, keys = lm.qk(k_layer - 1, h_in, positions)
                any_states = keys.permute(1, 0, 2).reshape(keys.shape[1], -1)
                state = lm.lm.norm(h)[0]
                retained = retained_image_tokens(
                    any_states, state, start, length, lambda i: extra // pivots + (1 if i < extra % pivots else 0), p_img, p_txt
                )
                keep_indexs = sorted(list(range(start)) + retained + list(range(start + length, h.shape[1])))
                h, positions = h[:, keep_indexs], keep_indexs
            h_in = h
            h = lm.layer(layer_idx, h, positions)
        first = lm.logits(h)
        tokens, logits = [], first
        for step in range(steps):
            tokens.append(int(logits.argmax()))
            x = lm.embed(tokens[-1])
            for layer_idx in range(len(lm.layers)):
                x = lm.layer(layer_idx, x, [embeds.shape[0] + step])
            logits = lm.logits(x)
    return first, set(retained), tokens


@pytest.mark.parametrize("batch,budget", [(1, {"keep": 44}), (4, {"keep": 44}), (4, {"ratio": 0.3})])
def test_matches_the_official_rule(model, batch, budget):
    """keep=44 = 4 image pivots + 8 pivots × 5: the official TOKEN_TOPK = 5; ratio 0.3: a different count per
    row, the remainder of each split going to the first pivots."""
    inputs = tiny_inputs(model, "llava-next", PROMPTS[:batch], image_sizes=SIZES[:batch])
    rows, _ = capture(model, inputs)
    n = [int(v.sum()) for _, v in rows]
    counts = [budget["keep"]] * batch if "keep" in budget else [int(v * budget["ratio"]) for v in n]
    schedule = fastv_schedule(4, 1, 0.0, keep=budget["keep"]) if "keep" in budget else fastv_schedule(4, 1, 1 - budget["ratio"])
    assert [schedule.count(v, 1) for v in n] == counts
    # positions counted from each row's first token, as generate numbers a left-padded batch: post-RoPE keys
    # (whose L1 norms pick the pivots) depend on absolute positions
    mask = inputs["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    results = {}
    for mode in ("remove", "mask"):
        with InLLMPruner(model, schedule, score="dart", mode=mode) as p:
            with torch.no_grad():
                logits = model(**inputs, position_ids=positions).logits[:, -1]
            stats = p.last_stats
            gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        results[mode] = logits, stats, gen[:, inputs["input_ids"].shape[1] :]
    pad = (~inputs["attention_mask"].bool()).sum(1).tolist()
    for b, (embeds, visual) in enumerate(rows):
        first, kept, tokens = official_dart(model, embeds, visual, 1, counts[b])
        assert len(kept) == counts[b]
        for mode, (logits, stats, gen) in results.items():
            got = set((stats["kept_mask"][1][b].nonzero().flatten() - pad[b]).tolist())
            assert got == kept, mode
            torch.testing.assert_close(logits[b], first, atol=1e-5, rtol=1e-5)
            assert gen[b].tolist() == tokens, mode
    assert batch == 1 or len(set(counts)) > 1 or "keep" in budget


def test_pivot_order_is_the_python_set_order():
    """Two pivots that both want token 5 first: the one the official set visits first gets it. set([2, 9]) visits
    9 (slot 9 & 7 = 1) before 2, so the text pivot 9 takes 5 and the image pivot 2 its second choice, 6."""
    from slimvlm.inllm.scores import dart_select

    assert list(set([2, 9])) == [9, 2]
    states = torch.tensor([[0.7, 0.7]] * 10)
    states[2], states[9] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])  # the two pivots
    states[5] = torch.tensor([-1.0, -1.0])  # least similar to both
    states[6] = torch.tensor([-0.6, 0.8])  # next for pivot 2
    states[7] = torch.tensor([0.8, -0.6])  # next for pivot 9
    keys = torch.zeros(1, 1, 10, 2)
    keys[0, 0, 2] = keys[0, 0, 9] = 10.0
    visual = torch.tensor([[True] * 9 + [False]])
    kept, _ = dart_select(keys, states[None], visual, torch.ones(1, 10, dtype=torch.bool), torch.tensor([3]),
                          torch.arange(10)[None], pivot_image=1, pivot_text=1)
    assert kept[0].nonzero().flatten().tolist() == [2, 5, 6]  # visiting 2 first would keep [2, 5, 7]


def test_remove_shortens_and_matches_mask(model):
    inputs = tiny_inputs(model, "llava-next", PROMPTS, image_sizes=SIZES)
    out = remove_and_mask(model, inputs, "dart", k=2, keep=36)
    n = out["mask"][3]["n_visual"]
    assert out["mask"][3]["kept"] == {0: n, 1: n, 2: [36] * 4, 3: [36] * 4}
    length = inputs["input_ids"].shape[1]
    text = (inputs["attention_mask"].sum(1) - torch.tensor(n)).tolist()
    assert out["remove"][2] == [length, length] + [max(t + 36 for t in text)] * 2
    assert out["mask"][2] == [length] * 4


def test_budget_and_cost():
    info = get("dart")
    assert info.layer_counts(info.make_config(keep=64), 576, 32) == [576, 576] + [64] * 30
    assert info.layer_counts(info.make_config(), 576, 32)[2] == 127  # ratio 0.222: the official 0.778 reduction
    assert info.layer_counts(info.make_config(k=1, keep=128), 100, 4) == [100, 100, 100, 100]
    assert info.make_config().count(576) == 576


@pytest.mark.parametrize("fam,video", FAMILY_CASES)
def test_every_family_generates_with_beams_and_sampling(fam, video):
    generates_on_family(fam, video, "dart", keep=12)


@pytest.mark.parametrize(
    "opts,msg",
    [({"k": 9}, "below the model's 4 layers"), ({"keep": 4, "ratio": 0.5}, "not both"), ({"pivot_image": -1}, "pivot_image"),
     ({"pivot_image": 0, "pivot_text": 0}, "pivot"), ({"prune_mode": "drop"}, "prune_mode")],
)
def test_bad_options(opts, msg):
    with pytest.raises(ValueError, match=msg):
        slimvlm.apply(tiny_model("llava"), "dart", **opts)


def test_full_budget_is_stock_and_text_rows_pass_through():
    m = tiny_model("llava")
    inputs = tiny_inputs(m, "llava", ["no image here", "one image"], images_per_prompt=[0, 1])
    with torch.no_grad():
        stock = m(**inputs).logits
        full = slimvlm.apply(m, "dart", keep=64)(**inputs).logits  # every one of the 64 visual tokens stays
    torch.testing.assert_close(full, stock, atol=1e-6, rtol=1e-6)
    out = {}
    for mode in ("remove", "mask"):
        slim = slimvlm.apply(m, "dart", prune_mode=mode, keep=10)
        with torch.no_grad():
            out[mode] = slim(**inputs).logits[:, -1]
        assert slim.last_inllm_stats["kept"][3] == [0, 10]
    assert (out["remove"] - out["mask"]).abs().max().item() <= 1e-5
