"""ToMe bipartite soft matching on visual tokens, and AIM's iterative pre-LLM merge.

ToMe (Bolya et al., ICLR'23; facebookresearch/ToMe ``tome/merge.py``): split the tokens into alternating
sets A (even positions) and B (odd positions), give every A token its most cosine-similar B token, and merge
the ``r`` A tokens with the highest such score into their B partner. ``r = min(r, t // 2)``. ToMe merges by
size-weighted average and tracks sizes (``merge_wavg``).

AIM (LaVi-Lab/AIM ``llava/model/token_merge.py``; :mod:`.aim`) calls the same matching iteratively
before the LLM with ``scatter_reduce(mode="mean", include_self=True)``: the destination becomes the plain mean
of itself and its sources, with no size tracking, so an already-merged token counts once in the next round.
Its schedule halves the tokens until the target: 196 → 98 → 49 per frame (25 %), 576 → 288 → 252 (LLaVA-1.5
code default) or 576 → 288 → 144 → 72 (paper default, 12.5 %). Frames are independent batch items: there is
no cross-frame merging.

Both return ``[unmerged A tokens in descending-score order, B tokens in their order]`` after each step
(``mode="faithful"``); ``mode="clean"`` re-sorts the final tokens into raster order of their anchors.
The similarity metric defaults to the features themselves (AIM's LLaVA-OneVision path); a separate metric
(e.g. CLIP keys, AIM's LLaVA-1.5 path) is merged with the same rule as the features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Reduction, check_keys
from .budget import BudgetConfig
from .registry import register

__all__ = ["ToMeConfig", "tome", "merge_tokens", "halving_schedule", "bipartite_soft_matching"]


@dataclass(frozen=True)
class ToMeConfig(BudgetConfig):
    """Options of ToMe on visual tokens.

    Attributes:
        keep / ratio: target count or fraction of N (default ratio 0.25).
        schedule: explicit tokens removed per step (``r`` values), e.g. ``(288, 36)``; overrides keep/ratio.
        mode: ``"faithful"`` keeps the official output order; ``"clean"`` (default) sorts into raster order.
    """

    schedule: tuple[int, ...] | None = None
    mode: Literal["clean", "faithful"] = "clean"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.schedule is not None and self.budget_given:
            raise ValueError(f"{self.name}: give a schedule or a keep/ratio budget, not both")
        if self.schedule is not None and any(int(r) < 0 for r in self.schedule):
            raise ValueError(f"{self.name}: schedule entries must be >= 0, got {self.schedule}")
        if self.mode not in ("clean", "faithful"):
            raise ValueError(f"{self.name}: mode must be 'clean' or 'faithful', got {self.mode!r}")

    def steps(self, n: int) -> list[int]:
        """Tokens removed at each merge step for N = ``n`` tokens: the explicit schedule, or halving steps down
        to the budget."""
        if self.schedule is not None:
            return [int(r) for r in self.schedule]
        return halving_schedule(n, super().count(n))

    def count(self, n: int) -> int:
        t = n
        for r in self.steps(n):
            r = min(int(r), t // 2)
            if r <= 0:
                break
            t -= r
        return t


def halving_schedule(n: int, target: int) -> list[int]:
    """AIM's schedule: remove ``min(t // 2, t - target)`` tokens per step until ``target`` remain."""
    target = max(1, min(n, target))
    steps, t = [], n
    while t > target:
        r = min(t // 2, t - target)
        if r <= 0:
            break
        steps.append(r)
        t -= r
    return steps


def bipartite_soft_matching(metric: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
    """ToMe's matching: returns ``(unm_idx, src_idx, dst_idx)`` for A = even, B = odd positions.

    ``src_idx``: the ``r`` A positions (in A numbering) with the best edge, best first; ``unm_idx``: the other
    A positions in descending-score order; ``dst_idx``: the B partner of each source. Ties in the edge order
    are broken by A position.
    """
    mn = F.normalize(metric.float(), dim=-1)
    a, b = mn[:, ::2], mn[:, 1::2]
    node_max, node_idx = (a @ b.transpose(1, 2)).max(dim=-1)
    edge_idx = torch.sort(node_max, dim=-1, descending=True, stable=True).indices
    src_idx = edge_idx[:, :r]
    return edge_idx[:, r:], src_idx, node_idx.gather(1, src_idx)


def _merge(v: Tensor, unm_idx: Tensor, src_idx: Tensor, dst_idx: Tensor, reduce: str) -> Tensor:
    src, dst = v[:, ::2], v[:, 1::2]
    c = v.shape[-1]
    unm = src.gather(1, unm_idx[..., None].expand(-1, -1, c))
    moved = src.gather(1, src_idx[..., None].expand(-1, -1, c))
    dst = dst.scatter_reduce(1, dst_idx[..., None].expand(-1, -1, c), moved, reduce=reduce, include_self=True)
    return torch.cat([unm, dst], dim=1)


def _iterative_merge(features, metric, schedule, weighted: bool, mode: str, method: str) -> Reduction:
    b, n, c = features.shape
    dev = features.device
    x = features.float()
    met = None if metric is None else metric.float()
    size = torch.ones(b, n, 1, device=dev)
    anchors = torch.arange(n, device=dev).expand(b, n)
    assignment = anchors.clone()  # input token -> current slot
    for r in schedule:
        t = x.shape[1]
        r = min(int(r), t // 2)
        if r <= 0:
            break
        unm_idx, src_idx, dst_idx = bipartite_soft_matching(x if met is None else met, r)
        if weighted:  # ToMe merge_wavg: size-weighted average, sizes tracked
            x = _merge(x * size, unm_idx, src_idx, dst_idx, "sum")
            if met is not None:
                met = _merge(met * size, unm_idx, src_idx, dst_idx, "sum")
            size = _merge(size, unm_idx, src_idx, dst_idx, "sum")
            x = x / size
            if met is not None:
                met = met / size
        else:  # AIM: plain mean of destination and its sources
            x = _merge(x, unm_idx, src_idx, dst_idx, "mean")
            if met is not None:
                met = _merge(met, unm_idx, src_idx, dst_idx, "mean")
        ta, keep_a = (t + 1) // 2, (t + 1) // 2 - r
        # new slot of every current slot: A tokens by rank in the edge order, B tokens after the unmerged ones
        new_slot = torch.empty(b, t, dtype=torch.long, device=dev)
        ranks = torch.empty(b, ta, dtype=torch.long, device=dev)
        edge = torch.cat([src_idx, unm_idx], dim=1)
        ranks.scatter_(1, edge, torch.arange(ta, device=dev).expand(b, ta).contiguous())
        a_slot = (ranks - r).scatter(1, src_idx, keep_a + dst_idx)  # sources go to their destination
        new_slot[:, ::2] = a_slot
        new_slot[:, 1::2] = keep_a + torch.arange(t // 2, device=dev)
        assignment = new_slot.gather(1, assignment)
        a_anchor = anchors[:, ::2].gather(1, unm_idx)
        anchors = torch.cat([a_anchor, anchors[:, 1::2]], dim=1)
    if mode == "clean":
        order = torch.sort(anchors, dim=1).indices
        inverse = torch.empty_like(order)
        inverse.scatter_(1, order, torch.arange(order.shape[1], device=dev).expand_as(order).contiguous())
        x = x.gather(1, order[..., None].expand(-1, -1, c))
        anchors = anchors.gather(1, order)
        assignment = inverse.gather(1, assignment)
    lengths = torch.full((b,), x.shape[1], dtype=torch.long, device=dev)
    return Reduction(x.to(features.dtype), anchors, lengths, assignment, method)


def merge_tokens(features: Tensor, metric: Tensor | None, config: ToMeConfig, weighted: bool) -> Reduction:
    """Iterated bipartite merging of ``features`` (B, N, C) down to ``config``'s budget; ``weighted``: ToMe's
    size-weighted average with size tracking, else AIM's plain mean."""
    if metric is not None:
        check_keys(metric, features, "metric")
    return _iterative_merge(features, metric, config.steps(features.shape[1]), weighted, config.mode, config.name)


@register("tome", config=ToMeConfig, summary="bipartite soft matching, size-weighted average, halving schedule (default 25%)",
          reference="Bolya et al., ICLR 2023; facebookresearch/ToMe tome/merge.py")
def tome(features: Tensor, *, metric: Tensor | None = None, config: ToMeConfig) -> Reduction:
    """ToMe on ``(B, N, C)`` tokens: iterated bipartite soft matching with size-weighted averaging and size
    tracking until the budget is met (halving schedule). ``metric`` ``(B, N, Ck)`` defaults to the features."""
    return merge_tokens(features, metric, config, weighted=True)
