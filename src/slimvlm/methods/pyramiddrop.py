"""PyramidDrop (Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual
Redundancy Reduction", CVPR 2025, arXiv 2410.17247; official code ``Cooperx521/PyramidDrop`` at 6444f30,
``llava/model/modeling_llama_pdrop.py``, ``pdrop_forward`` / ``pdrop_rank_drop``).

The language model is split into stages at ``layer_list`` (official ``[8, 16, 24]`` of 32 layers). Before stage
``s`` starts at layer ``l``, the output of layer ``l - 1`` goes through layer ``l``'s own ``input_layernorm``,
``q_proj`` and ``k_proj`` (a "lightweight attention" with the current positions); the visual tokens are ranked by
the attention the last instruction token pays them (softmax in float32, averaged over heads) and the top
``int(n * ratio[s])`` of the ORIGINAL ``n`` stay (official ``image_token_ratio_list [0.5, 0.25, 0.125]``). The
kept tokens are renumbered ``0 .. n' - 1`` (``position_ids[i, :cur_len] = arange``) and a decoded token's position
drops by the tokens removed, stage by stage. Nothing happens before the language model.

``keep``: the tokens kept by the first stage; the later stages keep the official proportions of it
(``keep · ratio[s] / ratio[0]``: 64 → 64, 32, 16). Without ``keep`` the official shares of ``n``.
See docs/methods.md, "PyramidDrop".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from ..inllm.schedules import pyramiddrop_schedule
from .aim import PruneMode, check_prune_mode
from .base import Reduction
from .budget import MethodConfig, check_budget
from .none import keep_all
from .registry import PrunerPlan, register

__all__ = ["PyramidDropConfig", "pyramiddrop", "Positions", "check_positions"]

Positions = Literal["auto", "renumber", "original"]


def check_positions(name: str, positions: str) -> None:
    """``positions`` must be ``"auto"`` (official renumbering on 1-D RoPE, original M-RoPE positions),
    ``"renumber"`` or ``"original"``."""
    if positions not in ("auto", "renumber", "original"):
        raise ValueError(f"{name}: positions must be 'auto', 'renumber' or 'original', got {positions!r}")


@dataclass(frozen=True)
class PyramidDropConfig(MethodConfig):
    """PyramidDrop's options (official defaults for LLaVA-1.5: stages at 8/16/24 of 32 layers, 50/25/12.5 %).

    Attributes:
        layers: first layer of each stage for a ``reference_layers``-deep model (scaled to the model's depth and
            rounded: 4 layers → 1, 2, 3).
        ratios: share of the original visual tokens each stage keeps (non-increasing).
        reference_layers: the depth ``layers`` are given for (32).
        keep: instead of ``ratios`` of n, the tokens the first stage keeps (the later stages its proportions).
        positions: ``"auto"`` (the official renumbering on 1-D RoPE; M-RoPE keeps the original positions),
            ``"renumber"`` or ``"original"``.
        prune_mode: ``"remove"`` (real speed-up) or ``"mask"`` (full-length reference).
    """

    layers: tuple[int, ...] = (8, 16, 24)
    ratios: tuple[float, ...] = (0.5, 0.25, 0.125)
    reference_layers: int = 32
    keep: int | None = None
    positions: Positions = "auto"
    prune_mode: PruneMode = "remove"

    def __post_init__(self) -> None:
        check_prune_mode(self.name, self.prune_mode)
        check_positions(self.name, self.positions)
        check_budget(self.keep, None, self.name)
        if len(self.layers) != len(self.ratios) or not self.layers:
            raise ValueError(f"{self.name}: layers and ratios need the same non-zero length")
        if any(not 0.0 <= float(r) <= 1.0 for r in self.ratios) or any(
            b > a for a, b in zip(self.ratios, self.ratios[1:])
        ):
            raise ValueError(f"{self.name}: ratios must be non-increasing fractions in [0, 1], got {self.ratios}")


def _pyramiddrop_pruner(config: PyramidDropConfig, num_layers: int) -> PrunerPlan:
    schedule = pyramiddrop_schedule(num_layers, config.layers, config.ratios, config.reference_layers, keep=config.keep)
    return PrunerPlan(schedule, score="pyramiddrop", mode=config.prune_mode, options={"positions": config.positions})


@register("pyramiddrop", config=PyramidDropConfig, pruner=_pyramiddrop_pruner, reduces=False,
          summary="PyramidDrop: stages keep 50/25/12.5% of the visual tokens by last-instruction attention",
          reference="Xing et al., CVPR 2025; Cooperx521/PyramidDrop")
def pyramiddrop(features: Tensor, *, config: PyramidDropConfig) -> Reduction:
    """PyramidDrop's pre-LLM part: every token goes into the language model unchanged."""
    return keep_all(features, config.name)
