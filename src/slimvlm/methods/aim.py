"""AIM (Zhong et al., "AIM: Adaptive Inference of Multi-Modal LLMs via Token Merging and Pruning", ICCV 2025,
arXiv 2412.03248; official code LaVi-Lab/AIM): iterative token merging before the language model, then
progressive PageRank pruning inside it.

- ``aim-merge``: the merge alone (``llava/model/token_merge.py``): ToMe's bipartite matching applied
  iteratively with ``scatter_reduce(mode="mean", include_self=True)`` — the destination becomes the plain mean
  of itself and its sources, with no size tracking — per frame, halving the tokens until the budget
  (196 → 98 → 49 per frame at the default 25 %).
- ``aim``: the merge, then the in-LLM pruning of :mod:`slimvlm.inllm`: layers before ``l1`` keep every visual
  token, the kept share falls linearly to 0 at ``l2``, tokens ranked by PageRank over the layer's attention
  (``tau`` 0.1, 5 iterations). See docs/methods.md, "AIM", for the official details.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from ..inllm.schedules import aim_schedule
from .base import Reduction
from .registry import PrunerPlan, register
from .tome import ToMeConfig, merge_tokens

__all__ = ["AIMMergeConfig", "AIMConfig", "aim_merge", "aim", "PruneMode", "check_prune_mode"]

PruneMode = Literal["remove", "mask"]


def check_prune_mode(name: str, mode: str) -> None:
    """``prune_mode`` must be ``"remove"`` (real speed-up) or ``"mask"`` (the official masking semantics)."""
    if mode not in ("remove", "mask"):
        raise ValueError(f"{name}: prune_mode must be 'remove' (real speed-up) or 'mask' (official semantics), got {mode!r}")


@dataclass(frozen=True)
class AIMMergeConfig(ToMeConfig):
    """Options of AIM's pre-LLM merge (same fields as :class:`~slimvlm.methods.tome.ToMeConfig`; default ratio
    0.25 per frame)."""


@dataclass(frozen=True)
class AIMConfig(AIMMergeConfig):
    """AIM: the merge before the LLM, then progressive PageRank pruning inside it.

    Attributes:
        keep / ratio / schedule / mode: the merge, as :class:`AIMMergeConfig` (default ratio 0.25 per frame).
        l1, l2: the pruning schedule, 1-based layer numbers of the paper's ``r = 1 - (l - l1) / (l2 - l1)``
            (see :func:`slimvlm.inllm.aim_schedule`); defaults 14/22 for 28 layers, 13/21 for 32, scaled otherwise.
        prune_mode: ``"remove"`` drops tokens (real speed-up); ``"mask"`` masks them as the official code.
        tau, pagerank_iters: PageRank temperature (0.1) and power iterations (5).
    """

    l1: int | None = None
    l2: int | None = None
    prune_mode: PruneMode = "remove"
    tau: float = 0.1
    pagerank_iters: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_prune_mode(self.name, self.prune_mode)
        if (self.l1 is None) != (self.l2 is None):
            raise ValueError(f"{self.name}: give both l1 and l2, or neither (per-model defaults)")
        if self.l1 is not None and not 1 <= self.l1 < self.l2:
            raise ValueError(f"{self.name}: need 1 <= l1 < l2, got l1={self.l1}, l2={self.l2}")
        if self.tau <= 0 or self.pagerank_iters < 1:
            raise ValueError(f"{self.name}: tau must be > 0 and pagerank_iters >= 1")


def _aim_pruner(config: AIMConfig, num_layers: int) -> PrunerPlan:
    return PrunerPlan(
        aim_schedule(num_layers, config.l1, config.l2), score="pagerank", mode=config.prune_mode,
        options={"tau": config.tau, "iters": config.pagerank_iters},
    )


@register("aim-merge", config=AIMMergeConfig,
          summary="AIM's iterative bipartite merge with plain means, per frame (default 25%)",
          reference="AIM, arXiv 2412.03248; LaVi-Lab/AIM llava/model/token_merge.py")
def aim_merge(features: Tensor, *, metric: Tensor | None = None, config: AIMMergeConfig) -> Reduction:
    """AIM's pre-LLM merge: iterated bipartite matching with a plain mean (no size tracking), per batch item
    (per frame for video). ``metric`` defaults to the features (AIM's LLaVA-OneVision path)."""
    return merge_tokens(features, metric, config, weighted=False)


@register("aim", config=AIMConfig, pruner=_aim_pruner,
          summary="AIM: merge before the LLM (25%) + progressive PageRank pruning inside it (layers l1..l2)",
          reference="AIM, arXiv 2412.03248; LaVi-Lab/AIM")
def aim(features: Tensor, *, metric: Tensor | None = None, config: AIMConfig) -> Reduction:
    """AIM's pre-LLM part (the merge of :func:`aim_merge`); the in-LLM pruning runs in :mod:`slimvlm.inllm`."""
    return merge_tokens(features, metric, config, weighted=False)
