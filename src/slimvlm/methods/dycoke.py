"""``dycoke``: DyCoke's token temporal merging (TTM) (Tao et al., "DyCoke: Dynamic Compression of Tokens for
Fast Video Large Language Models", CVPR 2025).

Official rule: ``KD-TAO/DyCoke`` at ``dd7463498203479d0ff6f2d29c4e72928c0af244``, ``llava/model/llava_arch.py``
(``dycole_ttm``, applied to a LLaVA-OneVision video's pooled, projected frame tokens); ported unchanged to
``ModelTC/LightCompress`` at ``9701d035b0aac5df97a2ebaadb30bcf0707616f5``,
``llmc/compression/token_reduction/dycoke.py``. With ``n`` tokens per frame and merging ratio ``k``
(``dycoke_k``, README 0.7), a pruned frame keeps ``p = int((1 - k) · n)`` tokens:

1. pairs ``(i, i+1)``, ``i = 0, 2, 4, …, i+1 < F``: frame ``i`` stays whole; frame ``i+1`` keeps the ``p``
   tokens least similar (cosine, position by position) to frame ``i``, in ascending-similarity order (topk);
2. for ``i = 0, 4, 8, …, i < F - 4``: frame ``i+2`` is replaced by its ``p`` tokens least similar to frame ``i``.

So frames ``≡ 0 (mod 4)`` stay whole and the others keep ``p`` tokens, except that the loop bound of step 2 leaves
the last group's frame ``i+2`` whole (8 frames: frames 0, 4 and 6 stay whole). The code's "merging" drops
the similar tokens (nothing is averaged). Its defects: with an odd F the last frame is never emitted (its tokens
are lost); with F ≤ 4 the ``torch.stack`` of the empty step-2 list raises (read here as: step 2 does nothing);
one frame raises too (here: kept whole).

``mode="faithful"`` (default) reproduces all of it, including the lost last frame of an odd video and the
topk order of a pruned frame's tokens. ``mode="clean"`` keeps an odd video's last frame whole, prunes every
group's frame ``i+2`` (``i < F - 2``) and keeps raster order. Budget: ``merging_ratio=k`` (official; default
0.7), or ``keep`` / ``ratio`` for the video (``video_budget``), which sets ``p`` to fill what the whole frames
leave: ``p = clamp((total - n · whole frames) // pruned frames, 0, n)`` — DyCoke never goes below its whole frames.
One frame (an image): kept whole.

DyCoke's second stage, dynamic KV-cache pruning (``llava/model/language_model/modeling_qwen2.py``,
``PrunableDynamicCache.dycoke_pruning``), is not implemented: at every decoding step it re-selects, from layer
``L`` (3) on, the visual tokens the last token attends to most at layer ``L - 1`` (keeping ``1 - p``) whenever that
attention changed (cosine < 0.9), over the full cache — a per-step attention mask during decoding that
``slimvlm.inllm`` (prefill-time cuts on a fixed schedule) does not provide (docs/methods.md, "DyCoke").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from .base import Reduction
from .registry import register
from .temporal import TemporalConfig, check_unit, rows_reduction, top

__all__ = ["DyCokeConfig", "dycoke", "dycoke_plan"]

#: the official merging ratio (README: dycoke_k=0.7; LightCompress config merging_ratio: 0.7)
DEFAULT_MERGING_RATIO = 0.7

WHOLE, LOST = -1, -2


def dycoke_plan(frames: int, mode: str = "faithful") -> list[int]:
    """Per frame: ``-1`` kept whole, ``-2`` lost (faithful, odd F: the last frame), or the frame it is pruned
    against."""
    if frames == 1:
        return [WHOLE]
    plan = [LOST] * frames
    for i in range(0, frames - 1, 2):
        plan[i], plan[i + 1] = WHOLE, i
    if mode == "clean" and frames % 2:
        plan[-1] = WHOLE
    for i in range(0, frames - (4 if mode == "faithful" else 2), 4):
        plan[i], plan[i + 2] = WHOLE, i
    return plan


@dataclass(frozen=True)
class DyCokeConfig(TemporalConfig):
    """Options of DyCoke (TTM).

    Attributes:
        keep / ratio: the video's budget (``video_budget``); sets the pruned frames' count.
        merging_ratio: DyCoke's ``k`` in ``[0, 1]`` instead: pruned frames keep ``int((1 - k) · n)`` (default 0.7).
        mode: ``"faithful"`` (official, default) or ``"clean"`` (see the module).
    """

    merging_ratio: float | None = None
    mode: Literal["faithful", "clean"] = "faithful"

    default_budget: ClassVar[float | int | None] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.merging_ratio is not None:
            if self.budget_given:
                raise ValueError(f"{self.name}: give merging_ratio or a keep/ratio budget, not both")
            check_unit(self.merging_ratio, "merging_ratio", self.name)
        if self.mode not in ("faithful", "clean"):
            raise ValueError(f"{self.name}: mode must be 'faithful' or 'clean', got {self.mode!r}")

    def pruned_count(self, n: int, frames: int) -> int:
        """Tokens each pruned frame keeps."""
        plan = dycoke_plan(frames, self.mode)
        pruned = sum(p >= 0 for p in plan)
        if not self.budget_given:
            k = DEFAULT_MERGING_RATIO if self.merging_ratio is None else self.merging_ratio
            return int((1 - k) * n)
        if not pruned:
            return 0
        whole = plan.count(WHOLE) * n
        return max(0, min(n, (self.video_budget(n, frames) - whole) // pruned))

    def video_count(self, n: int, frames: int) -> int:
        plan = dycoke_plan(frames, self.mode)
        return plan.count(WHOLE) * n + sum(p >= 0 for p in plan) * self.pruned_count(n, frames)


@register("dycoke", config=DyCokeConfig, temporal=True,
          summary="DyCoke temporal merging: frames pruned to the tokens least similar to an anchor frame",
          reference="Tao et al., CVPR 2025; KD-TAO/DyCoke (TTM; the decoding-time KV pruning is not implemented)")
def dycoke(features: Tensor, *, config: DyCokeConfig) -> Reduction:
    """DyCoke's TTM on one video ``(F, n, C)`` (row = frame); see the module for the rule and the modes."""
    f, n, _ = features.shape
    dev = features.device
    plan = dycoke_plan(f, config.mode)
    p = config.pruned_count(n, f)
    pruned = [i for i, r in enumerate(plan) if r >= 0]
    owners = torch.full((f, n), -1, dtype=torch.long, device=dev)
    every = torch.arange(n, device=dev)
    rows: list[tuple[Tensor, Tensor]] = []
    for i, r in enumerate(plan):
        rows.append((features[i], every) if r == WHOLE else (features[i, :0], every[:0]))
        if r == WHOLE:
            owners[i] = every
    if pruned:
        target = torch.tensor(pruned, device=dev)
        ref = torch.tensor([plan[i] for i in pruned], device=dev)
        sim = torch.nn.functional.cosine_similarity(features[target], features[ref], dim=-1)  # (P, n)
        keep = top(sim, p, largest=False)  # ascending similarity: the official order
        if config.mode == "clean":
            keep = keep.sort(dim=1).values
        owners[target[:, None], keep] = keep
        for row, i in enumerate(pruned):
            rows[i] = (features[i, keep[row]], keep[row])
    return rows_reduction(rows, owners, features, config.name)
