"""FasterVLM (Zhang et al., "[CLS] Attention is All You Need for Training-Free Visual Token Pruning",
arXiv 2412.01818 v1): keep the patches the vision tower's [CLS] token attends to most, before the projector.

Official code: Theia-4869/FasterVLM (f5d5f12), ``llava/model/llava_arch.py`` (``encode_images``) and
``llava/model/multimodal_encoder/clip_encoder.py`` (``feature_select``). The rule (docs/methods.md, "FasterVLM"):

1. ``attentions[select_layer][:, :, 0, 1:]``: the [CLS] row of the per-head softmax attention of the layer whose
   output feeds the projector (``select_layer = -2`` in LLaVA-1.5), averaged over heads;
2. the ``T`` patches with the largest score (``torch.topk``) are kept, in raster order (a boolean index mask over
   the projected features).

slimvlm reads that attention from the tower's hooked ``q_proj`` / ``k_proj`` (``SignalRequest(-2, "head_mean")``),
so the tower may run SDPA or flash attention. Score ties go to the lower index (``topk`` leaves them unspecified).
Towers without [CLS] give the pseudo-[CLS] "attention received" (docs/methods.md, "Signals").
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import Reduction, check_scores
from .budget import BudgetConfig
from .common import descending_rank, pack, select_tokens
from .registry import SignalRequest, register

__all__ = ["FasterVLMConfig", "fastervlm", "top_attention"]


@dataclass(frozen=True)
class FasterVLMConfig(BudgetConfig):
    """Options of FasterVLM: the ``keep`` / ``ratio`` budget (default 25 %)."""


def top_attention(features: Tensor, cls_attn: Tensor, k: int, method: str) -> Reduction:
    """Keep the ``k`` tokens of largest ``cls_attn`` (ties: lower index first), in raster order."""
    _, rank = descending_rank(cls_attn.float())
    idx, _ = pack(rank < k)
    return select_tokens(features, idx, method)


@register("fastervlm", config=FasterVLMConfig, applies="pre_projector",
          signals=SignalRequest(score_layer=-2, style="head_mean"), needs=("cls_attn",),
          summary="top tokens by [CLS] attention (head mean, layer -2) before the projector (default 25%)",
          reference="Zhang et al. 2024, arXiv 2412.01818; Theia-4869/FasterVLM llava_arch.py")
def fastervlm(features: Tensor, *, cls_attn: Tensor | None = None, config: FasterVLMConfig) -> Reduction:
    """FasterVLM on patch features ``(B, N, C)`` with the [CLS] attention ``cls_attn`` ``(B, N)`` (head mean;
    only the order matters): the ``config.count(N)`` most attended tokens, in raster order."""
    if cls_attn is None:
        raise ValueError(f"{config.name} needs cls_attn (B, N), the [CLS] attention of the tower")
    check_scores(cls_attn, features, "cls_attn")
    return top_attention(features, cls_attn, config.count(features.shape[1]), config.name)
