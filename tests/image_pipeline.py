"""Shared by the tests of the pre-LLM image methods (FasterVLM, VisPruner, DivPrune, CDPruner): run a method
through ``slimvlm.apply`` on a tiny family and read back what the language model received, per image / video.

The stock tokens come from the adapters' stock path (bit-identical to ``get_*_features``, tests/test_pipeline*.py);
the injected ones from a forward pre-hook on the language model. Nothing here calls the method under test.
"""

from __future__ import annotations

import torch
from torch import nn

from slimvlm import testing as T
from slimvlm.models import adapter_for
from slimvlm.pipeline import apply

#: every tiny family with the modalities it takes (images for all; videos where the family has them).
FAMILY_CASES = [(f, "image") for f in T.FAMILIES] + [(f, "video") for f in T.VIDEO_FAMILIES]
FAMILY_IDS = [f"{f}-{m}" for f, m in FAMILY_CASES]

_MODELS: dict[tuple[str, str], nn.Module] = {}


def model_of(fam: str, attn: str = "sdpa") -> nn.Module:
    if (fam, attn) not in _MODELS:
        _MODELS[(fam, attn)] = T.tiny_model(fam, attn_implementation=attn)
    return _MODELS[(fam, attn)]


def make_inputs(model: nn.Module, fam: str, modality: str, prompts=("Describe the image.", "What is red?")):
    """B = len(prompts), left padded; images of different sizes where the family allows them."""
    bsz = len(prompts)
    if modality == "image":
        ipp = [1] * bsz
        sizes = {"qwen2-vl": [(48, 32), (32, 48)], "qwen2.5-vl": [(48, 32), (32, 48)]}.get(fam)
        if fam in ("llava-next", "llava-onevision", "llava-next-video"):
            sizes = [(64, 40), (32, 32)]
        sizes = None if sizes is None else sizes[:bsz]
    else:
        ipp, sizes = [0] * bsz, None
    return T.tiny_inputs(model, fam, list(prompts), images_per_prompt=ipp, video=modality == "video", image_sizes=sizes)


def run(model: nn.Module, inputs, method: str, **opts):
    """``(slim, per item: (injected tokens (m, D), stock item))``: what the LM received at each item's kept
    placeholders, next to the item as the adapter's stock path encodes it (tokens, protected, frames)."""
    slim = apply(model, method, **opts)
    seen = []
    handle = model.model.language_model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["inputs_embeds"].detach().clone()), with_kwargs=True
    )
    try:
        with torch.no_grad():
            kw = slim.prepare(**inputs)
            slim(**inputs)
    finally:
        handle.remove()
    ids = kw["input_ids"]
    embeds = seen[0]
    with torch.no_grad():
        items = adapter_for(model).encode(inputs, need_pre=False, signals=None)
    out = []
    ph = T.placeholder_token_ids(model)
    stats = list(slim.last_stats)
    for modality in ph:
        rows = embeds.reshape(-1, embeds.shape[-1])[(ids == ph[modality]).flatten()]
        mine = [it for it in items if it.modality == modality]
        counts = [s.tokens_after for s in stats if s.modality == modality]
        out += list(zip(rows.split(counts), mine)) if counts else []
    return slim, out


def source_positions(injected: torch.Tensor, stock: torch.Tensor, atol: float = 1e-5) -> list[int]:
    """For each injected row, the index of the stock row it equals (within ``atol``); fails if one matches none."""
    dist = (injected[:, None, :] - stock[None, :, :]).abs().amax(-1)  # (m, n)
    best = dist.argmin(1)
    worst = float(dist.gather(1, best[:, None]).max()) if len(best) else 0.0
    assert worst <= atol, f"an injected token equals no stock token (max diff {worst:.2e})"
    return best.tolist()


def check_selection(model: nn.Module, inputs, method: str, keep: int) -> None:
    """A selection method through ``slimvlm.apply``: per item, every protected token plus, per frame,
    ``min(keep, n_f)`` of the frame's own stock tokens, each at most once, in source order."""
    slim, pairs = run(model, inputs, method, keep=keep)
    assert len(pairs) == len(slim.last_stats) > 0
    for (injected, item), stat in zip(pairs, slim.last_stats):
        prot = torch.zeros(item.num_tokens, dtype=torch.bool) if item.protected is None else item.protected
        n_prot = int(prot.sum())
        per_frame = (item.num_tokens - n_prot) // item.frames
        assert stat.tokens_before == item.num_tokens
        assert stat.tokens_after == min(keep, per_frame) * item.frames + n_prot
        assert bool(torch.isfinite(injected).all())
        is_prot = (injected[:, None, :] == item.tokens[prot][None]).all(-1).any(1)
        assert int(is_prot.sum()) == n_prot, "every protected token reaches the LM once"
        src = source_positions(injected[~is_prot], item.tokens[~prot])
        assert src == sorted(set(src)), "kept tokens come once each, in source order"
        per = torch.bincount(torch.tensor(src, dtype=torch.long) // per_frame, minlength=item.frames)
        assert per.tolist() == [min(keep, per_frame)] * item.frames
