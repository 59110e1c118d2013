"""VisPruner (Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning in
VLMs", ICCV 2025, arXiv 2412.01818 v2+): important tokens by [CLS] attention, then diverse tokens left after
removing similar duplicates from the rest.

Official code: Theia-4869/VisPruner (aefa01a), ``llava/model/llava_arch.py`` (``encode_images``). The rule
(docs/methods.md, "VisPruner"), for a budget of ``T`` tokens and ``important_ratio`` r (default 0.5):

1. Important: ``T_imp = int(T · r)`` tokens of largest [CLS] attention (per-head softmax of ``select_layer``, averaged
   over heads), taken from the descending ``argsort``; the rest, *in that descending order*, is the residual list.
2. Diverse (``T_div = T - T_imp``): while the residual list is longer than ``T_div``, with ``r' = min(8, R - T_div)``:
   split it alternately into ``a = res[0::2]`` and ``b = res[1::2]``; score every ``a`` token by its largest cosine
   similarity (L2-normalised features) to a ``b`` token; drop the ``r'`` best-scored ``a`` tokens; the new list is
   the other ``a`` tokens in descending score order, then ``b`` in its order. (When ``a`` has fewer than ``r'``
   tokens all of them go, as the official slice does.)
3. Output: important and diverse tokens, in raster order (an index mask over the projected features).

The similarities are read from one float32 Gram matrix of the normalised residual features, computed once (the
official code recomputes the products every round in the model's dtype, float16 in its evaluation, where close
scores tie and ``argsort`` orders them arbitrarily), so scores closer than float32 rounding may order differently
from any given official run. Ties of the attention and of the scores go to the earlier position (``argsort``
leaves them unspecified). Zero-norm features count as orthogonal to every other token. Towers without [CLS] give
the pseudo-[CLS] "attention received" (docs/methods.md, "Signals"), as the official SigLIP encoder does (there
from the last layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Reduction, check_scores
from .budget import BudgetConfig
from .common import descending_rank, pack, select_tokens
from .registry import SignalRequest, register

__all__ = ["VisPrunerConfig", "vispruner", "ROUND_CAP"]

#: at most this many ``a`` tokens are dropped per round (the official ``min(8, R - T_div)``).
ROUND_CAP = 8


@dataclass(frozen=True)
class VisPrunerConfig(BudgetConfig):
    """Options of VisPruner.

    Attributes:
        keep / ratio: the total budget T (default 25 %).
        important_ratio: share of T taken by [CLS] attention, ``T_imp = int(T · important_ratio)`` (official
            default 0.5; the README's MME example uses 0.75: 48 important + 16 diverse).
    """

    important_ratio: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        r = self.important_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) <= 1.0:
            raise ValueError(f"{self.name}: important_ratio must be in [0, 1], got {r!r}")

    def split(self, n: int) -> tuple[int, int]:
        """(important, diverse) token counts for N tokens."""
        total = self.count(n)
        important = int(total * float(self.important_ratio))
        return important, total - important


def _remove_duplicates(features: Tensor, residual: Tensor, diverse: int) -> Tensor:
    """Step 2 on every row at once (all rows have the same length): ``residual`` ``(B, R)`` token indices in
    the official order, ``features`` ``(B, N, C)``. Returns the ``(B, diverse)`` surviving token indices."""
    b, r0 = residual.shape
    picked = features.gather(1, residual[..., None].expand(-1, -1, features.shape[-1]))
    unit = F.normalize(picked.float(), dim=-1)
    flat = (unit @ unit.transpose(1, 2)).reshape(b, r0 * r0)  # cosine of residual positions
    pos = torch.arange(r0, device=features.device).expand(b, r0)  # positions in ``residual``, official order
    while True:
        drop = min(ROUND_CAP, pos.shape[1] - diverse)
        if drop <= 0:
            break
        a, bb = pos[:, 0::2], pos[:, 1::2]
        pairs = (a[:, :, None] * r0 + bb[:, None, :]).reshape(b, -1)
        scores = flat.gather(1, pairs).view(b, a.shape[1], bb.shape[1]).amax(-1)  # (B, |a|)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, drop:]
        pos = torch.cat([a.gather(1, order), bb], dim=1)
    return residual.gather(1, pos)


@register("vispruner", config=VisPrunerConfig, applies="pre_projector",
          signals=SignalRequest(score_layer=-2, style="head_mean"), needs=("cls_attn",),
          summary="important tokens by [CLS] attention + diverse tokens after removing duplicates (default 25%)",
          reference="Zhang et al., ICCV 2025, arXiv 2412.01818; Theia-4869/VisPruner llava_arch.py")
def vispruner(features: Tensor, *, cls_attn: Tensor | None = None, config: VisPrunerConfig) -> Reduction:
    """VisPruner on patch features ``(B, N, C)`` (the similarity metric too) with the [CLS] attention
    ``cls_attn`` ``(B, N)`` (head mean; only the order matters). Keeps ``config.count(N)`` tokens in raster order."""
    if cls_attn is None:
        raise ValueError(f"{config.name} needs cls_attn (B, N), the [CLS] attention of the tower")
    check_scores(cls_attn, features, "cls_attn")
    b, n, _ = features.shape
    important, diverse = config.split(n)
    order, _ = descending_rank(cls_attn.float())
    chosen = order[:, :important]
    if diverse > 0:
        residual = order[:, important:]
        if residual.shape[1] > diverse:
            residual = _remove_duplicates(features, residual, diverse)
        chosen = torch.cat([chosen, residual], dim=1)
    mask = torch.zeros(b, n, dtype=torch.bool, device=features.device).scatter_(1, chosen, True)
    idx, _ = pack(mask)
    return select_tokens(features, idx, config.name)
