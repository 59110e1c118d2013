"""``none``: keep every token unchanged (the identity; bit-identical features)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Reduction
from .budget import MethodConfig
from .registry import register

__all__ = ["IdentityConfig", "identity"]


@dataclass(frozen=True)
class IdentityConfig(MethodConfig):
    """No options: every token is kept unchanged."""


def keep_all(features: Tensor, method: str) -> Reduction:
    """The Reduction that keeps every token of ``features`` (B, N, C) as it is."""
    b, n, _ = features.shape
    dev = features.device
    every = torch.arange(n, device=dev).expand(b, n)
    return Reduction(features, every, torch.full((b,), n, dtype=torch.long, device=dev), every, method)


@register("none", config=IdentityConfig, reduces=False, summary="keep every token (identity)", reference="-")
def identity(features: Tensor, *, config: IdentityConfig) -> Reduction:
    """Keep every token (bit-identical features)."""
    return keep_all(features, config.name)
