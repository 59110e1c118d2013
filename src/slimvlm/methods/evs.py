"""``evs``: vLLM's Efficient Video Sampling, the video pruning vLLM ships for Qwen2.5-VL
(``--video-pruning-rate q``), so that slimvlm runs can be compared with what a vLLM server does.

Official rule: ``vllm-project/vllm`` at ``926c71f6f25f8fe0a71ba4b168205e64bef24a36``,
``vllm/multimodal/evs.py`` (``compute_retention_mask``, ``compute_retained_tokens_count``), called per video by
``Qwen2_5_VLForConditionalGeneration._postprocess_video_embeds_evs`` (``vllm/model_executor/models/qwen2_5_vl.py``)
on the merger's output (LLM-width tokens, ``(T, h, w)`` = temporal patches × the merged grid):

1. every token's dissimilarity to the token at the same position in the previous frame,
   ``1 - cos(x[t, j], x[t-1, j])``; the first frame's tokens get 255 (always kept);
2. over the whole video (frame-major, raster within a frame) the ``max(n, int(T·n·(1 - q)))`` most dissimilar
   tokens are kept (stable descending sort: ties go to the earlier token);
3. the kept tokens keep their order and their original (t, h, w) M-RoPE positions.

slimvlm applies the same rule to the frames of any family's video item (post-projector tokens). The budget is
per video: ``pruning_rate=q`` is vLLM's knob and arithmetic; ``keep=K`` / ``ratio=r`` give the total
``video_budget`` (K per frame on average); either way at least the whole first frame is kept. On an image (one
frame) EVS keeps every token — vLLM applies it to videos only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .base import Reduction
from .budget import DEFAULT_RATIO
from .registry import register
from .temporal import TemporalConfig, check_unit, consecutive_cosine

__all__ = ["EVSConfig", "evs"]


@dataclass(frozen=True)
class EVSConfig(TemporalConfig):
    """Options of EVS.

    Attributes:
        keep / ratio: the video's budget (``keep`` per frame on average; default ``ratio=0.25``, vLLM has none).
        pruning_rate: vLLM's ``video_pruning_rate`` q in ``[0, 1)`` instead: ``int(T·n·(1 - q))`` tokens, vLLM's
            own arithmetic.
    """

    pruning_rate: float | None = None

    default_budget: ClassVar[float | int | None] = DEFAULT_RATIO

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pruning_rate is not None:
            if self.budget_given:
                raise ValueError(f"{self.name}: give pruning_rate or a keep/ratio budget, not both")
            check_unit(self.pruning_rate, "pruning_rate", self.name, high_open=True)

    def video_count(self, n: int, frames: int) -> int:
        """``max(n, total)``: the whole first frame at least (vLLM's ``compute_retained_tokens_count``)."""
        if self.pruning_rate is not None:
            total = int(n * frames * (1 - self.pruning_rate))
        else:
            total = self.video_budget(n, frames)
        return max(n, total)


@register("evs", config=EVSConfig, temporal=True,
          summary="vLLM's Efficient Video Sampling: keep the tokens most changed since the previous frame",
          reference="vLLM vllm/multimodal/evs.py (video_pruning_rate, Qwen2.5-VL); NVIDIA EVS")
def evs(features: Tensor, *, config: EVSConfig) -> Reduction:
    """EVS on one video ``(F, n, C)`` (row = frame): the ``video_count(n, F)`` tokens with the largest
    dissimilarity to the previous frame (first frame: all), kept in raster order per frame; computed in the
    features' dtype, as vLLM does."""
    f, n, c = features.shape
    dev = features.device
    retain = config.video_count(n, f)
    dissim = torch.cat([torch.full((1, n), 255.0, dtype=features.dtype, device=dev), 1 - consecutive_cosine(features)])
    order = torch.argsort(dissim.flatten(), descending=True, stable=True)
    kept = torch.zeros(f * n, dtype=torch.bool, device=dev)
    kept[order[:retain]] = True
    kept = kept.view(f, n)
    lengths = kept.sum(1)
    m = int(lengths.max())
    valid = torch.arange(m, device=dev)[None, :] < lengths[:, None]
    out = features.new_zeros((f, m, c))
    out[valid] = features[kept]  # frame-major, raster within a frame on both sides
    anchors = torch.full((f, m), -1, dtype=torch.long, device=dev)
    anchors[valid] = kept.nonzero()[:, 1]
    assignment = torch.full((f, n), -1, dtype=torch.long, device=dev)
    assignment[kept] = (kept.long().cumsum(1) - 1)[kept]
    return Reduction(out, anchors, lengths, assignment, config.name)
