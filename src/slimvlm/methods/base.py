"""The result type every reduction method returns, and the input checks they share.

Methods are pure tensor functions: they import torch only, never transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Reduction", "check_features", "check_scores", "check_keys", "empty_reduction"]


@dataclass(frozen=True)
class Reduction:
    """Reduced visual tokens of a batch, padded to the longest item.

    Items of one batch may keep different numbers of tokens (adaptive methods), so the tensors are padded
    and ``lengths`` says how many slots of each row are real. ``items()`` gives the unpadded list view.

    Attributes:
        features: ``(B, M, C)`` reduced features; slots ``>= lengths[b]`` are zero.
        anchors: ``(B, M)`` long. For every output token, the index (``0..N-1``) of the original token it
            represents: the kept token itself, a merge destination, or, for a summary token (PruMerge's
            extra token), the input token with the largest weight in it. ``-1`` marks padding and tokens
            that stand for no patch (a [CLS] token prepended by VisionZip).
        lengths: ``(B,)`` long, the number of real output tokens per item.
        assignment: ``(B, N)`` long. For every input token, the output slot that holds most of it (its own
            slot if kept, the slot it was merged into otherwise), or ``-1`` if it was dropped. Used for
            pictures of which patches were merged together.
        method: the registry name of the method that produced it.
        summary: ``(B,)`` bool or None: whether the item's last real slot is a summary token standing for many
            dropped tokens (PruMerge's appended extra token) rather than one kept token. None: never.
    """

    features: Tensor
    anchors: Tensor
    lengths: Tensor
    assignment: Tensor
    method: str
    summary: Tensor | None = None

    def has_summary(self, b: int) -> bool:
        """Whether item ``b`` ends with a summary token (PruMerge's extra token)."""
        return self.summary is not None and bool(self.summary[b])

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def counts(self) -> list[int]:
        """Kept tokens per item, as Python ints."""
        return [int(n) for n in self.lengths.tolist()]

    @property
    def valid(self) -> Tensor:
        """``(B, M)`` bool mask of the real (non-padding) slots."""
        m = self.features.shape[1]
        return torch.arange(m, device=self.lengths.device)[None, :] < self.lengths[:, None]

    def item(self, b: int) -> tuple[Tensor, Tensor]:
        """Unpadded ``(features (m_b, C), anchors (m_b,))`` of item ``b``."""
        n = int(self.lengths[b])
        return self.features[b, :n], self.anchors[b, :n]

    def items(self) -> list[tuple[Tensor, Tensor]]:
        """Unpadded ``(features, anchors)`` of every item."""
        return [self.item(b) for b in range(len(self))]

    def to_list(self) -> list[Tensor]:
        """Unpadded features of every item: a list of ``(m_b, C)`` tensors."""
        return [f for f, _ in self.items()]


def _fail(name: str, problem: str) -> None:
    raise ValueError(f"{name}: {problem}")


def _all_finite(t: Tensor) -> bool:
    """Whether every entry is finite. A sum is 10x cheaper than an elementwise test and is finite whenever
    every entry is (barring overflow of the sum itself, which falls back to the exact test)."""
    if t.numel() == 0:
        return True
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def check_features(features: Tensor, name: str = "features") -> None:
    """Features must be a finite floating tensor of shape (B, N, C)."""
    if not isinstance(features, Tensor):
        _fail(name, f"expected a torch.Tensor of shape (B, N, C), got {type(features).__name__}")
    if features.dim() != 3:
        _fail(name, f"expected shape (B, N, C), got {tuple(features.shape)}")
    if not features.is_floating_point():
        _fail(name, f"expected a floating dtype, got {features.dtype}")
    if features.shape[0] > 0 and features.shape[1] == 0:
        _fail(name, "has no tokens (N = 0)")
    if not _all_finite(features):
        _fail(name, "contains NaN or inf values")


def check_scores(scores: Tensor, features: Tensor, name: str) -> None:
    """Per-token scores (e.g. [CLS] attention) must be finite and of shape (B, N) matching the features."""
    if not isinstance(scores, Tensor):
        _fail(name, f"expected a torch.Tensor of shape (B, N), got {type(scores).__name__}")
    b, n = features.shape[:2]
    if tuple(scores.shape) != (b, n):
        _fail(name, f"expected shape (B, N) = {(b, n)} to match the features, got {tuple(scores.shape)}")
    if not _all_finite(scores):
        _fail(name, "contains NaN or inf values")


def check_keys(keys: Tensor, features: Tensor, name: str = "keys") -> None:
    """Similarity keys must be finite and of shape (B, N, Ck) matching the features (Ck may differ from C)."""
    if not isinstance(keys, Tensor):
        _fail(name, f"expected a torch.Tensor of shape (B, N, Ck), got {type(keys).__name__}")
    if keys.dim() != 3 or tuple(keys.shape[:2]) != tuple(features.shape[:2]):
        _fail(name, f"expected shape (B, N, Ck) with (B, N) = {tuple(features.shape[:2])}, got {tuple(keys.shape)}")
    if not _all_finite(keys):
        _fail(name, "contains NaN or inf values")


def empty_reduction(features: Tensor, method: str) -> Reduction:
    """The result for an empty batch (B = 0): empty tensors with the right trailing sizes."""
    b, n, c = features.shape
    long = dict(dtype=torch.long, device=features.device)
    return Reduction(
        features=features.new_zeros((0, 0, c)),
        anchors=torch.zeros((0, 0), **long),
        lengths=torch.zeros((0,), **long),
        assignment=torch.zeros((0, n), **long),
        method=method,
    )
