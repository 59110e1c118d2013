"""AIM and FastV through slimvlm.apply: pre-LLM part + in-LLM pruning attached only during a call."""

from __future__ import annotations

import pytest
import torch

import slimvlm
from slimvlm._compat import cache_from_output
from slimvlm.inllm import cache_lengths
from slimvlm.testing import tiny_inputs, tiny_model

CASES = [("llava", False), ("llava-qwen2", False), ("qwen2-vl", True)]


def _inputs(model, fam, video):
    return tiny_inputs(model, fam, ["a short prompt", "a somewhat longer prompt here"], images_per_prompt=[1, 2], video=video)


@pytest.mark.parametrize("fam,video", CASES)
@pytest.mark.parametrize("method,opts", [("aim", {"l1": 2, "l2": 4}), ("fastv", {"k": 2, "r": 0.75})])
def test_remove_and_mask_agree_through_apply(fam, video, method, opts):
    model = tiny_model(fam)
    inputs = _inputs(model, fam, video)
    removed = slimvlm.apply(model, method, prune_mode="remove", **opts)
    masked = slimvlm.apply(model, method, prune_mode="mask", **opts)
    with torch.no_grad():
        a = removed(**inputs).logits[:, -1]
        b = masked(**inputs).logits[:, -1]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    ga = removed.generate(**inputs, max_new_tokens=4, do_sample=False)
    gb = masked.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(ga, gb)
    widths = removed.last_inllm_stats["width"]
    assert widths[max(widths)] < widths[0], "remove mode really shortens later layers"
    assert len(set(masked.last_inllm_stats["width"].values())) == 1, "mask mode keeps the full length"


def test_model_is_stock_outside_a_call():
    model = tiny_model("llava")
    inputs = _inputs(model, "llava", False)
    with torch.no_grad():
        ref = model(**inputs).logits
        slim = slimvlm.apply(model, "aim", l1=2, l2=4)
        slim(**inputs)
        after = model(**inputs).logits
    assert torch.equal(ref, after)
    assert not slim.pruner.attached


def test_kv_cache_is_shorter_after_the_cut():
    model = tiny_model("llava")
    inputs = tiny_inputs(model, "llava", ["describe"])
    slim = slimvlm.apply(model, "fastv", k=2, r=0.5)
    out = slim.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    lengths = cache_lengths(cache_from_output(out))
    n_visual = slim.last_stats[0].tokens_after
    assert lengths[0] == lengths[1] and lengths[2] == lengths[1] - n_visual // 2
    assert lengths[2:] == [lengths[2]] * (len(lengths) - 2)


def test_aim_merges_to_the_budget_before_the_llm():
    model = tiny_model("llava")
    slim = slimvlm.apply(model, "aim", ratio=0.25, l1=2, l2=4)
    slim(**tiny_inputs(model, "llava", ["x"]))
    assert [(s.tokens_before, s.tokens_after, s.method) for s in slim.last_stats] == [(64, 16, "aim")]


@pytest.mark.parametrize(
    "method,opts,msg",
    [
        ("fastv", {"k": 9}, "below the model's 4 layers"),
        ("fastv", {"r": 1.5}, "r \\(fraction dropped\\)"),
        ("aim", {"l1": 3}, "both l1 and l2"),
        ("aim", {"l1": 3, "l2": 2}, "1 <= l1 < l2"),
        ("aim", {"prune_mode": "drop"}, "prune_mode"),
    ],
)
def test_bad_options(method, opts, msg):
    with pytest.raises(ValueError, match=msg):
        slimvlm.apply(tiny_model("llava"), method, **opts)


FAMILY_CASES = [
    ("llava", False), ("llava-next", False), ("llava-onevision", True), ("video-llava", True),
    ("llava-next-video", True), ("qwen2-vl", True), ("qwen2.5-vl", True),
]


@pytest.mark.parametrize("fam,video", FAMILY_CASES)
@pytest.mark.parametrize("method", ["aim", "fastv"])
def test_every_family_generates_with_beams_and_sampling(fam, video, method):
    model = tiny_model(fam)
    inputs = tiny_inputs(model, fam, ["one", "two words"], images_per_prompt=[1, 1], video=video)
    slim = slimvlm.apply(model, method, **({"l1": 2, "l2": 4} if method == "aim" else {"k": 2}))
    greedy = slim.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert greedy.shape[0] == 2
    beams = slim.generate(**inputs, max_new_tokens=3, num_beams=2)
    assert beams.shape[0] == 2
    torch.manual_seed(0)
    sampled = slim.generate(**inputs, max_new_tokens=3, do_sample=True, num_return_sequences=2)
    assert sampled.shape[0] == 4
    widths = slim.last_inllm_stats["width"]
    assert widths[3] < widths[0]
