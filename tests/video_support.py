"""What the tests of the temporal methods (tests/test_dycoke.py, test_fastvid.py, test_holitom.py, test_evs.py)
share: random videos, the comparison of a method's reduction with the test's per-frame oracle, and one check of a
method through ``slimvlm.apply`` on the tiny video families against that oracle.

The oracle gets each video's frame tokens (and their ``cls_attn``) as the family adapter encodes them and returns,
per frame, the kept ``(features, anchors)``; the check compares with what the pipeline injects into the stock
model, the per-item statistics, the prefill length and ``generate``.
"""

from __future__ import annotations

from typing import Callable

import torch

from slimvlm import testing as T
from slimvlm.methods import get as get_method
from slimvlm.models import adapter_for
from slimvlm.pipeline import apply

#: the tiny families that take videos, each with its own video layout (protected newline / per-frame [CLS] /
#: nothing; Qwen2-VL's temporal patches as frames)
VIDEO_FAMILIES = ("llava-onevision", "video-llava", "llava-next-video", "qwen2-vl")
PROMPTS = ["Describe the video in detail.", "What?"]

_MODELS: dict[str, torch.nn.Module] = {}

Oracle = Callable[[torch.Tensor, "torch.Tensor | None"], list[tuple[torch.Tensor, list[int]]]]


def model_of(fam: str) -> torch.nn.Module:
    if fam not in _MODELS:
        _MODELS[fam] = T.tiny_model(fam)
    return _MODELS[fam]


def randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def video(seed: int, frames: int, n: int, c: int, still: float = 0.0) -> torch.Tensor:
    """``(frames, n, c)``: frame 0 random; each later frame = the previous one plus noise, except a random set of
    positions that stay nearly still (share ``still``), so that frames are partly similar."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(frames, n, c, generator=g)
    calm = torch.rand(n, generator=g) < still
    for f in range(1, frames):
        x[f, calm] = x[f - 1, calm] + 0.01 * torch.randn(int(calm.sum()), c, generator=g)
    return x


def scores(seed: int, frames: int, n: int) -> torch.Tensor:
    return torch.rand(frames, n, generator=torch.Generator().manual_seed(seed))


def _injected(kw: dict, modality: str, counts: list[int]) -> list[torch.Tensor]:
    out = kw["mm_encoder_outputs"][modality].pooler_output
    if isinstance(out, torch.Tensor):
        return list(out.reshape(-1, out.shape[-1]).split(counts))
    return [t.reshape(-1, t.shape[-1]) for t in out]


def check_through_apply(method: str, opts: dict, oracle: Oracle, families=VIDEO_FAMILIES, atol: float = 1e-5) -> None:
    """On every family: a left-padded batch of two prompts (row 0: an image and a video, row 1: a video).
    Each item's kept count and injected tokens equal the oracle's (protected tokens kept at their places, the
    kept tokens in the oracle's order, by anchor where the item has protected tokens), ``last_stats`` give the
    frames, the language model's prefill holds text + kept tokens, and greedy ``generate`` runs."""
    info = get_method(method)
    for fam in families:
        model = model_of(fam)
        inputs = T.tiny_inputs(model, fam, PROMPTS, images_per_prompt=[1, 0], video=True)
        adapter = adapter_for(model)
        with torch.no_grad():
            items = adapter.encode(inputs, need_pre=False, signals=info.signals)
        slim = apply(model, method, **opts)
        kw = slim.prepare(**inputs)
        stats = slim.last_stats
        assert [(s.modality, s.tokens_before, s.frames) for s in stats] == [
            (it.modality, it.num_tokens, it.frames) for it in items
        ], fam
        for modality in ("image", "video"):
            mine = [(it, s) for it, s in zip(items, stats) if it.modality == modality]
            if not mine:
                continue
            got = _injected(kw, modality, [s.tokens_after for _, s in mine])
            for (it, s), tokens in zip(mine, got):
                want = _expected(it, oracle)
                assert s.tokens_after == want.shape[0], (fam, modality, s.tokens_after, want.shape[0])
                torch.testing.assert_close(tokens.float(), want.float(), rtol=0, atol=atol, msg=f"{fam} {modality}")
        # the prefill is the text plus the kept tokens, row by row
        ph = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
        for tid in T.placeholder_token_ids(model).values():
            ph |= inputs["input_ids"] == tid
        text = ((inputs["attention_mask"] != 0) & ~ph).sum(1)
        kept = torch.zeros(2, dtype=torch.long)
        for s in stats:
            kept[s.row] += s.tokens_after
        assert kw["attention_mask"].sum(1).tolist() == (text + kept).tolist(), fam
        with torch.no_grad():
            logits = slim(**inputs).logits
        assert bool(torch.isfinite(logits).all())
        out = slim.generate(**inputs, max_new_tokens=3, do_sample=False)
        length = kw["input_ids"].shape[1]
        assert out.shape[0] == 2 and torch.equal(out[:, :length], kw["input_ids"])


def _expected(item, oracle: Oracle) -> torch.Tensor:
    """The tokens the pipeline must inject for ``item``: the oracle's per-frame choice on its free tokens, the
    protected tokens merged in by position."""
    n = item.num_tokens
    prot = torch.zeros(n, dtype=torch.bool) if item.protected is None else item.protected.cpu()
    free = (~prot).nonzero().flatten()
    f = item.frames
    per = free.shape[0] // f
    feats = item.tokens[free].reshape(f, per, -1)
    attn = item.signals["cls_attn"][free].reshape(f, per) if "cls_attn" in item.signals else None
    rows = oracle(feats, attn)
    tokens, where = [], []
    for i, (x, anchors) in enumerate(rows):
        tokens += list(x.reshape(-1, feats.shape[-1]))
        where += [int(free[i * per + a]) for a in anchors]
    if not bool(prot.any()):
        return torch.stack(tokens) if tokens else feats.new_zeros((0, feats.shape[-1]))
    everything = [(p, t) for p, t in zip(where, tokens)] + [(int(p), item.tokens[p]) for p in prot.nonzero().flatten()]
    everything.sort(key=lambda e: e[0])
    return torch.stack([t for _, t in everything])


def check_against(red, rows, atol: float = 1e-5) -> None:
    """``red`` (one video, row = frame) keeps exactly the oracle's ``rows``: per frame ``(features, anchors)``."""
    assert red.counts == [len(a) for _, a in rows]
    for f, (want, anchors) in enumerate(rows):
        got, got_anchors = red.item(f)
        assert got_anchors.tolist() == anchors, f
        torch.testing.assert_close(got, want, rtol=0, atol=atol)
