"""Pieces shared by the temporal (video) methods — DyCoke, FastVID, HoliTom, EVS: the per-video budget config,
cosine similarity between consecutive frames, the density-peaks score of DPC-KNN, its seeded tie-breaking
noise, and the assembly of a per-frame :class:`Reduction` from variable-length rows.

A temporal method receives ONE video as its batch: ``features`` ``(F, n, C)``, row ``f`` = frame ``f``
(``Method.temporal``). Its result keeps one row per frame: a token merged across frames sits in the row of the
frame whose token it replaces, and the tokens merged into it from other frames count as dropped (``-1``) in
their own rows' ``assignment``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Reduction
from .budget import BudgetConfig

__all__ = [
    "TemporalConfig",
    "check_unit",
    "consecutive_cosine",
    "tie_noise",
    "top",
    "density_peaks",
    "rows_reduction",
]


@dataclass(frozen=True)
class TemporalConfig(BudgetConfig):
    """Base of the temporal methods' configs: ``keep`` / ``ratio`` are per video
    (:meth:`~slimvlm.methods.budget.BudgetConfig.video_budget`, ``keep`` per frame on average);
    :meth:`video_count` is the method's exact total for a video (None: the content decides) and :meth:`count`
    that of one frame (an image)."""

    def count(self, n: int) -> int | None:
        return self.video_count(n, 1)

    def video_count(self, n: int, frames: int) -> int | None:  # pragma: no cover - every method overrides it
        raise NotImplementedError


def check_unit(value: object, what: str, method: str, *, low_open: bool = False, high_open: bool = False) -> None:
    """``value`` must be a real number in ``[0, 1]`` (ends excluded as asked); a clear error otherwise."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok:
        v = float(value)
        ok = (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1)
    if not ok:
        span = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        raise ValueError(f"{method}: {what} must be a number in {span}, got {value!r}")


def consecutive_cosine(x: Tensor) -> Tensor:
    """``(F-1, n)`` cosine similarity of every token with the token at the same position in the next frame,
    ``x`` ``(F, n, C)`` (``torch.nn.functional.cosine_similarity``, its dtype)."""
    return F.cosine_similarity(x[1:], x[:-1], dim=-1)


def tie_noise(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """The ``U(0, 1) · 1e-6`` the official DPC-KNN code adds to the densities so that no two are equal, drawn
    from a seeded CPU generator (the official draw is unseeded) so that results are reproducible on any device."""
    return (torch.rand(shape, generator=generator) * 1e-6).to(device)


def top(scores: Tensor, k: int, largest: bool = True) -> Tensor:
    """Indices of the ``k`` largest (smallest) entries of each row of ``scores``, in that order, equal values by
    lower index first (a stable sort; the official code's ``topk`` leaves the order of ties to the kernel)."""
    return torch.sort(scores, dim=-1, descending=largest, stable=True).indices[..., :k]


def density_peaks(x: Tensor, k: int, noise: Tensor) -> tuple[Tensor, Tensor]:
    """The DPC-KNN score of every token of each row of ``x`` ``(B, L, C)`` (float32), as FastVID and HoliTom
    compute it: distances ``cdist / sqrt(C)``; density ``exp(-mean of the squared distances to the k nearest
    tokens, itself included) + noise``; the distance to the nearest denser token (the largest distance of the
    row for the densest); score = distance · density. Returns ``(score (B, L), distances (B, L, L))``."""
    c = x.shape[-1]
    dist = torch.cdist(x, x) / (c**0.5)
    nearest = dist.topk(k, dim=-1, largest=False).values
    density = (-(nearest**2).mean(-1)).exp() + noise
    denser = density[:, None, :] > density[:, :, None]
    far = dist.flatten(1).max(-1).values[:, None, None].expand_as(dist)
    parent = torch.where(denser, dist, far).min(-1).values
    return parent * density, dist


def rows_reduction(rows: Sequence[tuple[Tensor, Tensor]], owners: Tensor, like: Tensor, method: str) -> Reduction:
    """The :class:`Reduction` of ``len(rows)`` frames from each frame's ``(features (m_f, C), anchors (m_f,))``
    (any ``m_f``, 0 included; anchors distinct within a row) and ``owners`` ``(F, n)``: for every input token,
    the anchor of the output token of its own frame that holds it, or -1. Padded with zeros / -1, in
    ``like``'s dtype."""
    f, n = owners.shape
    c = like.shape[-1]
    dev = like.device
    lengths = torch.tensor([int(a.shape[0]) for _, a in rows], dtype=torch.long, device=dev)
    m = int(lengths.max()) if f else 0
    feats = like.new_zeros((f, m, c))
    anchors = torch.full((f, m), -1, dtype=torch.long, device=dev)
    for i, (x, a) in enumerate(rows):
        feats[i, : a.shape[0]] = x.to(like.dtype)
        anchors[i, : a.shape[0]] = a
    valid = anchors >= 0
    slot = torch.full((f, n), -1, dtype=torch.long, device=dev)
    frame = torch.arange(f, device=dev)[:, None].expand(f, m)
    slot[frame[valid], anchors[valid]] = torch.arange(m, device=dev).expand(f, m)[valid]
    assignment = torch.where(owners >= 0, slot.gather(1, owners.clamp(min=0)), torch.full_like(owners, -1))
    return Reduction(feats, anchors, lengths, assignment, method)
