"""The one budget rule every method's config follows, and the base classes of the configs.

A budget is ``keep`` (a token count) or ``ratio`` (a fraction of the N input tokens), per image (per frame for
video). :func:`budget_count` turns it into a count with one clamping rule, ``1 <= count <= N``:

- ``keep=K`` → ``min(K, N)``;
- ``ratio=r`` → ``int(N · r)`` clamped to ``[1, N]``;
- neither → the method's default: a ratio (most methods, 25 %), a count, or None (adaptive: the method's own
  per-image rule decides).

A count is the number of tokens the language model receives for that image: every output token counts,
PruMerge's summary token included (its clean mode selects ``K - 1`` tokens and appends the summary).

Temporal methods (``Method.temporal``: the batch rows are the frames of one video, and the method compares or
merges across them) read the same options per video: ``keep=K`` / ``ratio=r`` on a video of F frames of N
tokens is a total of ``budget_count(F·N, K·F, r)`` tokens (:meth:`BudgetConfig.video_budget`), K per frame on
average, which the method distributes over the frames by its own rule (floors such as EVS's whole first frame
are the method's and are documented there). On one frame (an image) this is the per-image rule.
:meth:`MethodConfig.video_count` gives an item's total for either kind (None: decided by the content).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

__all__ = ["MethodConfig", "BudgetConfig", "budget_count", "check_budget", "DEFAULT_RATIO"]

#: the default budget of the methods without an adaptive rule: a quarter of the tokens (the PruMerge+ and
#: ToMe papers' usual 144 of 576).
DEFAULT_RATIO = 0.25


def check_budget(keep: Any, ratio: Any, method: str) -> None:
    """Validate a ``keep`` / ``ratio`` pair when a config is built (a clear message naming the option)."""
    if keep is not None and ratio is not None:
        raise ValueError(f"{method}: give either keep or ratio, not both")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"{method}: keep must be a whole number >= 1, got {keep!r}")
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) <= 1.0:
            raise ValueError(f"{method}: ratio must be in (0, 1], got {ratio!r}")


def budget_count(n: int, keep: int | None = None, ratio: float | None = None, default: float | int | None = None) -> int | None:
    """Tokens to keep of ``n``: ``keep``, else ``ratio`` of ``n``, else ``default`` (a float is a ratio, an int a
    count, None: adaptive, returned as None). Always clamped to ``[1, n]`` (``n >= 1``)."""
    if keep is None and ratio is None:
        if default is None:
            return None
        if isinstance(default, float):
            ratio = default
        else:
            keep = default
    count = int(keep) if keep is not None else int(n * float(ratio))
    return max(1, min(n, count))


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's options. ``name`` is set when the method is registered (it names the method in
    error messages and in :attr:`~slimvlm.methods.Reduction.method`)."""

    name: ClassVar[str] = "method"

    def count(self, n: int) -> int | None:
        """Tokens an image (or frame) of ``n`` tokens keeps before the language model; None: decided per image."""
        return n

    def video_count(self, n: int, frames: int) -> int | None:
        """Tokens an item of ``frames`` frames of ``n`` tokens keeps in all: ``frames · count(n)`` for methods that
        reduce each frame alone; temporal methods override it. None: decided by the content."""
        count = self.count(n)
        return None if count is None else count * frames

    def options(self) -> dict[str, Any]:
        """The options that differ from their defaults."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


@dataclass(frozen=True)
class BudgetConfig(MethodConfig):
    """A config with a ``keep`` / ``ratio`` budget resolved by :func:`budget_count`.

    Attributes:
        keep: tokens kept per image / frame (clamped to N).
        ratio: fraction of the N tokens kept, in (0, 1].
    """

    keep: int | None = None
    ratio: float | None = None

    #: the budget without keep / ratio: a ratio (float), a count (int) or None (the method's adaptive rule).
    default_budget: ClassVar[float | int | None] = DEFAULT_RATIO

    def __post_init__(self) -> None:
        check_budget(self.keep, self.ratio, self.name)

    @property
    def budget_given(self) -> bool:
        """Whether ``keep`` or ``ratio`` was given (else the default budget applies)."""
        return self.keep is not None or self.ratio is not None

    def count(self, n: int) -> int | None:
        return budget_count(n, self.keep, self.ratio, self.default_budget)

    def video_budget(self, n: int, frames: int) -> int | None:
        """The temporal methods' budget for a video of ``frames`` frames of ``n`` tokens: ``budget_count`` over
        the whole video with ``keep`` (and an int default) scaled by ``frames``; None for an adaptive default."""
        default = self.default_budget
        if isinstance(default, int) and not isinstance(default, bool):
            default = default * frames
        keep = None if self.keep is None else self.keep * frames
        return budget_count(n * frames, keep, self.ratio, default)
