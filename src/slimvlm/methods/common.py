"""Pieces shared by several methods: attention scores from captured q/k, the IQR fence, packing of
variable-length selections, token selection, and spatial grids. Pure torch; batched; no loop over tokens."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .base import Reduction, _all_finite

__all__ = [
    "cls_attention_from_qk",
    "attention_received",
    "head_mean_keys",
    "iqr_upper_fence",
    "descending_rank",
    "pack",
    "select_tokens",
    "infer_grid",
    "grid_indices",
    "grid_shape_for_budget",
]

AttentionForm = Literal["prumerge", "head_mean", "head_sum"]


def _split_heads(x: Tensor, num_heads: int) -> Tensor:
    b, n, c = x.shape
    if c % num_heads:
        raise ValueError(f"num_heads={num_heads} does not divide the projection width {c}")
    return x.view(b, n, num_heads, c // num_heads).transpose(1, 2)  # (B, H, N, d)


def _check_qk(q: Tensor, k: Tensor) -> None:
    if q.dim() != 3 or k.dim() != 3 or q.shape != k.shape:
        raise ValueError(f"q and k must both have shape (B, T, C); got {tuple(q.shape)} and {tuple(k.shape)}")
    if not (_all_finite(q) and _all_finite(k)):
        raise ValueError("q/k contain NaN or inf values")


def cls_attention_from_qk(
    q: Tensor, k: Tensor, form: AttentionForm = "prumerge", num_heads: int | None = None
) -> Tensor:
    """[CLS]→patch attention ``(B, N)`` from the raw (unscaled) ``q_proj``/``k_proj`` outputs ``(B, N+1, C)``,
    token 0 being [CLS].

    - ``"prumerge"``: the official PruMerge form, ``softmax(q kᵀ · C^-1/2)`` with all heads concatenated into
      one C-wide head (docs/methods.md, "PruMerge"). Rows sum to 1 over all N+1 keys, so the patch part sums to
      ``1 - attn(CLS→CLS)``.
    - ``"head_mean"`` / ``"head_sum"``: the model's true per-head softmax (scale ``d^-1/2``, ``d = C/H``),
      averaged or summed over heads (VisionZip sums, FasterVLM averages). Needs ``num_heads``.
    """
    _check_qk(q, k)
    q0 = q[:, :1].float()
    kf = k.float()
    if form == "prumerge":
        logits = (q0 @ kf.transpose(1, 2)) * q.shape[-1] ** -0.5  # (B, 1, N+1)
        return logits.softmax(-1)[:, 0, 1:]
    if form in ("head_mean", "head_sum"):
        if not num_heads:
            raise ValueError(f"form={form!r} needs num_heads")
        qh, kh = _split_heads(q0, num_heads), _split_heads(kf, num_heads)  # (B,H,1,d), (B,H,N+1,d)
        attn = ((qh @ kh.transpose(-1, -2)) * qh.shape[-1] ** -0.5).softmax(-1)[:, :, 0, 1:]  # (B,H,N)
        return attn.mean(1) if form == "head_mean" else attn.sum(1)
    raise ValueError(f"unknown attention form {form!r}; choose 'prumerge', 'head_mean' or 'head_sum'")


def attention_received(q: Tensor, k: Tensor, num_heads: int) -> Tensor:
    """Pseudo-[CLS] score for towers without a [CLS] token (SigLIP): the attention each token receives,
    i.e. the column mean of the head-mean attention matrix, ``(B, N)`` from ``q``/``k`` of shape ``(B, N, C)``
    (VisionZip / VisPruner's "global attention"). Each row sums to 1."""
    _check_qk(q, k)
    qh, kh = _split_heads(q.float(), num_heads), _split_heads(k.float(), num_heads)
    attn = ((qh @ kh.transpose(-1, -2)) * qh.shape[-1] ** -0.5).softmax(-1)  # (B,H,N,N)
    return attn.mean(1).mean(1)


def head_mean_keys(k: Tensor, num_heads: int) -> Tensor:
    """Keys averaged over heads, ``(B, N, C/H)``: the similarity metric of ToMe and VisionZip."""
    return _split_heads(k, num_heads).mean(1)


def iqr_upper_fence(scores: Tensor, pooled: bool = False) -> Tensor:
    """Upper IQR fence ``Q3 + 1.5 (Q3 - Q1)`` with numpy's default linear interpolation, ``(B, 1)`` float64.

    ``pooled=True`` is the official PruMerge rule: one fence over the whole batch flattened (§1.4);
    ``pooled=False`` computes one fence per image.
    """
    s = scores.detach().float().double()
    probs = torch.tensor([0.25, 0.75], dtype=torch.float64, device=s.device)
    if pooled:
        q1, q3 = torch.quantile(s.flatten(), probs)
        fence = q3 + 1.5 * (q3 - q1)
        return fence.expand(s.shape[0]).unsqueeze(1)
    q1, q3 = torch.quantile(s, probs, dim=1)
    return (q3 + 1.5 * (q3 - q1)).unsqueeze(1)


def descending_rank(scores: Tensor) -> tuple[Tensor, Tensor]:
    """``(order, rank)``: token indices sorted by descending score (ties: lower index first) and, for every
    token, its position in that order. ``rank < k`` selects the top-k of each row."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order).contiguous())
    return order, rank


def pack(mask: Tensor, key: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Compact the True positions of each row of ``mask`` (B, N) into ``(idx (B, M), lengths (B,))``.

    Selected positions come ordered by ascending ``key`` (default: the index, i.e. raster order; ties by
    index). Slots past ``lengths[b]`` hold index 0 and must be masked by the caller. M = max(lengths).
    """
    b, n = mask.shape
    pos = torch.arange(n, device=mask.device).expand(b, n)
    k = pos if key is None else key
    big = torch.iinfo(torch.long).max if not k.is_floating_point() else math.inf
    k = torch.where(mask, k, torch.full_like(k, big))
    order = torch.sort(k, dim=1, stable=True).indices
    lengths = mask.sum(1)
    m = int(lengths.max()) if b else 0
    idx = order[:, :m]
    valid = torch.arange(m, device=mask.device)[None, :] < lengths[:, None]
    return torch.where(valid, idx, torch.zeros_like(idx)), lengths


def select_tokens(features: Tensor, idx: Tensor, method: str) -> Reduction:
    """The Reduction that keeps the tokens ``idx`` (B, K) of ``features`` (B, N, C), given in ascending order."""
    b, n, c = features.shape
    k = idx.shape[1]
    out = features.gather(1, idx[..., None].expand(-1, -1, c))
    assignment = torch.full((b, n), -1, dtype=torch.long, device=features.device)
    assignment.scatter_(1, idx, torch.arange(k, device=features.device).expand(b, k).contiguous())
    lengths = torch.full((b,), k, dtype=torch.long, device=features.device)
    return Reduction(out, idx, lengths, assignment, method)


def infer_grid(n: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    """The (rows, cols) patch grid of N tokens in raster order: as given, or square when N is a square."""
    if grid is not None:
        h, w = int(grid[0]), int(grid[1])
        if h * w != n:
            raise ValueError(f"grid {grid} has {h * w} cells but there are N={n} tokens")
        return h, w
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"N={n} tokens is not a square grid; pass grid=(rows, cols)")
    return side, side


def grid_indices(h: int, w: int, gh: int, gw: int, device: torch.device | None = None) -> Tensor:
    """Raster indices of a uniform ``gh × gw`` sample of an ``h × w`` grid: the cell centres
    ``floor((i + 1/2) · h / gh)`` (likewise for columns), as in the PruMerge paper's "spatial" baseline."""
    if not (1 <= gh <= h and 1 <= gw <= w):
        raise ValueError(f"sample grid {gh}x{gw} does not fit the {h}x{w} token grid")
    rows = ((torch.arange(gh, device=device) * 2 + 1) * h) // (2 * gh)
    cols = ((torch.arange(gw, device=device) * 2 + 1) * w) // (2 * gw)
    return (rows[:, None] * w + cols[None, :]).flatten()


def grid_shape_for_budget(h: int, w: int, budget: int) -> tuple[int, int]:
    """The sample grid ``gh × gw ≤ budget`` with the largest count, closest to the ``h × w`` aspect ratio."""
    best: tuple[int, float, int, int] | None = None
    for gh in range(1, h + 1):
        gw = min(w, budget // gh)
        if gw < 1:
            break
        aspect_err = abs(math.log((gh / gw) / (h / w)))
        cand = (gh * gw, -aspect_err, gh, gw)
        if best is None or cand[:2] > best[:2]:
            best = cand
    assert best is not None
    return best[2], best[3]
