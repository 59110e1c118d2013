"""``pool``: average pooling of the token grid (how LLaVA-OneVision and LLaVA-NeXT-Video shrink video frames;
recent benchmarks find plain downsampling a strong baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Reduction
from .common import grid_indices, infer_grid
from .registry import register
from .spatial import SpatialConfig

__all__ = ["PoolConfig", "pool"]


@dataclass(frozen=True)
class PoolConfig(SpatialConfig):
    """Average-pool the token grid to ``sample_grid`` (or the budget's grid), ``adaptive_avg_pool2d`` windows."""


@register("pool", config=PoolConfig, summary="average pooling to a grid (default 25%)",
          reference="LLaVA-OneVision / LLaVA-NeXT-Video spatial pooling")
def pool(features: Tensor, *, grid: tuple[int, int] | None = None, config: PoolConfig) -> Reduction:
    """Average pooling of the token grid to ``gh × gw`` cells (``adaptive_avg_pool2d``). Each output token is the
    mean of its window ``[floor(i·H/gh), ceil((i+1)·H/gh))`` (likewise for columns); its anchor is the window's
    centre token; input token (r, c) is assigned to window ``(floor(r·gh/H), floor(c·gw/W))``, which contains it
    (windows overlap when gh does not divide H)."""
    b, n, c = features.shape
    h, w = infer_grid(n, grid)
    gh, gw = config.shape(h, w)
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
    return Reduction(out, anchors.contiguous(), lengths, assignment, config.name)


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
