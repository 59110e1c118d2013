"""DivPrune (Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models",
CVPR 2025, arXiv 2503.02175): the max–min diverse subset of the visual tokens, no attention.

Official code: vbdi/divprune (799e2d9), ``LLaVA/llava/model/llava_arch.py`` (``DivPrune``,
``pairwise_cosine_similarity``), applied to the projected visual tokens (the LLM's input embeddings). The rule
(docs/methods.md, "DivPrune"), with the distance ``D = 1 - cos`` between tokens:

1. first token: the one whose *second-smallest* distance in its column of D is largest (``topk(2, largest=False)``;
   the smallest is normally its zero distance to itself): the token farthest from its nearest neighbour;
2. then, greedily, the token whose smallest distance to the tokens chosen so far is largest (``argmax``: ties to
   the lowest index), until K tokens are chosen;
3. the chosen tokens enter the LLM in raster order.

Step 2 keeps a running minimum over the chosen rows, equal (min is exact) to the official minimum over the
re-gathered rows, in O(K·N) instead of O(K²·N).

``mode="faithful"`` is the official rule. Its defect: a chosen token's own distance (``1 - cos(x, x)``, zero up to
rounding) stays a candidate score, so once every remaining token duplicates a chosen one the ``argmax`` can choose a
token again (the official sequence then holds it twice, and fewer distinct tokens). ``mode="clean"`` (default)
never re-chooses a token; on inputs without duplicate tokens both modes agree. Both modes: the budget follows the
one rule (``int(N·r)``; the official code rounds ``r·N``), a single token is kept as it is (the official ``topk(2)``
needs two), zero-norm tokens count as orthogonal to all (no NaN), and the distances are float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Reduction
from .budget import BudgetConfig
from .common import select_tokens
from .registry import register

__all__ = ["DivPruneConfig", "divprune", "max_min_diverse"]


@dataclass(frozen=True)
class DivPruneConfig(BudgetConfig):
    """Options of DivPrune.

    Attributes:
        keep / ratio: the budget (default 25 %; the paper's main setting keeps about 10 %).
        mode: ``"clean"`` (default: a token is chosen at most once) or ``"faithful"`` (official; may choose a
            token twice once only duplicates remain).
    """

    mode: Literal["clean", "faithful"] = "clean"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("clean", "faithful"):
            raise ValueError(f"{self.name}: mode must be 'clean' or 'faithful', got {self.mode!r}")


def max_min_diverse(features: Tensor, k: int, exclude_chosen: bool = True) -> Tensor:
    """The DivPrune order of choice ``(B, k)`` over the tokens ``(B, N, C)`` (cosine distance, float32).
    ``exclude_chosen=False`` lets a chosen token be chosen again, as the official code can."""
    b, n, _ = features.shape
    dev = features.device
    unit = F.normalize(features.float(), dim=-1)
    dist = 1.0 - unit @ unit.transpose(1, 2)  # (B, N, N)
    rows = torch.arange(b, device=dev)
    chosen = torch.empty(b, k, dtype=torch.long, device=dev)
    if n == 1:
        return chosen.fill_(0)
    first = dist.topk(2, dim=1, largest=False).values[:, 1, :]  # per column: second-smallest distance
    chosen[:, 0] = first.argmax(1)
    nearest = dist[rows, chosen[:, 0]]  # (B, N): distance of every token to the chosen set
    taken = torch.zeros(b, n, dtype=torch.bool, device=dev)
    for i in range(1, k):
        if exclude_chosen:
            taken[rows, chosen[:, i - 1]] = True
            j = nearest.masked_fill(taken, -torch.inf).argmax(1)
        else:
            j = nearest.argmax(1)
        chosen[:, i] = j
        nearest = torch.minimum(nearest, dist[rows, j])
    return chosen


@register("divprune", config=DivPruneConfig, applies="post_projector",
          summary="max-min diverse subset by cosine distance, no attention (default 25%)",
          reference="Alvar et al., CVPR 2025, arXiv 2503.02175; vbdi/divprune llava_arch.py")
def divprune(features: Tensor, *, config: DivPruneConfig) -> Reduction:
    """DivPrune on the LLM-width visual tokens ``(B, N, D)``: ``config.count(N)`` tokens, in raster order (faithful
    mode: a token chosen twice appears twice)."""
    k = config.count(features.shape[1])
    chosen = max_min_diverse(features, k, exclude_chosen=config.mode == "clean")
    return select_tokens(features, torch.sort(chosen, dim=1).values, config.name)
