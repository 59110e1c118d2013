"""SparseVLM v1.5: the official ``LlamaDynamicvitModel.forward`` (Gumpest/SparseVLMs: raters, stage ranking,
recycling by ``cluster_and_merge``, renumbered positions, per-layer decoding positions) transcribed literally for
one sample — one loop per token — against slimvlm's remove and mask modes, B=1 and B=4 with different visual
counts; stage counts and budgets; every family through slimvlm.apply."""

from __future__ import annotations

import math

import pytest
import torch

import slimvlm
from slimvlm.inllm import InLLMPruner
from slimvlm.inllm.schedules import Recycle, sparsevlm_schedule, sparsevlm_stage_counts
from slimvlm.methods import get
from slimvlm.testing import tiny_inputs, tiny_model

from inllm_oracle import FAMILY_CASES, PROMPTS, SIZES, ManualLM, capture, generates_on_family, remove_and_mask


@pytest.fixture(scope="module")
def model():
    return tiny_model("llava-next")


def cluster_and_merge(xs, clusters):
    """DPC-KNN (``utils.cluster_and_merge``), token by token: densities from the ``clusters`` nearest distances
    (self included), parent distance to the nearest denser token (the largest distance for the densest; the
    official noise replaced by: equal densities, the earlier token is denser), centres by parent distance ×
    density, every token to its nearest centre. Returns the merged tokens and the centres (indices into xs)."""
    m, c = len(xs), xs[0].shape[0]
    d = [[float(torch.norm(xs[i] - xs[j])) / math.sqrt(c) for j in range(m)] for i in range(m)]
    density = [math.exp(-sum(v * v for v in sorted(d[i])[:clusters]) / clusters) for i in range(m)]
    d_max = max(max(row) for row in d)

    def denser(j, i):
        return density[j] > density[i] or (density[j] == density[i] and j < i)

    parent = [min(d[i][j] if denser(j, i) else d_max for j in range(m)) for i in range(m)]
    score = [parent[i] * density[i] for i in range(m)]
    centres = sorted(range(m), key=lambda i: (-score[i], i))[:clusters]
    assign = [min(range(clusters), key=lambda t: (d[centres[t]][j], t)) for j in range(m)]
    for t, ctr in enumerate(centres):
        assign[ctr] = t
    merged = []
    for t in range(clusters):
        members = [j for j in range(m) if assign[j] == t]
        total = torch.zeros_like(xs[0])
        for j in members:
            total = total + xs[j] * (1.0 / (len(members) + 1e-6))
        merged.append(total)
    return merged, centres


def official_sparsevlm(model, embeds, visual, pruning_loc, stage_counts, steps=3):
    """One sample through ``LlamaDynamicvitModel.forward`` (v1.5, inference). Returns first logits, per-stage
    relation scores and kept tokens (original positions; a merged token at its centre's), the greedy tokens."""
    lm = ManualLM(model)
    vis = [i for i in range(len(visual)) if bool(visual[i])]
    v_start, n = vis[0], len(vis)
    assert vis == list(range(v_start, v_start + n))
    # text raters (3.2): softmax over the text of v · t, averaged over the visual tokens; above the mean
    v_t, t_t = embeds[v_start : v_start + n], embeds[v_start + n :]
    m_v_t = torch.softmax(v_t @ t_t.T, dim=1).mean(0)
    raters = [j for j in range(len(m_v_t)) if float(m_v_t[j]) > float(m_v_t.mean())]
    h, orig, positions, v_num = embeds[None], list(range(embeds.shape[0])), list(range(embeds.shape[0])), n
    scores, kept = {}, {}
    with torch.no_grad():
        for layer_idx in range(len(lm.layers)):
            h_in = h
            h = lm.layer(layer_idx, h, positions)
            if layer_idx not in pruning_loc:
                continue
            probs = lm.probs(layer_idx, h_in, positions).mean(0)
            text_start = v_start + v_num
            rel = [sum(float(probs[text_start + j, v_start + i]) for j in raters) / len(raters) for i in range(v_num)]
            scores[layer_idx] = {orig[v_start + i]: rel[i] for i in range(v_num)}
            keep_n = min(stage_counts[pruning_loc.index(layer_idx)], v_num - 1)
            sel = sorted(sorted(range(v_num), key=lambda i: (-rel[i], i))[:keep_n])
            pruned = [i for i in range(v_num) if i not in sel]
            recycled = sorted(range(len(pruned)), key=lambda t: (-rel[pruned[t]], t))[: int(len(pruned) * 0.3) + 1]
            merged, centres = cluster_and_merge([h[0, v_start + pruned[t]] for t in recycled], int(len(recycled) / 10) + 1)
            select = list(range(v_start)) + [v_start + i for i in sel] + list(range(text_start, h.shape[1]))
            cut = v_start + keep_n
            h = torch.cat([h[0, select[:cut]], torch.stack(merged), h[0, select[cut:]]])[None]
            orig = (
                [orig[i] for i in select[:cut]]
                + [orig[v_start + pruned[recycled[c]]] for c in centres]
                + [orig[i] for i in select[cut:]]
            )
            v_num = keep_n + len(merged)
            kept[layer_idx + 1] = set(orig[v_start : v_start + v_num])
            positions = list(range(h.shape[1]))  # position_ids[:, :new_len]
        first = lm.logits(h)
        tokens, logits = [], first
        for _ in range(steps):
            tokens.append(int(logits.argmax()))
            x = lm.embed(tokens[-1])
            for layer_idx in range(len(lm.layers)):  # each layer numbers the new token by its own cache length
                x = lm.layer(layer_idx, x, [lm.cache.get_seq_length(layer_idx)])
            logits = lm.logits(x)
    return first, scores, kept, tokens


@pytest.mark.parametrize("batch", [1, 4])
def test_matches_the_official_rule(model, batch):
    inputs = tiny_inputs(model, "llava-next", PROMPTS[:batch], image_sizes=SIZES[:batch])
    rows, _ = capture(model, inputs)
    schedule = sparsevlm_schedule(4, keep=32)  # [2, 6, 15] of 32 → [0, 1, 2]; 64-list halved: 33, 15, 9
    assert schedule.cut_layers == (1, 2, 3) and sparsevlm_stage_counts(32) == (33, 15, 9)
    results = {}
    for mode in ("remove", "mask"):
        with InLLMPruner(model, schedule, score="sparsevlm", mode=mode, positions="renumber") as p:
            with torch.no_grad():
                logits = model(**inputs).logits[:, -1]
            stats, scores = p.last_stats, p.last_scores
            gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        results[mode] = logits, stats, scores, gen[:, inputs["input_ids"].shape[1] :]
    pad = (~inputs["attention_mask"].bool()).sum(1).tolist()
    merged_counts = set()
    for b, (embeds, visual) in enumerate(rows):
        first, want_scores, want_kept, tokens = official_sparsevlm(model, embeds, visual, [0, 1, 2], (33, 15, 9))
        merged_counts.add(len(want_kept[1]) - 33)
        for mode, (logits, stats, scores, gen) in results.items():
            for layer, want in want_scores.items():
                got = {i: float(scores[layer][b, i + pad[b]]) for i in want}
                assert max(abs(got[i] - want[i]) for i in want) <= 1e-5, (mode, layer)
            for layer, want in want_kept.items():
                got = set((stats["kept_mask"][layer][b].nonzero().flatten() - pad[b]).tolist())
                assert got == want, (mode, layer)
            torch.testing.assert_close(logits[b], first, atol=1e-5, rtol=1e-5)
            assert gen[b].tolist() == tokens, mode
    assert batch == 1 or len(merged_counts) > 1, "rows recycle different numbers of tokens"


def test_dpc_knn_matches_the_loops():
    from slimvlm.inllm.scores import dpc_knn_merge

    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 23, 8, generator=g)
    valid = torch.ones(3, 23, dtype=torch.bool)
    valid[1, 15:] = False
    valid[2, 4:] = False
    clusters = torch.tensor([3, 2, 1])
    centres, assign, merged = dpc_knn_merge(x, valid, clusters)
    for b in range(3):
        m = int(valid[b].sum())
        want, want_centres = cluster_and_merge([x[b, j] for j in range(m)], int(clusters[b]))
        assert centres[b, : int(clusters[b])].tolist() == want_centres
        assert bool((centres[b, int(clusters[b]) :] == -1).all())
        torch.testing.assert_close(merged[b, : len(want)], torch.stack(want), atol=1e-6, rtol=1e-6)
        assert bool((assign[b, m:] == -1).all())


def test_raters_match_the_official_formula():
    from slimvlm.inllm.scores import sparsevlm_raters

    g = torch.Generator().manual_seed(0)
    e = torch.randn(2, 12, 6, generator=g)
    visual = torch.zeros(2, 12, dtype=torch.bool)
    visual[0, 2:7] = True
    visual[1, 4:9] = True
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, :2] = False  # left padding
    got = sparsevlm_raters(e, visual, valid)
    for b, (s, t) in enumerate([(2, 7), (4, 9)]):
        m = torch.softmax(e[b, s:t] @ e[b, t:].T, dim=1).mean(0)
        want = [t + j for j in range(len(m)) if float(m[j]) > float(m.mean())]
        assert got[b].nonzero().flatten().tolist() == want


def test_remove_shortens_and_matches_mask(model):
    inputs = tiny_inputs(model, "llava-next", PROMPTS, image_sizes=SIZES)
    out = remove_and_mask(model, inputs, "sparsevlm", keep=64)
    n = out["mask"][3]["n_visual"]
    schedule = sparsevlm_schedule(4, keep=64)
    assert out["mask"][3]["kept"] == {layer: [schedule.count(v, layer) for v in n] for layer in range(4)}
    assert out["remove"][3]["kept"] == out["mask"][3]["kept"]
    length = inputs["input_ids"].shape[1]
    text = (inputs["attention_mask"].sum(1) - torch.tensor(n)).tolist()
    assert out["remove"][2] == [length] + [max(t + schedule.count(v, layer) for t, v in zip(text, n)) for layer in (1, 2, 3)]
    assert out["mask"][2] == [length] * 4


def test_stage_counts_and_recycled_counts():
    assert sparsevlm_stage_counts(64) == (66, 30, 17) and sparsevlm_stage_counts(192) == (300, 200, 110)
    assert sparsevlm_stage_counts(160) == (302, 155, 73)  # halfway between 128 and 192
    assert sparsevlm_stage_counts(384) == (600, 400, 220) and sparsevlm_stage_counts(32) == (33, 15, 9)
    s = sparsevlm_schedule(32, keep=64)
    assert s.cut_layers == (3, 7, 16) and s.score_layers == (2, 6, 15)
    # 576 → 66 kept + merged from 510 pruned: m = int(153) + 1 = 154, int(15.4) + 1 = 16 → 82; then 30 + 2; 17 + 1
    assert s.counts(576) == [576] * 3 + [82] * 4 + [32] * 9 + [18] * 16
    assert Recycle().merged(510) == 16 and Recycle().merged(0) == 0
    plain = sparsevlm_schedule(32, keep=64, recycle=None)
    assert plain.counts(576)[3] == 66 and plain.counts(576)[-1] == 17
    info = get("sparsevlm")
    assert info.layer_counts(info.make_config(keep=64), 576, 32) == s.counts(576)
    assert info.layer_counts(info.make_config(stage_counts=(10, 5, 5)), 40, 4) == [40, 12, 6, 6]


@pytest.mark.parametrize("fam,video", FAMILY_CASES)
def test_every_family_generates_with_beams_and_sampling(fam, video):
    generates_on_family(fam, video, "sparsevlm", keep=8)


@pytest.mark.parametrize(
    "opts,msg",
    [({"keep": 8, "stage_counts": (4, 2, 1)}, "not both"), ({"stage_counts": (4, 8, 1)}, "must not increase"),
     ({"stage_counts": (4, 2)}, "one whole number"), ({"layers": (2, 3, 15)}, "not increasing"),
     ({"renumber": "yes"}, "renumber must be"), ({"keep": 0}, "keep")],
)
def test_bad_options(opts, msg):
    with pytest.raises(ValueError, match=msg):
        slimvlm.apply(tiny_model("llava"), "sparsevlm", **opts)


def test_text_rows_pass_through_and_runs_repeat():
    m = tiny_model("llava")
    inputs = tiny_inputs(m, "llava", ["no image here", "one image"], images_per_prompt=[0, 1])
    out = {}
    for mode in ("remove", "mask"):
        slim = slimvlm.apply(m, "sparsevlm", prune_mode=mode, stage_counts=(20, 10, 5))
        with torch.no_grad():
            out[mode] = slim(**inputs).logits[:, -1]
            again = slim(**inputs).logits[:, -1]
        assert torch.equal(again, out[mode])  # no random tie-break noise: runs repeat exactly
        # 64 → 20 + merged(44: m = 14, 2 clusters) = 22 → 10 + merged(12: m = 4, 1) = 11 → 5 + 1
        assert slim.last_inllm_stats["kept"] == {0: [0, 64], 1: [0, 22], 2: [0, 11], 3: [0, 6]}
    assert (out["remove"] - out["mask"]).abs().max().item() <= 1e-5
