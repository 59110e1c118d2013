"""CDPruner (``slimvlm.methods.cdpruner``) against a literal transcription of the official rule
(Theia-4869/CDPruner ``llava_arch.py`` ``encode_images``): relevance token by token, the kernel entry by entry and
the fast greedy MAP of the DPP with a loop over tokens at every step (float64). The DPP oracle itself is checked
against brute-force greedy determinant maximisation.

Pipeline: the instruction embeddings (``slimvlm.pipeline.prompt_signals``) are the LM's input embeddings of the
text after each item's placeholders; through ``slimvlm.apply`` on every tiny family, and on tiny LLaVA the kept
tokens equal the official rule applied to the stock tokens and those embeddings.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from image_pipeline import FAMILY_CASES, FAMILY_IDS, check_selection, make_inputs, model_of, run, source_positions
from slimvlm import testing as T
from slimvlm.methods import CDPrunerConfig, cdpruner, get
from slimvlm.pipeline import encode, prompt_signals

SETTINGS = settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def inputs(seed: int, b: int, n: int, c: int = 16, m: int = 5, ct: int | None = None):
    """features (B, N, C), text (B, M, Ct) and, when ``ct`` is given, separate image embeddings (B, N, Ct)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, c, generator=g)
    text = torch.randn(b, m, ct or c, generator=g)
    emb = None if ct is None else torch.randn(b, n, ct, generator=g)
    return x, text, emb


# ------------------------------------------------------------------------------------------------ literal oracle


def cos(u: torch.Tensor, v: torch.Tensor) -> float:
    nu, nv = float(u.double().norm()), float(v.double().norm())
    return float(u.double() @ v.double()) / (nu * nv) if nu > 0 and nv > 0 else 0.0


def official_relevance(emb, text, negate: bool, per_item: bool, theta=None) -> list[list[float]]:
    """``-(mean_m cos(e_i, t_m))`` per token (text rows of zeros are padding), min-max normalised with the official
    ``+1e-6`` over the batch (official) or per item (clean: constant -> 1), optionally ``exp(α r)``."""
    raw = []
    for b in range(emb.shape[0]):
        rows = [t for t in text[b] if bool((t != 0).any())]
        raw.append([(-1 if negate else 1) * sum(cos(e, t) for t in rows) / max(1, len(rows)) for e in emb[b]])
        if per_item and not rows:
            raw[-1] = None
    out = []
    if per_item:
        for r in raw:
            if r is None or max(r) == min(r):
                out.append([1.0] * emb.shape[1])
            else:
                out.append([(v - min(r) + 1e-6) / (max(r) - min(r)) for v in r])
    else:
        lo, hi = min(min(r) for r in raw), max(max(r) for r in raw)
        out = [[(v - lo + 1e-6) / (hi - lo) for v in r] for r in raw]
    if theta is not None:
        alpha = theta / (2 * (1 - theta))
        out = [[math.exp(alpha * v) for v in r] for r in out]
    return out


def kernel_of(x: torch.Tensor, rel: list[float]) -> list[list[float]]:
    """``L_ij = r_i cos(x_i, x_j) r_j``, one row (token) at a time."""
    xd = x.double()
    norms = xd.norm(dim=-1)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    r = torch.tensor(rel, dtype=torch.float64)
    rows = []
    for i in range(xd.shape[0]):
        c = (xd @ xd[i]) / (safe * safe[i]) * (norms > 0) * (norms[i] > 0)
        c[i] = 1.0 if norms[i] > 0 else 0.0  # cos(x, x) = 1 exactly
        rows.append((r[i] * c * r).tolist())
    return rows


def official_dpp(L: list[list[float]], k: int, fallback: list[float] | None = None) -> list[int]:
    """Fast greedy MAP (the official loop), one token at a time. Once the best gain is not positive: ``fallback``
    order (clean mode), or ValueError (the official arithmetic turns NaN)."""
    n = len(L)
    cis: list[list[float]] = []
    di2 = [L[i][i] for i in range(n)]
    chosen: list[int] = []
    for _ in range(k):
        j = max(range(n), key=lambda t: (di2[t], -t))  # argmax: first maximum
        if not di2[j] > 0:
            if fallback is None:
                raise ValueError("rank spent")
            j = max((t for t in range(n) if t not in chosen), key=lambda t: (fallback[t], -t))
            chosen.append(j)
            di2[j] = -math.inf
            cis.append([0.0] * n)
            continue
        chosen.append(j)
        e = [(L[j][t] - sum(c[j] * c[t] for c in cis)) / math.sqrt(di2[j]) for t in range(n)]
        cis.append(e)
        for t in range(n):
            di2[t] -= e[t] ** 2
        for t in chosen:
            di2[t] = -math.inf
    return chosen


def official_cdpruner(x, text, k, *, emb=None, negate=None, mode="faithful", theta=None) -> list[list[int]]:
    """Kept indices per item (raster order)."""
    negate = (emb is not None) if negate is None else negate
    rel = official_relevance(x if emb is None else emb, text, negate, per_item=mode == "clean", theta=theta)
    out = []
    for b in range(x.shape[0]):
        chosen = official_dpp(kernel_of(x[b], rel[b]), k, fallback=rel[b] if mode == "clean" else None)
        out.append(sorted(chosen))
    return out


def check_against_official(red, x, text, k, **kw):
    assert red.counts == [k] * x.shape[0]
    for b, kept in enumerate(official_cdpruner(x, text, k, **kw)):
        got, anchors = red.item(b)
        assert anchors.tolist() == kept
        torch.testing.assert_close(got, x[b, kept], atol=1e-5, rtol=0)


def test_dpp_oracle_is_greedy_determinant_maximisation():
    """The fast MAP oracle chooses, at every step, the token that maximises det(L_S) (brute force, float64)."""
    x, text, _ = inputs(3, 1, 14, c=8)
    rel = official_relevance(x, text, negate=False, per_item=True)[0]
    L = torch.tensor(kernel_of(x[0], rel), dtype=torch.float64)
    chosen: list[int] = []
    for _ in range(6):
        dets = {j: float(torch.linalg.det(L[chosen + [j]][:, chosen + [j]])) for j in range(14) if j not in chosen}
        chosen.append(max(dets, key=lambda j: (dets[j], -j)))
    assert official_dpp(kernel_of(x[0], rel), 6) == chosen


# ------------------------------------------------------------------------------------------------ vs the oracle


@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize("keep", [64, 32])
def test_official_clip_route_on_576(b, keep):
    """The official LLaVA setting: separate image embeddings in the text space, negated relevance, min-max over
    the whole batch (faithful)."""
    x, text, emb = inputs(keep + b, b, 576, c=96, m=2, ct=6)  # K below the width: the kernel keeps its rank
    red = cdpruner(x, text_embeds=text, image_embeds=emb, keep=keep, mode="faithful")
    check_against_official(red, x, text, keep, emb=emb, mode="faithful")


_ROUTE = [(100, 25, 5), (64, 16, 1), (40, 40, 3), (30, 1, 4), (50, 12, 0)]


@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize(  # no instruction (m = 0): a constant relevance, which faithful mode refuses (tested below)
    "mode,n,keep,m", [("clean", *c) for c in _ROUTE] + [("faithful", *c) for c in _ROUTE if c[2]]
)
def test_pipeline_route_matches_official(mode, b, n, keep, m):
    """The features compared with the instruction themselves (slimvlm's pipeline), both modes."""
    x, text, _ = inputs(n * 3 + keep + m, b, n, c=48, m=m)  # K below the width
    check_against_official(cdpruner(x, text_embeds=text, keep=keep, mode=mode), x, text, keep, mode=mode)


@pytest.mark.parametrize("theta", [0.5, 0.9])
@pytest.mark.parametrize("b", [1, 4])
def test_theta_option_matches_official(theta, b):
    x, text, _ = inputs(11, b, 60)
    red = cdpruner(x, text_embeds=text, keep=15, theta=theta)
    check_against_official(red, x, text, 15, mode="clean", theta=theta)


def test_padding_rows_of_the_instruction_are_ignored():
    x, text, _ = inputs(5, 2, 50)
    padded = torch.cat([text, torch.zeros(2, 3, text.shape[-1])], 1)
    a = cdpruner(x, text_embeds=text, keep=12)
    assert torch.equal(cdpruner(x, text_embeds=padded, keep=12).anchors, a.anchors)


def test_faithful_batch_normalisation_couples_images_clean_does_not():
    x, text, _ = inputs(8, 4, 60)
    alone = [cdpruner(x[i : i + 1], text_embeds=text[i : i + 1], keep=10, mode="faithful").anchors[0] for i in range(4)]
    clean = cdpruner(x, text_embeds=text, keep=10, mode="clean")
    assert [a.tolist() for a in alone] == clean.anchors.tolist()  # clean: batch = each image alone = faithful at B=1


# ------------------------------------------------------------------------------------------------ the defects


def spent_rank_inputs():
    """Three orthogonal tokens and nine zero tokens: the kernel has rank 3 exactly."""
    x = torch.zeros(1, 12, 4)
    x[0, 2, 0], x[0, 7, 1], x[0, 9, 2] = 1.0, 2.0, 0.5
    emb = torch.randn(1, 12, 5, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 2, 5, generator=torch.Generator().manual_seed(1))
    return x, text, emb


def test_spent_rank_clean_fills_by_relevance_faithful_raises():
    x, text, emb = spent_rank_inputs()
    red = cdpruner(x, text_embeds=text, image_embeds=emb, keep=6, mode="clean")
    check_against_official(red, x, text, 6, emb=emb, mode="clean")
    assert {2, 7, 9} <= set(red.anchors[0].tolist())
    with pytest.raises(ValueError, match="rank"):
        cdpruner(x, text_embeds=text, image_embeds=emb, keep=6, mode="faithful")
    assert cdpruner(x, text_embeds=text, image_embeds=emb, keep=3, mode="faithful").anchors.tolist() == [[2, 7, 9]]


def test_constant_relevance_clean_is_pure_diversity_faithful_raises():
    x, _, _ = inputs(2, 2, 30)
    none = torch.zeros(2, 0, x.shape[-1])
    red = cdpruner(x, text_embeds=none, keep=7)
    for b in range(2):  # relevance 1: the DPP of the cosine kernel alone
        assert red.anchors[b].tolist() == sorted(official_dpp(kernel_of(x[b], [1.0] * 30), 7))
    with pytest.raises(ValueError, match="constant"):
        cdpruner(x, text_embeds=none, keep=7, mode="faithful")


# ------------------------------------------------------------------------------------------------ properties


@SETTINGS
@given(b=st.integers(1, 3), n=st.integers(1, 50), frac=st.floats(0.0, 1.0), m=st.integers(0, 4),
       seed=st.integers(0, 9999))
def test_properties(b, n, frac, m, seed):
    keep = max(1, round(frac * n))
    x, text, _ = inputs(seed, b, n, c=6, m=m)
    red = cdpruner(x, text_embeds=text, keep=keep)
    assert red.counts == [keep] * b and red.features.shape == (b, keep, 6)
    for i in range(b):
        anchors = red.anchors[i].tolist()
        assert anchors == sorted(set(anchors)) and torch.equal(red.features[i], x[i, anchors])
    again = cdpruner(x.clone(), text_embeds=text.clone(), keep=keep)
    assert torch.equal(again.anchors, red.anchors)


def test_identity_at_full_budget():
    x, text, _ = inputs(1, 3, 20, c=32)
    red = cdpruner(x, text_embeds=text, ratio=1.0)
    assert torch.equal(red.features, x) and red.anchors.tolist() == [list(range(20))] * 3


def test_the_instruction_changes_the_choice():
    x, text, _ = inputs(4, 1, 80)
    picks = {tuple(cdpruner(x, text_embeds=torch.randn(1, 3, 16, generator=torch.Generator().manual_seed(s)),
                            keep=10).anchors[0].tolist()) for s in range(4)}
    assert len(picks) > 1


def test_negate_default_follows_the_relevance_space():
    """Negated (official CLIP route) when image_embeds are given, not when the features meet the instruction."""
    x, text, emb = inputs(6, 1, 40, ct=8)
    default = cdpruner(x, text_embeds=text, image_embeds=emb, keep=8)
    assert torch.equal(default.anchors, cdpruner(x, text_embeds=text, image_embeds=emb, keep=8, negate=True).anchors)
    plain = cdpruner(x, text_embeds=text, image_embeds=emb, keep=8, negate=False)
    check_against_official(plain, x, text, 8, emb=emb, negate=False, mode="clean")
    assert not torch.equal(plain.anchors, default.anchors)
    own, _, _ = inputs(7, 1, 5)
    mine = cdpruner(x, text_embeds=own, keep=8)
    assert torch.equal(mine.anchors, cdpruner(x, text_embeds=own, keep=8, negate=False).anchors)
    check_against_official(mine, x, own, 8, mode="clean")


# ------------------------------------------------------------------------------------------------ degenerate inputs


def test_bad_inputs_raise_clearly():
    x, text, emb = inputs(0, 2, 20, ct=6)
    with pytest.raises(ValueError, match="text_embeds"):
        cdpruner(x, keep=4)
    with pytest.raises(ValueError, match="text_embeds"):
        cdpruner(x, text_embeds=text[0], image_embeds=emb, keep=4)  # (M, Dt): no batch dimension
    with pytest.raises(ValueError, match="text_embeds"):
        cdpruner(x, text_embeds=text, keep=4)  # width 6 against features of width 16
    with pytest.raises(ValueError, match="image_embeds"):
        cdpruner(x, text_embeds=text, image_embeds=emb[:, :-1], keep=4)
    bad = text.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="text_embeds"):
        cdpruner(x, text_embeds=bad, image_embeds=emb, keep=4)
    assert len(cdpruner(torch.zeros(0, 5, 3), text_embeds=torch.zeros(0, 1, 3), keep=2)) == 0
    assert cdpruner(torch.ones(2, 1, 3), text_embeds=torch.ones(2, 1, 3), keep=2).anchors.tolist() == [[0], [0]]


@pytest.mark.parametrize("opts,word", [({"theta": 1.0}, "theta"), ({"theta": 0}, "theta"), ({"mode": "x"}, "mode"),
                                       ({"negate": "yes"}, "negate")])
def test_bad_options_raise_naming_the_option(opts, word):
    x, text, _ = inputs(0, 1, 10)
    with pytest.raises(ValueError, match=word):
        cdpruner(x, text_embeds=text, **opts)


def test_declaration():
    info = get("cdpruner")
    assert info.applies == "post_projector" and info.signals is None and info.needs == ("text_embeds",)
    assert set(info.accepts) == {"text_embeds", "image_embeds"}


# ------------------------------------------------------------------------------------------------ the pipeline's instruction


def expected_instruction(model, inputs, row: int, first: int, last: int) -> torch.Tensor:
    """The LM embeddings of the row's text tokens after position ``last`` (else before ``first``)."""
    ids, mask = inputs["input_ids"][row], inputs["attention_mask"][row]
    ph = set(T.placeholder_token_ids(model).values())
    text = [p for p in range(len(ids)) if int(mask[p]) and int(ids[p]) not in ph]
    after = [p for p in text if p > last]
    pick = after if after else [p for p in text if p < first]
    return model.get_input_embeddings()(ids[pick])


@pytest.mark.parametrize("fam,modality", [("llava", "image"), ("qwen2-vl", "image"), ("video-llava", "video"),
                                          ("llava-onevision", "image")])
def test_prompt_signals_are_the_text_after_each_item(fam, modality):
    model = model_of(fam)
    inp = make_inputs(model, fam, modality)
    items = encode(model, inp, "cdpruner")
    got = prompt_signals(model, inp, items, "cdpruner")
    assert len(got) == len(items)
    ph = T.placeholder_token_ids(model)
    runs = [(r, s, e - 1) for mod in ph for r, spans in enumerate(T.placeholder_runs(inp["input_ids"], ph[mod]))
            for s, e in spans if any(it.modality == mod for it in items)]
    assert len(runs) == len(items)
    for sig, (row, first, last) in zip(got, runs):
        with torch.no_grad():
            want = expected_instruction(model, inp, row, first, last)
        assert want.shape[0] > 0
        torch.testing.assert_close(sig["text_embeds"], want, rtol=0, atol=0)
    assert prompt_signals(model, inp, items, "divprune") == [{} for _ in items]


def test_prompt_signals_fall_back_to_the_text_before_an_image_at_the_end():
    model = model_of("llava")
    inp = make_inputs(model, "llava", "image", prompts=("Describe it.",))
    ids, mask = inp["input_ids"], inp["attention_mask"]
    ph = T.placeholder_token_ids(model)["image"]
    run_end = int((ids[0] == ph).nonzero().max())
    cut = {"input_ids": ids[:, : run_end + 1], "attention_mask": mask[:, : run_end + 1], "pixel_values": inp["pixel_values"]}
    items = encode(model, cut, "cdpruner")
    (sig,) = prompt_signals(model, cut, items, "cdpruner")
    first = int((ids[0] == ph).nonzero().min())
    with torch.no_grad():
        torch.testing.assert_close(sig["text_embeds"], expected_instruction(model, cut, 0, first, run_end), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ through slimvlm.apply


@pytest.mark.parametrize("fam,modality", FAMILY_CASES, ids=FAMILY_IDS)
def test_through_apply_on_every_family(fam, modality):
    model = model_of(fam)
    check_selection(model, make_inputs(model, fam, modality), "cdpruner", keep=5)


@pytest.mark.parametrize("mode", ["clean", "faithful"])
def test_apply_on_llava_equals_official_on_stock_tokens(mode):
    """Tiny LLaVA, two prompts (left padded): each image's kept tokens are the official rule on its stock projected
    tokens and the LM embeddings of its own prompt's text after the image."""
    model = model_of("llava")
    inp = make_inputs(model, "llava", "image")
    keep = 10
    _, pairs = run(model, inp, "cdpruner", keep=keep, mode=mode)
    ph = T.placeholder_token_ids(model)["image"]
    with torch.no_grad():
        tokens = model.model.get_image_features(pixel_values=inp["pixel_values"], return_dict=True).pooler_output
        for row, ((injected, _), tok) in enumerate(zip(pairs, tokens)):
            where = (inp["input_ids"][row] == ph).nonzero().flatten()
            text = expected_instruction(model, inp, row, int(where.min()), int(where.max()))
            (kept,) = official_cdpruner(tok[None], text[None], keep, mode=mode)
            torch.testing.assert_close(injected, tok[kept], atol=0, rtol=0)


def test_demo_overlay_reduction_reads_the_question(shipped_demo):
    """``slimvlm demo``'s overlay (``reductions_of``) keeps the tokens the LM receives for that question."""
    from slimvlm.demo import scenes
    from slimvlm.demo.app import DEMO_SEED, reductions_of
    from slimvlm.demo.model import make_inputs as demo_inputs

    model, tok = shipped_demo
    inp = demo_inputs(model, tok, [scenes.make_scene(DEMO_SEED)], ["how many red objects ?"])
    (red,) = reductions_of(model, inp, [("cdpruner", {"keep": 16})]).values()
    assert red.counts == [16]
    _, ((injected, item),) = run(model, inp, "cdpruner", keep=16)
    assert source_positions(injected, item.tokens) == red.anchors[0].tolist()


def test_a_reused_encoding_reads_each_prompts_own_instruction():
    """``prepare(..., items=...)`` (one tower pass shared by several prompts, as ``slimvlm eval`` does): every row
    is reduced with its own prompt's instruction."""
    from slimvlm.pipeline import prepare

    model = model_of("llava")
    inp = dict(make_inputs(model, "llava", "image", prompts=("What is red?", "Describe every object in the image.")))
    inp["pixel_values"] = inp["pixel_values"][:1].expand(2, -1, -1, -1)  # one image, two questions
    items = encode(model, {**inp, "input_ids": inp["input_ids"][:1], "attention_mask": inp["attention_mask"][:1],
                           "pixel_values": inp["pixel_values"][:1]}, "cdpruner")
    kept = prepare(model, inp, "cdpruner", items=items * 2, keep=10).kwargs["mm_encoder_outputs"]["image"].pooler_output
    ph = T.placeholder_token_ids(model)["image"]
    tok = items[0].tokens
    picks = []
    with torch.no_grad():
        for row in range(2):
            where = (inp["input_ids"][row] == ph).nonzero().flatten()
            text = expected_instruction(model, inp, row, int(where.min()), int(where.max()))
            (want,) = official_cdpruner(tok[None], text[None], 10, mode="clean")
            torch.testing.assert_close(kept[row], tok[want], atol=0, rtol=0)
            picks.append(want)
    assert picks[0] != picks[1]  # the two questions choose differently
