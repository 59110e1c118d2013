"""Signal-free baselines: identity, random, sequential, spatial grid sampling and average pooling.

These are the comparisons of the PruMerge paper's ablation ("sequential" = the first K tokens in raster
order; "spatial" = a uniform grid such as 6×6 or 5×8) and of every token-reduction paper (random; pooling,
as LLaVA-OneVision / LLaVA-NeXT-Video pool video frames). All keep raster order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Reduction, check_features, empty_reduction
from .common import check_budget, grid_indices, grid_shape_for_budget, infer_grid, resolve_budget

__all__ = [
    "IdentityConfig",
    "RandomConfig",
    "SequentialConfig",
    "SpatialConfig",
    "PoolConfig",
    "identity",
    "random_sample",
    "sequential",
    "spatial",
    "pool",
]

DEFAULT_RATIO = 0.25


@dataclass(frozen=True)
class IdentityConfig:
    """No options: every token is kept unchanged (the ``"none"`` method)."""

    name = "none"


@dataclass(frozen=True)
class _BudgetConfig:
    keep: int | None = None
    ratio: float | None = None

    name = "budget"

    def __post_init__(self) -> None:
        check_budget(self.keep, self.ratio, self.name)

    def count(self, n: int) -> int:
        k = resolve_budget(n, self.keep, self.ratio, self.name)
        return k if k is not None else max(1, int(n * DEFAULT_RATIO))


@dataclass(frozen=True)
class RandomConfig(_BudgetConfig):
    """Keep ``keep`` (or ``ratio`` · N; default 25 %) tokens drawn uniformly without replacement, per item.
    ``seed`` makes the draw reproducible (default 0)."""

    seed: int = 0

    name = "random"


@dataclass(frozen=True)
class SequentialConfig(_BudgetConfig):
    """Keep the first ``keep`` (or ``ratio`` · N; default 25 %) tokens in raster order."""

    name = "sequential"


@dataclass(frozen=True)
class SpatialConfig(_BudgetConfig):
    """Keep a uniform ``sample_grid`` (rows, cols) of the token grid, e.g. (6, 6) or (5, 8); or, from a
    keep/ratio budget (default 25 %), the grid with the most cells ≤ budget closest to the image's aspect."""

    sample_grid: tuple[int, int] | None = None

    name = "spatial"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sample_grid is not None and (self.keep is not None or self.ratio is not None):
            raise ValueError(f"{self.name}: give sample_grid or a keep/ratio budget, not both")
        if self.sample_grid is not None and (len(self.sample_grid) != 2 or min(self.sample_grid) < 1):
            raise ValueError(f"{self.name}: sample_grid must be (rows, cols) >= 1, got {self.sample_grid}")

    def shape(self, h: int, w: int) -> tuple[int, int]:
        if self.sample_grid is not None:
            return int(self.sample_grid[0]), int(self.sample_grid[1])
        return grid_shape_for_budget(h, w, self.count(h * w))


@dataclass(frozen=True)
class PoolConfig(SpatialConfig):
    """Average-pool the token grid to ``sample_grid`` (or the budget's grid), ``adaptive_avg_pool2d`` windows."""

    name = "pool"


def _selection(features: Tensor, idx: Tensor, method: str) -> Reduction:
    """Reduction that keeps the tokens ``idx`` (B, K), given in ascending order."""
    b, n, c = features.shape
    k = idx.shape[1]
    out = features.gather(1, idx[..., None].expand(-1, -1, c))
    assignment = torch.full((b, n), -1, dtype=torch.long, device=features.device)
    assignment.scatter_(1, idx, torch.arange(k, device=features.device).expand(b, k).contiguous())
    lengths = torch.full((b,), k, dtype=torch.long, device=features.device)
    return Reduction(out, idx, lengths, assignment, method)


def identity(features: Tensor, *, config: IdentityConfig | None = None) -> Reduction:
    """Keep every token (bit-identical features)."""
    check_features(features)
    if features.shape[0] == 0:
        return empty_reduction(features, "none")
    b, n, _ = features.shape
    dev = features.device
    every = torch.arange(n, device=dev).expand(b, n)
    return Reduction(features, every, torch.full((b,), n, dtype=torch.long, device=dev), every, "none")


def random_sample(features: Tensor, *, config: RandomConfig | None = None, **options) -> Reduction:
    """Uniform random subset per item (seeded, CPU generator for reproducibility across devices)."""
    cfg = config if config is not None else RandomConfig(**options)
    check_features(features)
    if features.shape[0] == 0:
        return empty_reduction(features, cfg.name)
    b, n, _ = features.shape
    gen = torch.Generator().manual_seed(cfg.seed)
    noise = torch.rand(b, n, generator=gen).to(features.device)
    idx = torch.sort(torch.topk(noise, cfg.count(n), dim=1).indices, dim=1).values
    return _selection(features, idx, cfg.name)


def sequential(features: Tensor, *, config: SequentialConfig | None = None, **options) -> Reduction:
    """The first K tokens in raster order (the PruMerge paper's "sequential sampling")."""
    cfg = config if config is not None else SequentialConfig(**options)
    check_features(features)
    if features.shape[0] == 0:
        return empty_reduction(features, cfg.name)
    b, n, _ = features.shape
    return _selection(features, torch.arange(cfg.count(n), device=features.device).expand(b, -1), cfg.name)


def spatial(
    features: Tensor, *, grid: tuple[int, int] | None = None, config: SpatialConfig | None = None, **options
) -> Reduction:
    """A uniform ``gh × gw`` grid of the ``grid`` = (rows, cols) token layout (square by default): the tokens
    at the cell centres ``floor((i + 1/2) · rows / gh)``."""
    cfg = config if config is not None else SpatialConfig(**options)
    check_features(features)
    if features.shape[0] == 0:
        return empty_reduction(features, cfg.name)
    b, n, _ = features.shape
    h, w = infer_grid(n, grid)
    gh, gw = cfg.shape(h, w)
    idx = grid_indices(h, w, gh, gw, features.device)
    return _selection(features, idx.expand(b, -1), cfg.name)


def pool(
    features: Tensor, *, grid: tuple[int, int] | None = None, config: PoolConfig | None = None, **options
) -> Reduction:
    """Average pooling of the token grid to ``gh × gw`` cells (``adaptive_avg_pool2d``). Each output token is the
    mean of its window ``[floor(i·H/gh), ceil((i+1)·H/gh))`` (likewise for columns); its anchor is the window's
    centre token; input token (r, c) is assigned to window ``(floor(r·gh/H), floor(c·gw/W))``, which contains it
    (windows overlap when gh does not divide H)."""
    cfg = config if config is not None else PoolConfig(**options)
    check_features(features)
    if features.shape[0] == 0:
        return empty_reduction(features, cfg.name)
    b, n, c = features.shape
    h, w = infer_grid(n, grid)
    gh, gw = cfg.shape(h, w)
    kh, kw = h // gh, w // gw
    if b == 1 and h == gh * kh and w == gw * kw and gh * gw > 1 and kh * kw <= _MAX_TILE_LOOP:
        # Exact tiling, one image: the same sums, bit for bit, without the slow scalar kernel. (A 1×1 output is
        # a mean() inside adaptive_avg_pool2d, summed in another order, so it stays there.)
        out = _pool_tiled(features.float(), gh, kh, gw, kw).to(features.dtype)
    else:
        img = features.transpose(1, 2).reshape(b, c, h, w)
        out = F.adaptive_avg_pool2d(img.float(), (gh, gw)).reshape(b, c, gh * gw).transpose(1, 2).to(features.dtype)
    dev = features.device
    anchors = grid_indices(h, w, gh, gw, dev).expand(b, -1)
    row_cell = (torch.arange(h, device=dev) * gh) // h
    col_cell = (torch.arange(w, device=dev) * gw) // w
    assignment = (row_cell[:, None] * gw + col_cell[None, :]).flatten().expand(b, -1).contiguous()
    lengths = torch.full((b,), gh * gw, dtype=torch.long, device=dev)
    return Reduction(out, anchors.contiguous(), lengths, assignment, cfg.name)


# Largest window (kh·kw tokens) summed by the slice loop of _pool_tiled; bigger windows keep adaptive_avg_pool2d.
_MAX_TILE_LOOP = 64


def _pool_tiled(x: Tensor, gh: int, kh: int, gw: int, kw: int) -> Tensor:
    """Means ``(1, gh·gw, C)`` of the disjoint ``kh × kw`` windows of a float32 ``(1, gh·kh · gw·kw, C)`` grid.

    Same arithmetic, bit for bit, as the kernel ``adaptive_avg_pool2d`` runs on ``pool``'s B = 1 layout (each
    window summed row by row from its first token, then ``/ kh / kw``), but one vectorised add over all windows
    and channels per window offset (kh·kw adds) instead of a scalar loop per channel. For B > 1 the layout takes
    the channels-last kernel, fast already and rounded differently (``/ (kh·kw)``), so ``pool`` keeps it there.
    """
    c = x.shape[-1]
    cells = x.reshape(1, gh, kh, gw, kw, c)
    acc = cells[:, :, 0, :, 0].clone()
    for i in range(kh):
        for j in range(kw):
            if i or j:
                acc.add_(cells[:, :, i, :, j])
    return (acc / kh / kw).reshape(1, gh * gw, c)
