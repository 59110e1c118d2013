"""Options of the methods that also prune *inside* the language model: AIM and FastV.

Their pre-LLM part is a pure tensor function like every other method (AIM: the iterative merge of
:mod:`.tome`; FastV: none); the in-LLM part runs in :mod:`slimvlm.inllm` as hooks on the decoder layers, which
``slimvlm.apply`` attaches around every call. ``slimvlm.methods.reduce("aim", ...)`` runs the merge only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .tome import AIMMergeConfig

__all__ = ["AIMConfig", "FastVConfig", "PruneMode"]

PruneMode = Literal["remove", "mask"]


def _check_prune_mode(name: str, mode: str) -> None:
    if mode not in ("remove", "mask"):
        raise ValueError(f"{name}: prune_mode must be 'remove' (real speed-up) or 'mask' (official semantics), got {mode!r}")


@dataclass(frozen=True)
class AIMConfig(AIMMergeConfig):
    """AIM (arXiv 2412.03248): iterative merge before the LLM, then progressive PageRank pruning inside it.

    Attributes:
        keep / ratio / schedule / mode: the merge, as :class:`AIMMergeConfig` (default ratio 0.25 per frame).
        l1, l2: the pruning schedule: layers before ``l1`` keep every visual token, the kept share falls linearly
            to 0 at ``l2`` (paper's 1-based layers; defaults 14/22 for 28 layers, 13/21 for 32, scaled otherwise).
        prune_mode: ``"remove"`` drops tokens (real speed-up); ``"mask"`` masks them as the official code.
        tau, pagerank_iters: PageRank temperature (0.1) and power iterations (5).
    """

    l1: int | None = None
    l2: int | None = None
    prune_mode: PruneMode = "remove"
    tau: float = 0.1
    pagerank_iters: int = 5

    name = "aim"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_prune_mode(self.name, self.prune_mode)
        if (self.l1 is None) != (self.l2 is None):
            raise ValueError("aim: give both l1 and l2, or neither (per-model defaults)")
        if self.l1 is not None and not 1 <= self.l1 < self.l2:
            raise ValueError(f"aim: need 1 <= l1 < l2, got l1={self.l1}, l2={self.l2}")
        if self.tau <= 0 or self.pagerank_iters < 1:
            raise ValueError("aim: tau must be > 0 and pagerank_iters >= 1")


@dataclass(frozen=True)
class FastVConfig:
    """FastV (ECCV'24): at layer ``k`` drop the share ``r`` of the visual tokens that the last prompt token
    attended to least in layer ``k - 1`` (head mean). Paper default K=2, R=0.5.

    Attributes:
        k: the first layer that sees fewer visual tokens.
        r: the fraction of visual tokens dropped (the paper's R), in [0, 1].
        prune_mode: ``"remove"`` (real speed-up) or ``"mask"`` (the official masking reference).
    """

    k: int = 2
    r: float = 0.5
    prune_mode: PruneMode = "remove"

    name = "fastv"

    def __post_init__(self) -> None:
        _check_prune_mode(self.name, self.prune_mode)
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"fastv: k must be a layer index >= 1, got {self.k!r}")
        if not 0.0 <= float(self.r) <= 1.0:
            raise ValueError(f"fastv: r (fraction dropped) must be in [0, 1], got {self.r!r}")
