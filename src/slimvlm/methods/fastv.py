"""FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024; official code
pkunlp-icler/FastV): at layer ``K`` of the language model drop the visual tokens that the last prompt token
attended to least in layer ``K - 1`` (attention averaged over heads). Nothing happens before the language model;
the pruning runs in :mod:`slimvlm.inllm` (``mode="remove"`` really shortens the sequence, ``"mask"`` reproduces
the official masking). See docs/methods.md, "FastV".
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..inllm.schedules import fastv_schedule
from .aim import PruneMode, check_prune_mode
from .base import Reduction
from .budget import MethodConfig, check_budget
from .none import keep_all
from .registry import PrunerPlan, register

__all__ = ["FastVConfig", "fastv"]

#: the paper's default share of the visual tokens dropped at layer K.
DEFAULT_DROP = 0.5


@dataclass(frozen=True)
class FastVConfig(MethodConfig):
    """FastV's options. Paper default K=2, R=50 %.

    Attributes:
        k: the first layer that sees fewer visual tokens (0-based; the attention of layer ``k - 1`` ranks them).
        r: the fraction of visual tokens dropped at layer ``k`` (the paper's R, in [0, 1]; default 0.5).
        keep: instead of ``r``, the number of visual tokens kept from layer ``k`` on (per image, at most all).
        prune_mode: ``"remove"`` (real speed-up) or ``"mask"`` (the official masking reference).
    """

    k: int = 2
    r: float | None = None
    keep: int | None = None
    prune_mode: PruneMode = "remove"

    def __post_init__(self) -> None:
        check_prune_mode(self.name, self.prune_mode)
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"{self.name}: k must be a layer index >= 1, got {self.k!r}")
        if self.r is not None and self.keep is not None:
            raise ValueError(f"{self.name}: give r (fraction dropped) or keep (tokens kept), not both")
        if self.r is not None and (isinstance(self.r, bool) or not 0.0 <= float(self.r) <= 1.0):
            raise ValueError(f"{self.name}: r (fraction dropped) must be in [0, 1], got {self.r!r}")
        check_budget(self.keep, None, self.name)

    @property
    def drop(self) -> float:
        """The fraction dropped when no ``keep`` is given."""
        return DEFAULT_DROP if self.r is None else float(self.r)


def _fastv_pruner(config: FastVConfig, num_layers: int) -> PrunerPlan:
    if config.k >= num_layers:
        raise ValueError(f"k={config.k} must be below the model's {num_layers} layers")
    schedule = fastv_schedule(num_layers, config.k, 0.0 if config.keep is not None else config.drop, keep=config.keep)
    return PrunerPlan(schedule, score="fastv", mode=config.prune_mode)


@register("fastv", config=FastVConfig, pruner=_fastv_pruner, reduces=False,
          summary="FastV: drop the least-attended visual tokens at layer K (K=2, R=0.5) inside the LLM",
          reference="Chen et al., ECCV 2024; pkunlp-icler/FastV")
def fastv(features: Tensor, *, config: FastVConfig) -> Reduction:
    """FastV's pre-LLM part: every token goes into the language model unchanged."""
    return keep_all(features, config.name)
