"""``sequential``: the first K tokens in raster order (the PruMerge paper's "sequential sampling" ablation)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Reduction
from .budget import BudgetConfig
from .common import select_tokens
from .registry import register

__all__ = ["SequentialConfig", "sequential"]


@dataclass(frozen=True)
class SequentialConfig(BudgetConfig):
    """Keep the first ``keep`` (or ``ratio`` · N; default 25 %) tokens in raster order."""


@register("sequential", config=SequentialConfig, summary="first K tokens in raster order (default 25%)",
          reference="PruMerge paper (arXiv 2403.15388) ablation")
def sequential(features: Tensor, *, config: SequentialConfig) -> Reduction:
    """The first K tokens in raster order."""
    b, n, _ = features.shape
    return select_tokens(features, torch.arange(config.count(n), device=features.device).expand(b, -1), config.name)
