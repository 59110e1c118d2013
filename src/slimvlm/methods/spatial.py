"""``spatial``: a uniform grid of the token grid, e.g. 6×6 or 5×8 (the PruMerge paper's "spatial sampling"
ablation). Tokens stay in raster order."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import Reduction
from .budget import BudgetConfig
from .common import grid_indices, grid_shape_for_budget, infer_grid, select_tokens
from .registry import register

__all__ = ["SpatialConfig", "spatial"]


@dataclass(frozen=True)
class SpatialConfig(BudgetConfig):
    """Keep a uniform ``sample_grid`` (rows, cols) of the token grid, e.g. (6, 6) or (5, 8); or, from a
    keep/ratio budget (default 25 %), the grid with the most cells ≤ budget closest to the image's aspect."""

    sample_grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sample_grid is not None and self.budget_given:
            raise ValueError(f"{self.name}: give sample_grid or a keep/ratio budget, not both")
        if self.sample_grid is not None and (len(self.sample_grid) != 2 or min(self.sample_grid) < 1):
            raise ValueError(f"{self.name}: sample_grid must be (rows, cols) >= 1, got {self.sample_grid}")

    def shape(self, h: int, w: int) -> tuple[int, int]:
        """The sample grid for an ``h × w`` token grid."""
        if self.sample_grid is not None:
            return int(self.sample_grid[0]), int(self.sample_grid[1])
        return grid_shape_for_budget(h, w, super().count(h * w))

    def count(self, n: int) -> int | None:
        if self.sample_grid is not None:
            return min(n, int(self.sample_grid[0]) * int(self.sample_grid[1]))
        return super().count(n)


@register("spatial", config=SpatialConfig, summary="uniform grid sample, e.g. 6x6 or 5x8 (default 25%)",
          reference="PruMerge paper (arXiv 2403.15388) ablation")
def spatial(features: Tensor, *, grid: tuple[int, int] | None = None, config: SpatialConfig) -> Reduction:
    """A uniform ``gh × gw`` grid of the ``grid`` = (rows, cols) token layout (square by default): the tokens
    at the cell centres ``floor((i + 1/2) · rows / gh)``."""
    b, n, _ = features.shape
    h, w = infer_grid(n, grid)
    gh, gw = config.shape(h, w)
    idx = grid_indices(h, w, gh, gw, features.device)
    return select_tokens(features, idx.expand(b, -1), config.name)
