"""Pieces for the slow oracles of the in-LLM methods (tests/test_dart.py, test_sparsevlm.py,
test_pyramiddrop.py): a stock forward that records what the language model receives, and a manual language
model driven one decoder layer at a time for ONE unpadded sample, the way the official code drives its layers.
Also the checks the three share through ``slimvlm.apply`` (every family generates; remove and mask agree). Nothing
here knows a method, and the oracles themselves do not use slimvlm.inllm."""

from __future__ import annotations

import inspect
import math

import torch
from transformers import DynamicCache

#: the prompts and image sizes (a different visual count per row on LLaVA-NeXT) of the oracle batches.
PROMPTS = ["what is it", "a", "where is the red cube now", "two words"]
SIZES = [(32, 32), (64, 32), (32, 64), (48, 48)]

#: every family (tiny model), with a video where it takes one.
FAMILY_CASES = [
    ("llava", False), ("llava-next", False), ("llava-onevision", True), ("video-llava", True),
    ("llava-next-video", True), ("qwen2-vl", True), ("qwen2.5-vl", True),
]


def generates_on_family(fam: str, video: bool, method: str, **options):
    """``slimvlm.apply(method, **options)`` on a tiny ``fam`` model generates greedy, with beams and with sampling for
    a batch of two prompts, and its layer 3 runs narrower than layer 0; returns the wrapper."""
    import slimvlm
    from slimvlm.testing import tiny_inputs, tiny_model

    m = tiny_model(fam)
    inputs = tiny_inputs(m, fam, ["one", "two words"], images_per_prompt=[1, 1], video=video)
    slim = slimvlm.apply(m, method, **options)
    assert slim.generate(**inputs, max_new_tokens=3, do_sample=False).shape[0] == 2
    assert slim.generate(**inputs, max_new_tokens=3, num_beams=2).shape[0] == 2
    torch.manual_seed(0)
    assert slim.generate(**inputs, max_new_tokens=3, do_sample=True, num_return_sequences=2).shape[0] == 4
    widths = slim.last_inllm_stats["width"]
    assert widths[3] < widths[0]
    return slim


def capture(model, inputs):
    """Stock forward; returns per row ``(embeds (L_b, C), visual (L_b,) bool)`` of its valid tokens and the stock
    last-position logits ``(B, V)``."""
    lm = model.model.language_model
    seen = {}

    def hook(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach()

    h = lm.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            logits = model(**inputs).logits[:, -1]
    finally:
        h.remove()
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    rows = []
    for b in range(ids.shape[0]):
        rows.append((seen["embeds"][b][mask[b]], ids[b][mask[b]] == model.config.image_token_id))
    return rows, logits


class ManualLM:
    """The language model of ``model`` for one sample, layer by layer, with its own KV cache."""

    def __init__(self, model):
        self.lm = model.model.language_model
        self.head = model.lm_head
        self.layers = list(self.lm.layers)
        self.cache = DynamicCache(config=self.lm.config)
        params = inspect.signature(self.layers[0].forward).parameters
        self.cache_key = "cache" if "cache" in params else "past_key_values"

    def rope(self, h, positions):
        """``(cos, sin)`` for ``positions`` (a list or 1-D tensor)."""
        pos = torch.as_tensor(positions, dtype=torch.long)[None]
        return self.lm.rotary_emb(h, position_ids=pos)

    def layer(self, i, h, positions):
        """Run decoder layer ``i`` on ``h`` (1, N, C) at ``positions``, causal, appending to the cache."""
        kw = {self.cache_key: self.cache, "use_cache": True}
        pos = torch.as_tensor(positions, dtype=torch.long)[None]
        out = self.layers[i](h, attention_mask=None, position_ids=pos, position_embeddings=self.rope(h, positions), **kw)
        return out[0] if isinstance(out, tuple) else out

    def qk(self, i, h_in, positions):
        """Post-RoPE queries and keys of layer ``i`` for its input ``h_in`` (1, N, C): ``(H, N, D)`` each, the keys
        repeated for their query group."""
        layer = self.layers[i]
        attn = layer.self_attn
        x = layer.input_layernorm(h_in)
        d = attn.head_dim
        q = attn.q_proj(x).view(1, x.shape[1], -1, d).transpose(1, 2)
        k = attn.k_proj(x).view(1, x.shape[1], -1, d).transpose(1, 2)
        cos, sin = self.rope(h_in, positions)
        cos, sin = cos[:, None], sin[:, None]

        def rot(t):
            half = t.shape[-1] // 2
            return t * cos + torch.cat([-t[..., half:], t[..., :half]], -1) * sin

        q, k = rot(q)[0], rot(k)[0]
        k = k.repeat_interleave(q.shape[0] // k.shape[0], 0)
        return q, k

    def probs(self, i, h_in, positions):
        """Eager causal attention probabilities ``(H, N, N)`` of layer ``i`` (float32 softmax)."""
        q, k = self.qk(i, h_in, positions)
        att = q.float() @ k.float().transpose(1, 2) / math.sqrt(q.shape[-1])
        n = att.shape[-1]
        att = att.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
        return torch.softmax(att, dim=-1)

    def logits(self, h):
        return self.head(self.lm.norm(h))[0, -1]

    def embed(self, token):
        return self.lm.embed_tokens(torch.tensor([[token]]))


def remove_and_mask(model, inputs, method: str, **options) -> dict:
    """``method`` through ``slimvlm.apply`` in ``prune_mode="remove"`` and ``"mask"`` on the same inputs: per mode
    ``(last logits, greedy generation, per-layer cache lengths, last_inllm_stats)``, after checking that the two modes
    agree (logits within 1e-5, identical greedy tokens)."""
    import slimvlm
    from slimvlm._compat import cache_from_output
    from slimvlm.inllm import cache_lengths

    out = {}
    for mode in ("remove", "mask"):
        slim = slimvlm.apply(model, method, prune_mode=mode, **options)
        with torch.no_grad():
            res = slim(**inputs)
        gen = slim.generate(**inputs, max_new_tokens=4, do_sample=False)
        out[mode] = res.logits[:, -1], gen, cache_lengths(cache_from_output(res)), slim.last_inllm_stats
    assert (out["remove"][0] - out["mask"][0]).abs().max().item() <= 1e-5
    assert torch.equal(out["remove"][1], out["mask"][1])
    return out
