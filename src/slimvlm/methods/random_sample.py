"""``random``: a uniform random subset of the tokens, per item (every token-reduction paper's baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Reduction
from .budget import BudgetConfig
from .common import select_tokens
from .registry import register

__all__ = ["RandomConfig", "random_sample"]


@dataclass(frozen=True)
class RandomConfig(BudgetConfig):
    """Keep ``keep`` (or ``ratio`` · N; default 25 %) tokens drawn uniformly without replacement, per item.
    ``seed`` makes the draw reproducible (default 0)."""

    seed: int = 0


@register("random", config=RandomConfig, summary="uniform random subset, seeded (default 25%)", reference="baseline")
def random_sample(features: Tensor, *, config: RandomConfig) -> Reduction:
    """Uniform random subset per item, kept in raster order (seeded CPU generator: the same draw on every device)."""
    b, n, _ = features.shape
    gen = torch.Generator().manual_seed(config.seed)
    noise = torch.rand(b, n, generator=gen).to(features.device)
    idx = torch.sort(torch.topk(noise, config.count(n), dim=1).indices, dim=1).values
    return select_tokens(features, idx, config.name)
