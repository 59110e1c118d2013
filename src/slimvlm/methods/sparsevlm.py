"""SparseVLM (Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model
Inference", ICML 2025, arXiv 2410.04417; official code ``Gumpest/SparseVLMs`` at 26a5f48 (v1.5, the default
``USE_VERSION``), ``llava/model/language_model/modelling_sparse_llama.py`` (``LlamaDynamicvitModel.forward``),
``score.py`` (``attn_postprocess_topk``, the per-budget stage lists) and ``utils.py`` (``cluster_and_merge``);
also ModelTC/LightCompress at 9701d03, ``llmc/compression/token_reduction/sparsevlm.py``).

- Raters (section 3.2): of the tokens after the image, those whose ``softmax_t(v · tᵀ)`` averaged over the visual
  input embeddings ``v`` is above its mean.
- Stages: layers ``[2, 6, 15]`` (of 32) run in full; their attention probabilities, averaged over heads and over
  the raters, rank the visual tokens present, and from the next layer on ``min(c_s, v - 1)`` stay (``c_s`` from
  the budget's list, ``v`` the visual tokens present).
- Recycling: of the ``p`` pruned tokens, the ``int(0.3 p) + 1`` best ranked are clustered (DPC-KNN, ``int(m / 10)
  + 1`` clusters) on the layer's output; each cluster's mean becomes a token placed after the kept visual tokens,
  and takes part in the next stages as a visual token.
- Positions: renumbered ``0 .. n' - 1`` after each stage in prefill; a decoded token takes its layer's cache
  length (``get_usable_length(kv_seq_len, layer_idx)``).

``prune_mode="remove"`` is that semantics (the merged token lives in the slot of its cluster's centre, ordered
after the row's visual tokens); ``"mask"`` is its full-length equivalent.

Budget: ``keep`` is the official ``RETAIN_TOKN``: 64 / 96 / 128 / 192 select the official per-stage lists
(``[66, 30, 17]`` … ``[300, 200, 110]``, tuned so that the average over the 32 layers is about ``keep``); other
values interpolate them linearly (scale the 64 / 192 lists outside), see
:func:`slimvlm.inllm.schedules.sparsevlm_stage_counts`. ``stage_counts`` gives the lists directly.
See docs/methods.md, "SparseVLM".
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..inllm.schedules import Recycle, sparsevlm_schedule
from .aim import PruneMode, check_prune_mode
from .base import Reduction
from .budget import MethodConfig, check_budget
from .none import keep_all
from .pyramiddrop import check_renumber, pruner_positions
from .registry import PrunerPlan, register

__all__ = ["SparseVLMConfig", "sparsevlm"]

#: the official default budget (``RETAIN_TOKN``).
DEFAULT_KEEP = 192


@dataclass(frozen=True)
class SparseVLMConfig(MethodConfig):
    """SparseVLM's options (official v1.5: stages decided by layers 2/6/15 of 32, recycling on, budget 192).

    Attributes:
        keep: the budget (official ``RETAIN_TOKN``), mapped to per-stage counts (default 192).
        stage_counts: instead of ``keep``, the visual tokens each stage keeps by ranking (non-increasing).
        layers: the layers whose attention decides each stage, for a ``reference_layers``-deep model (scaled
            and rounded: 4 layers → 0, 1, 2).
        reference_layers: the depth ``layers`` are given for (32).
        recycle: whether pruned tokens are recycled into merged tokens (official: yes).
        renumber: whether the kept tokens are renumbered after each stage (the official v1.5 code); None: yes on
            1-D RoPE, no on M-RoPE (Qwen2-VL, Qwen2.5-VL keep their (t, h, w) positions).
        prune_mode: ``"remove"`` (real speed-up) or ``"mask"`` (full-length reference).
    """

    keep: int | None = None
    stage_counts: tuple[int, ...] | None = None
    layers: tuple[int, ...] = (2, 6, 15)
    reference_layers: int = 32
    recycle: bool = True
    renumber: bool | None = None
    prune_mode: PruneMode = "remove"

    def __post_init__(self) -> None:
        check_prune_mode(self.name, self.prune_mode)
        check_renumber(self.name, self.renumber)
        check_budget(self.keep, None, self.name)
        if self.keep is not None and self.stage_counts is not None:
            raise ValueError(f"{self.name}: give keep or stage_counts, not both")
        if self.stage_counts is not None:
            counts = tuple(self.stage_counts)
            if len(counts) != len(self.layers) or any(
                isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts
            ):
                raise ValueError(f"{self.name}: stage_counts needs one whole number >= 0 per layer in {self.layers}")
            if any(b > a for a, b in zip(counts, counts[1:])):
                raise ValueError(f"{self.name}: stage_counts must not increase, got {counts}")


def _sparsevlm_pruner(config: SparseVLMConfig, num_layers: int) -> PrunerPlan:
    schedule = sparsevlm_schedule(
        num_layers, DEFAULT_KEEP if config.keep is None else config.keep, config.layers, config.reference_layers,
        stage_counts=config.stage_counts, recycle=Recycle() if config.recycle else None,
    )
    return PrunerPlan(schedule, score="sparsevlm", mode=config.prune_mode, options={"positions": pruner_positions(config.renumber)})


@register("sparsevlm", config=SparseVLMConfig, pruner=_sparsevlm_pruner, reduces=False,
          summary="SparseVLM: text raters' attention ranks visual tokens at 3 layers; pruned ones recycled by merging",
          reference="Zhang et al., ICML 2025; Gumpest/SparseVLMs")
def sparsevlm(features: Tensor, *, config: SparseVLMConfig) -> Reduction:
    """SparseVLM's pre-LLM part: every token goes into the language model unchanged."""
    return keep_all(features, config.name)
