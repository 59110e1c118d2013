"""CDPruner (Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in
MLLMs", NeurIPS 2025, arXiv 2506.10967): the visual tokens a conditional DPP keeps, its kernel weighing the
tokens' similarity by their relevance to the instruction.

Official code: Theia-4869/CDPruner (9541616), ``llava/model/llava_arch.py`` (``encode_images``) and
``llava/model/multimodal_encoder/clip_encoder.py`` (the image / text embeddings). The rule (docs/methods.md,
"CDPruner"), on the projected visual tokens ``x`` ``(N, D)``:

1. similarity ``S = x̂ x̂ᵀ`` (cosine of the projected tokens);
2. relevance ``r_i = -mean_m cos(e_i, t_m)`` between the visual tokens in the text space ``e`` (LLaVA: CLIP's
   ``visual_projection(post_layernorm(·))`` of the same patches) and the instruction embeddings ``t``
   (LLaVA: CLIP text ``text_embeds``, one per 77-token segment of the question); the sign is negated (the authors
   observe CLIP's patch-text similarity inverted; Theia-4869/CDPruner issue #14), then min-max normalised
   ``(r - min r + 1e-6) / (max r - min r)`` over **the whole batch**; an optional ``θ`` makes it ``exp(α r)``,
   ``α = θ / (2(1 - θ))`` (commented out upstream);
3. kernel ``L = diag(r) S diag(r)``; greedy MAP of the DPP (Chen et al. 2018, fast incremental Cholesky):
   ``K`` times, choose ``j = argmax d²``, ``e = (L[j] - Σ_t c_t[j] c_t) / √d²_j``, ``d² -= e²``;
4. the chosen tokens in raster order.

slimvlm's pipeline has no CLIP text tower (a stock VLM has none), so on every family it passes the language
model's own input embeddings of the instruction (``text_embeds``; the text tokens after the image, see
``slimvlm.pipeline.prompt_signals``) and the relevance compares them with the projected tokens themselves (both
live in the LLM's input space); there, ``negate`` defaults to False: the inversion is CLIP's. Give ``image_embeds``
(and CLIP ``text_embeds``) to reproduce the official LLaVA relevance; ``negate`` then defaults to True.

``mode="faithful"`` is the official arithmetic. Its defects: the min-max runs over the whole batch (an image's
choice depends on the other images), a constant relevance divides by zero, and once the kernel's rank is spent
(``d² <= 0``, e.g. duplicate tokens or K above the width) the square root turns NaN and the official loop then
re-chooses low indices (its mask keeps fewer than K tokens); faithful mode raises there. ``mode="clean"`` (default):
min-max per item, a constant relevance (or no instruction) is uniform, and once the rank is spent the remaining
tokens are taken by relevance (ties to the lower index). On one image with a kernel of full rank both modes agree.
Both modes: a token's similarity to itself is exactly 1 (the official float product is 1 up to rounding, which
would decide between tokens of equal relevance, e.g. every token when there is no instruction), ties go to the
lower index, and zero-norm tokens / embeddings count as orthogonal to all (no NaN).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Reduction, check_keys
from .budget import BudgetConfig
from .common import select_tokens
from .registry import register

__all__ = ["CDPrunerConfig", "cdpruner", "conditional_relevance", "dpp_greedy"]

#: the official min-max offset.
EPS = 1e-6


@dataclass(frozen=True)
class CDPrunerConfig(BudgetConfig):
    """Options of CDPruner.

    Attributes:
        keep / ratio: the budget (default 25 %).
        theta: None (official default: the relevance as it is) or θ in (0, 1): relevance ``exp(α r)``,
            ``α = θ / (2(1 - θ))`` (the official commented-out option, θ = 0.5 there).
        negate: negate the cosine relevance; None: True when ``image_embeds`` are given (the official CLIP route),
            False when the features themselves are compared with the instruction (slimvlm's pipeline).
        mode: ``"clean"`` (default) or ``"faithful"`` (official arithmetic; see the module docstring).
    """

    theta: float | None = None
    negate: bool | None = None
    mode: Literal["clean", "faithful"] = "clean"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("clean", "faithful"):
            raise ValueError(f"{self.name}: mode must be 'clean' or 'faithful', got {self.mode!r}")
        t = self.theta
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < float(t) < 1.0):
            raise ValueError(f"{self.name}: theta must be None or in (0, 1), got {t!r}")
        if self.negate is not None and not isinstance(self.negate, bool):
            raise ValueError(f"{self.name}: negate must be None, True or False, got {self.negate!r}")


def conditional_relevance(
    embeds: Tensor, text: Tensor, *, negate: bool, per_item: bool, theta: float | None = None
) -> Tensor:
    """Relevance ``(B, N)`` of the visual tokens ``embeds`` ``(B, N, Dt)`` to the instruction ``text``
    ``(B, M, Dt)`` (all-zero rows are padding): mean cosine over the instruction, negated if asked, min-max
    normalised per item (``per_item``) or over the whole batch (official), then ``exp(α r)`` if ``theta``.

    ``per_item``: an item whose relevance is constant (or that has no instruction) gets relevance 1.
    The batch form divides by ``max - min`` as the official code does (inf / NaN when it is 0)."""
    e = F.normalize(embeds.float(), dim=-1)
    t = text.float()
    valid = (t != 0).any(-1)  # (B, M)
    t = F.normalize(t, dim=-1)
    cos_sum = (e @ t.transpose(1, 2)).sum(-1)  # padding rows are 0 vectors: they add 0
    rel = cos_sum / valid.sum(-1, keepdim=True).clamp(min=1)
    if negate:
        rel = -rel
    if per_item:
        lo, hi = rel.amin(1, keepdim=True), rel.amax(1, keepdim=True)
        flat = (hi - lo <= 0) | ~valid.any(-1, keepdim=True)
        rel = torch.where(flat, torch.ones_like(rel), (rel - lo + EPS) / torch.where(flat, 1.0, hi - lo))
    else:
        rel = (rel - rel.min() + EPS) / (rel.max() - rel.min())
    if theta is not None:
        rel = torch.exp(theta / (2 * (1 - theta)) * rel)
    return rel


def dpp_greedy(kernel: Tensor, k: int, fallback: Tensor | None = None) -> Tensor:
    """Greedy MAP of the DPP with kernel ``(B, N, N)`` (fast incremental Cholesky, Chen et al. 2018): the ``(B, k)``
    tokens in order of choice. Once an item's best gain ``d²`` is not positive (its kernel rank is spent), it takes
    its remaining tokens by descending ``fallback`` score (ties to the lower index); without ``fallback`` that
    raises (the official arithmetic would turn NaN there)."""
    b, n, _ = kernel.shape
    dev = kernel.device
    rows = torch.arange(b, device=dev)
    cis = kernel.new_zeros(k, b, n)
    di2 = kernel.diagonal(dim1=1, dim2=2).clone()
    taken = torch.zeros(b, n, dtype=torch.bool, device=dev)
    chosen = torch.empty(b, k, dtype=torch.long, device=dev)
    for i in range(k):
        j = di2.argmax(1)
        gain = di2[rows, j]
        spent = ~(gain > 0)
        if bool(spent.any()):
            if fallback is None:
                raise ValueError(f"the DPP kernel's rank is spent after {i} of {k} tokens (duplicate tokens, or K above "
                                 "the feature width): the official arithmetic turns NaN here; use mode='clean'")
            j = torch.where(spent, fallback.masked_fill(taken, -torch.inf).argmax(1), j)
        chosen[:, i] = j
        taken[rows, j] = True
        e = (kernel[rows, j] - torch.einsum("tb,tbn->bn", cis[:i, rows, j], cis[:i])) / gain.clamp(min=0).sqrt()[:, None]
        e = torch.where(spent[:, None], torch.zeros_like(e), e)  # spent items change nothing
        cis[i] = e
        di2 = di2 - e.square()
        di2[taken] = -torch.inf
    return chosen


@register("cdpruner", config=CDPrunerConfig, applies="post_projector", needs=("text_embeds",),
          summary="conditional DPP: diversity of the projected tokens x relevance to the instruction (default 25%)",
          reference="Zhang et al., NeurIPS 2025, arXiv 2506.10967; Theia-4869/CDPruner llava_arch.py")
def cdpruner(
    features: Tensor,
    *,
    text_embeds: Tensor | None = None,
    image_embeds: Tensor | None = None,
    config: CDPrunerConfig,
) -> Reduction:
    """CDPruner on the LLM-width visual tokens ``(B, N, D)`` given the instruction embeddings ``text_embeds``
    ``(B, M, Dt)`` (all-zero rows are padding; ``M = 0``: no instruction) in the space of ``image_embeds``
    ``(B, N, Dt)`` (default: the features themselves). Keeps ``config.count(N)`` tokens in raster order."""
    cfg = config
    b, n, _ = features.shape
    if text_embeds is None:
        raise ValueError(f"{cfg.name} needs text_embeds (B, M, Dt), the instruction's embeddings")
    space = features if image_embeds is None else image_embeds
    if image_embeds is not None:
        check_keys(image_embeds, features, "image_embeds")
    if not isinstance(text_embeds, Tensor) or text_embeds.dim() != 3 or text_embeds.shape[0] != b or (
        text_embeds.shape[2] != space.shape[2]
    ):
        shape = tuple(text_embeds.shape) if isinstance(text_embeds, Tensor) else type(text_embeds).__name__
        raise ValueError(f"text_embeds: expected shape (B, M, Dt) with B={b}, Dt={space.shape[2]} (the width of "
                         f"{'image_embeds' if image_embeds is not None else 'the features'}), got {shape}")
    if not bool(torch.isfinite(text_embeds).all()):
        raise ValueError("text_embeds: contains NaN or inf values")
    faithful = cfg.mode == "faithful"
    negate = (image_embeds is not None) if cfg.negate is None else cfg.negate
    rel = conditional_relevance(space, text_embeds, negate=negate, per_item=not faithful, theta=cfg.theta)
    if faithful and not bool(torch.isfinite(rel).all()):
        raise ValueError(f"{cfg.name} (faithful): the relevance is constant over the batch; the official min-max "
                         "divides by zero here; use mode='clean'")
    unit = F.normalize(features.float(), dim=-1)
    sim = unit @ unit.transpose(1, 2)
    sim.diagonal(dim1=1, dim2=2).copy_((unit != 0).any(-1).float())  # cos(x, x) = 1 exactly (0 for a zero token)
    kernel = rel[:, :, None] * sim * rel[:, None, :]
    try:
        chosen = dpp_greedy(kernel, cfg.count(n), fallback=None if faithful else rel)
    except ValueError as err:
        raise ValueError(f"{cfg.name} (faithful): {err}") from None
    return select_tokens(features, torch.sort(chosen, dim=1).values, cfg.name)
