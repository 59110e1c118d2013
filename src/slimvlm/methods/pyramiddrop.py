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

from torch import Tensor

from ..inllm.schedules import pyramiddrop_schedule
from .aim import PruneMode, check_prune_mode
from .base import Reduction
from .budget import MethodConfig, check_budget
from .none import keep_all
from .registry import PrunerPlan, register

__all__ = ["PyramidDropConfig", "pyramiddrop", "check_renumber", "pruner_positions"]


def check_renumber(name: str, renumber: bool | None) -> None:
    """``renumber`` must be None (the official renumbering where the RoPE is 1-D), True or False."""
    if renumber is not None and not isinstance(renumber, bool):
        raise ValueError(f"{name}: renumber must be None (automatic), True or False, got {renumber!r}")


def pruner_positions(renumber: bool | None) -> str:
    """The in-LLM pruner's ``positions`` for a ``renumber`` option."""
    return "auto" if renumber is None else ("renumber" if renumber else "original")


@dataclass(frozen=True)
class PyramidDropConfig(MethodConfig):
    """PyramidDrop's options (official defaults for LLaVA-1.5: stages at 8/16/24 of 32 layers, 50/25/12.5 %).

    Attributes:
        layers: first layer of each stage for a ``reference_layers``-deep model (scaled to the model's depth and
            rounded: 4 layers → 1, 2, 3).
        ratios: share of the original visual tokens each stage keeps (non-increasing).
        reference_layers: the depth ``layers`` are given for (32).
        keep: instead of ``ratios`` of n, the tokens the first stage keeps (the later stages its proportions).
        renumber: whether the kept tokens are renumbered after each stage (the official code); None: yes on
            1-D RoPE, no on M-RoPE (Qwen2-VL, Qwen2.5-VL keep their (t, h, w) positions).
        prune_mode: ``"remove"`` (real speed-up) or ``"mask"`` (full-length reference).
    """

    layers: tuple[int, ...] = (8, 16, 24)
    ratios: tuple[float, ...] = (0.5, 0.25, 0.125)
    reference_layers: int = 32
    keep: int | None = None
    renumber: bool | None = None
    prune_mode: PruneMode = "remove"

    def __post_init__(self) -> None:
        check_prune_mode(self.name, self.prune_mode)
        check_renumber(self.name, self.renumber)
        check_budget(self.keep, None, self.name)
        if len(self.layers) != len(self.ratios) or not self.layers:
            raise ValueError(f"{self.name}: layers and ratios need the same non-zero length")
        if any(not 0.0 <= float(r) <= 1.0 for r in self.ratios) or any(
            b > a for a, b in zip(self.ratios, self.ratios[1:])
        ):
            raise ValueError(f"{self.name}: ratios must be non-increasing fractions in [0, 1], got {self.ratios}")


def _pyramiddrop_pruner(config: PyramidDropConfig, num_layers: int) -> PrunerPlan:
    schedule = pyramiddrop_schedule(num_layers, config.layers, config.ratios, config.reference_layers, keep=config.keep)
    return PrunerPlan(schedule, score="pyramiddrop", mode=config.prune_mode, options={"positions": pruner_positions(config.renumber)})


@register("pyramiddrop", config=PyramidDropConfig, pruner=_pyramiddrop_pruner, reduces=False,
          summary="PyramidDrop: stages keep 50/25/12.5% of the visual tokens by last-instruction attention",
          reference="Xing et al., CVPR 2025; Cooperx521/PyramidDrop")
def pyramiddrop(features: Tensor, *, config: PyramidDropConfig) -> Reduction:
    """PyramidDrop's pre-LLM part: every token goes into the language model unchanged."""
    return keep_all(features, config.name)
