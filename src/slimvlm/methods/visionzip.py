"""VisionZip (Yang et al., CVPR'25; dvlab-research/VisionZip), dominant + contextual tokens.

Official rule (docs/methods.md, "VisionZip"), on CLIP layer -2 (its attention, its head-mean keys, its output features):

1. Dominant: the ``d - 1`` patches with the largest [CLS] attention (summed over heads), plus the [CLS]
   token itself, gathered in raster order.
2. Contextual: over the remaining ``R`` tokens (raster order), ``c`` targets at ``arange(0, R, max(1, R//c))[:c]``;
   every other remaining token is assigned to its most cosine-similar target (head-mean keys), and each target
   becomes ``target + mean(assigned tokens)`` (the count clamped to 1).
3. Output ``[dominant (with CLS first), contextual]``: ``d + c`` tokens (README 54 + 10 = 64; paper budgets
   192 / 128 / 64 = 162+30, 108+20, 54+10).

Our features are patches only, so the [CLS] token is prepended only when ``cls_feature`` is given; without it
the ``d`` dominant tokens are all patches. ``mode="clean"`` sorts the output by anchor (raster order, [CLS]
first), as VisionZip itself does for LLaVA-NeXT's unpad layout; ``"faithful"`` keeps the official order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Reduction, check_keys, check_scores
from .budget import BudgetConfig
from .common import descending_rank, pack
from .registry import SignalRequest, register

__all__ = ["VisionZipConfig", "visionzip"]


@dataclass(frozen=True)
class VisionZipConfig(BudgetConfig):
    """Options of VisionZip.

    Attributes:
        keep / ratio: a total budget; split ``contextual = round(K · 10/64)`` as in the paper's 192/128/64
            settings, ``dominant = K - contextual``.
        dominant, contextual: the official counts instead (default 54 and 10, [CLS] counted in ``dominant`` when a
            ``cls_feature`` is given).
        mode: ``"clean"`` (raster order, default) or ``"faithful"`` (official order).
    """

    dominant: int | None = None
    contextual: int | None = None
    mode: Literal["clean", "faithful"] = "clean"

    default_budget: ClassVar[float | int | None] = 64  # 54 + 10

    def __post_init__(self) -> None:
        super().__post_init__()
        explicit = self.dominant is not None or self.contextual is not None
        if explicit and self.budget_given:
            raise ValueError(f"{self.name}: give dominant/contextual or a keep/ratio budget, not both")
        for f in ("dominant", "contextual"):
            v = getattr(self, f)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"{self.name}: {f} must be a whole number >= 0, got {v!r}")
        if self.mode not in ("clean", "faithful"):
            raise ValueError(f"{self.name}: mode must be 'clean' or 'faithful', got {self.mode!r}")

    def counts(self, n: int) -> tuple[int, int]:
        """(dominant, contextual) for N tokens."""
        if self.budget_given:
            total = super().count(n)
            contextual = round(total * 10 / 64)
            return total - contextual, contextual
        return (54 if self.dominant is None else self.dominant), (10 if self.contextual is None else self.contextual)

    def count(self, n: int) -> int:
        dominant, contextual = self.counts(n)
        n_dom = min(n, dominant)
        return n_dom + min(contextual, n - n_dom)


@register("visionzip", config=VisionZipConfig, applies="pre_projector",
          signals=SignalRequest(score_layer=-2, style="head_mean"), needs=("cls_attn", "keys"),
          summary="dominant tokens by [CLS] attention + contextual merge (default 54+10)",
          reference="Yang et al., CVPR 2025; dvlab-research/VisionZip")
def visionzip(
    features: Tensor,
    *,
    cls_attn: Tensor | None = None,
    keys: Tensor | None = None,
    cls_feature: Tensor | None = None,
    config: VisionZipConfig,
) -> Reduction:
    """VisionZip on patch features ``(B, N, C)`` with ``cls_attn`` ``(B, N)`` (head-summed or -averaged [CLS]
    attention; only the order matters) and ``keys`` ``(B, N, Ck)`` (head-mean keys). ``cls_feature`` ``(B, C)``
    is prepended as the first dominant token (anchor -1) when given."""
    cfg = config
    if cls_attn is None or keys is None:
        raise ValueError(f"{cfg.name} needs cls_attn (B, N) and keys (B, N, Ck)")
    check_scores(cls_attn, features, "cls_attn")
    check_keys(keys, features)
    b, n, c = features.shape
    dev = features.device
    with_cls = cls_feature is not None
    if with_cls and tuple(cls_feature.shape) != (b, c):
        raise ValueError(f"cls_feature: expected shape (B, C) = {(b, c)}, got {tuple(cls_feature.shape)}")
    dominant, contextual = cfg.counts(n)
    n_dom = min(n, max(0, dominant - 1 if with_cls else dominant))
    contextual = min(contextual, n - n_dom)

    _, rank = descending_rank(cls_attn.float())
    dom_mask = rank < n_dom
    dom_idx, _ = pack(dom_mask)  # raster order
    rest_idx, _ = pack(~dom_mask)  # (B, R) raster order
    r_count = n - n_dom
    x = features.float()
    parts = [x.gather(1, dom_idx[..., None].expand(-1, -1, c))]
    anchor_parts = [dom_idx]
    assignment = torch.full((b, n), -1, dtype=torch.long, device=dev)
    offset = int(with_cls)
    assignment.scatter_(1, dom_idx, offset + torch.arange(n_dom, device=dev).expand(b, n_dom).contiguous())
    if contextual > 0:
        step = max(1, r_count // contextual)
        target_pos = torch.arange(0, r_count, step, device=dev)[:contextual]
        is_target = torch.zeros(r_count, dtype=torch.bool, device=dev)
        is_target[target_pos] = True
        target_idx = rest_idx[:, target_pos]  # (B, c)
        other_idx = rest_idx[:, ~is_target]  # (B, R - c)
        kn = F.normalize(keys.float(), dim=-1)
        gather_k = lambda idx: kn.gather(1, idx[..., None].expand(-1, -1, kn.shape[-1]))  # noqa: E731
        choice = (gather_k(other_idx) @ gather_k(target_idx).transpose(1, 2)).argmax(-1)  # (B, R - c)
        one_hot = F.one_hot(choice, contextual).float()  # (B, R - c, c)
        counts = one_hot.sum(1).clamp(min=1)[..., None]
        others = x.gather(1, other_idx[..., None].expand(-1, -1, c))
        targets = x.gather(1, target_idx[..., None].expand(-1, -1, c))
        parts.append(targets + (one_hot.transpose(1, 2) @ others) / counts)
        anchor_parts.append(target_idx)
        first = offset + n_dom
        assignment.scatter_(1, target_idx, first + torch.arange(contextual, device=dev).expand(b, -1).contiguous())
        assignment.scatter_(1, other_idx, first + choice)
    if with_cls:
        parts.insert(0, cls_feature.float()[:, None])
        anchor_parts.insert(0, torch.full((b, 1), -1, dtype=torch.long, device=dev))
    out = torch.cat(parts, dim=1)
    anchors = torch.cat(anchor_parts, dim=1)
    if cfg.mode == "clean":
        order = torch.sort(anchors, dim=1, stable=True).indices  # [CLS] (-1) stays first
        inverse = torch.empty_like(order)
        inverse.scatter_(1, order, torch.arange(order.shape[1], device=dev).expand_as(order).contiguous())
        out = out.gather(1, order[..., None].expand(-1, -1, c))
        anchors = anchors.gather(1, order)
        assignment = torch.where(assignment >= 0, inverse.gather(1, assignment.clamp(min=0)), assignment)
    lengths = torch.full((b,), out.shape[1], dtype=torch.long, device=dev)
    return Reduction(out.to(features.dtype), anchors, lengths, assignment, cfg.name)
