"""DART (Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More",
arXiv 2502.11494; official code ``ZichenWen1/DART`` at 5a19452, ``llava/model/language_model/modeling_llama_self.py``,
``DART.forward`` / ``get_retained_image_token``; also ModelTC/LightCompress at 9701d03,
``llmc/compression/token_reduction/dart.py``).

Before layer ``K`` (official ``K = 2``) runs: the keys of layer ``K - 1`` (post-RoPE) pick the pivots, the
``pivot_image`` visual tokens and the ``pivot_text`` tokens after the image with the largest L1 norm (4 + 4); the
output of layer ``K - 1`` through the final norm compares tokens: each pivot, in the order the official code
iterates its Python ``set`` of positions, takes the not yet taken visual tokens least cosine-similar to it. The
image pivots and the taken tokens stay, with their original positions (the official code removes the others
from the sequence and keeps ``position_ids = keep_indexs``): ``prune_mode="remove"`` is the official semantics.

Budget: ``keep`` visual tokens stay from layer K on, exactly: the image pivots plus ``keep - pivot_image``
taken tokens, ``(keep - pivot_image) // P`` per pivot and one more for the first ``(keep - pivot_image) % P``
pivots (``P`` pivots). The official code takes ``⌊B / P⌋`` per pivot for its budget ``B`` (``max_num_trunction``,
or ``n · (1 − reduction_ratio)``) and so keeps ``pivot_image + P·⌊B / P⌋``: ``keep = pivot_image + P·⌊B / P⌋``
reproduces it (official 128 → 132 kept, 64 → 68). ``ratio``: ``int(n · ratio)`` (default 0.222, the official
reduction ratio 0.778). See docs/methods.md, "DART".
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

__all__ = ["DARTConfig", "dart"]

#: the share of the visual tokens kept without a budget: the official reduction ratio 0.778 (576 → 128).
DEFAULT_RATIO = 0.222


@dataclass(frozen=True)
class DARTConfig(MethodConfig):
    """DART's options (official: K=2, 4 image + 4 text pivots, reduction ratio 0.778).

    Attributes:
        k: the first layer that sees fewer visual tokens (layer ``k - 1``'s keys and output decide).
        keep: visual tokens kept from layer ``k`` on (per sample, at most all).
        ratio: instead of ``keep``, the kept share of each sample's visual tokens (default 0.222).
        pivot_image, pivot_text: pivots among the visual tokens and among the tokens after them.
        prune_mode: ``"remove"`` (the official removal) or ``"mask"`` (full-length reference).
    """

    k: int = 2
    keep: int | None = None
    ratio: float | None = None
    pivot_image: int = 4
    pivot_text: int = 4
    prune_mode: PruneMode = "remove"

    def __post_init__(self) -> None:
        check_prune_mode(self.name, self.prune_mode)
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"{self.name}: k must be a layer index >= 1, got {self.k!r}")
        check_budget(self.keep, self.ratio, self.name)
        for field in ("pivot_image", "pivot_text"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{self.name}: {field} must be a whole number >= 0, got {v!r}")
        if self.pivot_image + self.pivot_text < 1:
            raise ValueError(f"{self.name}: needs at least one pivot")


def _dart_pruner(config: DARTConfig, num_layers: int) -> PrunerPlan:
    if config.k >= num_layers:
        raise ValueError(f"k={config.k} must be below the model's {num_layers} layers")
    kept = DEFAULT_RATIO if config.ratio is None else float(config.ratio)
    schedule = fastv_schedule(num_layers, config.k, 0.0 if config.keep is not None else 1.0 - kept, keep=config.keep)
    options = {"pivot_image": config.pivot_image, "pivot_text": config.pivot_text, "positions": "original"}
    return PrunerPlan(schedule, score="dart", mode=config.prune_mode, options=options)


@register("dart", config=DARTConfig, pruner=_dart_pruner, reduces=False,
          summary="DART: at layer K keep pivots (key L1 norm) and the tokens least similar to them (duplicates go)",
          reference="Wen et al., arXiv 2502.11494; ZichenWen1/DART")
def dart(features: Tensor, *, config: DARTConfig) -> Reduction:
    """DART's pre-LLM part: every token goes into the language model unchanged."""
    return keep_all(features, config.name)
