"""PruMerge and PruMerge+ (Shang et al., "LLaVA-PruMerge", arXiv 2403.15388), vectorised.

Official code: 42Shawn/LLaVA-PruMerge, ``clip_encoder.py`` (``token_prune_merge_advanced[_plus]``).
The rules below (docs/methods.md, "PruMerge and PruMerge+"):

1. Adaptive Important Token Selection: keep the tokens whose [CLS] attention is an IQR outlier
   (``a > Q3 + 1.5·IQR``).
2. PruMerge+ adds spatially uniform samples: ``arange(0, N-1, int(int(N/m)/3))`` in raster order, minus
   the outliers.
3. Token Supplement: each kept token ``i`` absorbs its 32 nearest neighbours ``N(i)`` by cosine similarity
   of L2-normalised keys, searched among *all other* tokens (other kept ones too):
   ``y_i = x_i + Σ_{j∈N(i)} a_j x_j`` with the raw [CLS] attention ``a_j`` (unnormalised, centre weight 1).
4. One extra token ``Σ_{j pruned} a_j x_j`` is appended.

``mode="faithful"`` reproduces the official code, quirks included:
  * one IQR fence over the whole batch flattened, and the same count ``int(N · outliers/(B·N))`` for
    every image;
  * output in descending-attention order (then PruMerge+ samples in raster order, then the extra token);
  * the sample range stops at ``N-1``, so the last patch is never sampled;
  * no guards: PruMerge with 0 outliers returns only the extra token; PruMerge+ with 0 outliers or with more
    than N/3 raises ``ValueError`` (the official code raises ZeroDivisionError / an arange error there);
  * fixed-ratio PruMerge+ (the official ``if_adaptive=False`` path, 72 top + ``arange(4, 575, 8)`` = 144 at
    N=576) keeps samples that are also outliers twice, and the complement then loses as many low-index
    tokens, exactly as ``complement_idx`` does.
  Extension beyond the official code (which crashes for B>1 in PruMerge+): samples are de-duplicated per
  image.

``mode="clean"`` (default) deviates, each deviation documented here and in the README:
  * per-image IQR fence and count; counts clamped to ``[min_keep, max_keep]`` (default ``[1, N]``), so 0
    outliers never leaves an image without tokens and PruMerge+ never divides by zero;
  * output in raster order (anchor order), extra token last;
  * PruMerge+ stride is ``max(1, (N // m) // 3)`` and the range runs to N (the last patch can be sampled);
  * fixed budgets in PruMerge+ are exact: ``ceil(K/2)`` top tokens + ``K - ceil(K/2)`` samples evenly
    spread (raster order) over the remaining tokens;
  * on request only (``normalize_weights=True``; the default False keeps the official additive
    ``x_i + Σ a_j x_j``): every merged token a convex combination ``(a_i x_i + Σ a_j x_j) / (a_i + Σ a_j)``
    (the paper's "weighted average"), and the extra token the attention-weighted mean of the pruned tokens;
  * with nothing pruned, no extra token is appended (faithful appends a zero vector).

Both modes: neighbour ties are broken by candidate order (kept tokens in output order, then pruned tokens
in raster order, as the official candidate list), and k is clamped to N-1 when N ≤ 32 (the official code
would fail inside ``topk``). Faithful mode computes the neighbour similarities in float64, so near-ties (cosines
within float32 rounding) fall as in the official per-token products; clean mode uses one float32 matmul.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Reduction, check_keys, check_scores
from .budget import BudgetConfig
from .common import cls_attention_from_qk, descending_rank, iqr_upper_fence, pack
from .registry import SignalRequest, register

__all__ = ["PruMergeConfig", "PruMergePlusConfig", "prumerge", "prumerge_plus", "token_supplement"]

Mode = Literal["clean", "faithful"]


@dataclass(frozen=True)
class PruMergeConfig(BudgetConfig):
    """Options of PruMerge. With neither ``keep`` nor ``ratio`` the count is adaptive (IQR outliers).

    Attributes:
        keep: the number of tokens the language model gets. Clean mode counts the summary token: ``K - 1``
            selected tokens plus the summary (``K`` selected when ``extra_token=False``). Faithful mode follows the
            official fixed path: ``K`` selected plus the official extra token (``K + 1`` tokens).
        ratio: ``keep = int(N · ratio)`` (faithful: the official ``reduction_ratio``, selected tokens only).
        mode: ``"clean"`` (default) or ``"faithful"`` (official behaviour, see the module docstring).
        k_neighbors: neighbours merged into each kept token (official: 32).
        min_keep, max_keep: clean mode only; clamp of the adaptive count of selected tokens (default 1 and N).
        normalize_weights: clean mode only; convex merge weights instead of the official additive ones.
        extra_token: clean mode only; append the summary token of the pruned tokens (default True).
    """

    mode: Mode = "clean"
    k_neighbors: int = 32
    min_keep: int | None = None
    max_keep: int | None = None
    normalize_weights: bool = False
    extra_token: bool = True

    default_budget: ClassVar[float | int | None] = None  # adaptive: the IQR rule

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("clean", "faithful"):
            raise ValueError(f"{self.name}: mode must be 'clean' or 'faithful', got {self.mode!r}")
        if self.k_neighbors < 1:
            raise ValueError(f"{self.name}: k_neighbors must be >= 1, got {self.k_neighbors}")
        if self.mode == "faithful":
            changed = [
                f
                for f, default in (("min_keep", None), ("max_keep", None), ("normalize_weights", False), ("extra_token", True))
                if getattr(self, f) != default
            ]
            if changed:
                raise ValueError(
                    f"{self.name}: {', '.join(changed)} only apply in mode='clean'; the faithful mode has no guards"
                )
        if self.min_keep is not None and self.min_keep < 0:
            raise ValueError(f"{self.name}: min_keep must be >= 0, got {self.min_keep}")
        if self.max_keep is not None and self.max_keep < max(1, self.min_keep or 0):
            raise ValueError(f"{self.name}: max_keep ({self.max_keep}) must be >= max(1, min_keep)")

    def with_summary(self, total: int, n: int) -> bool:
        """Clean mode, fixed budget of ``total`` tokens: whether one of them is the summary token (something is
        pruned, and one selected token is left besides it)."""
        return self.extra_token and 2 <= total < n

    def faithful_selected(self, n: int) -> int:
        """Faithful fixed budget: the tokens the official code selects (its extra token comes on top)."""
        return min(n, self.keep) if self.keep is not None else int(n * self.ratio)

    def count(self, n: int) -> int | None:
        if not self.budget_given:
            return None
        if self.mode == "faithful":
            return self.faithful_selected(n) + 1
        return super().count(n)


@dataclass(frozen=True)
class PruMergePlusConfig(PruMergeConfig):
    """Options of PruMerge+ (same fields as :class:`PruMergeConfig`).

    A fixed budget (``keep`` or ``ratio``) counts outliers *and* spatial samples: ``keep=144`` at N=576 is
    71 + 72 + the summary token (clean), or the official fixed-ratio variant, 72 + 72 + its extra token (faithful).
    """

    def faithful_rate(self, n: int) -> float:
        """The official ``reduction_ratio`` r of a faithful fixed budget: ``int(N r)`` top tokens + the r-grid."""
        return self.ratio / 2 if self.ratio is not None else self.keep / (2 * n)

    def count(self, n: int) -> int | None:
        if self.budget_given and self.mode == "faithful":
            r = self.faithful_rate(n)
            step = int(1 / r)
            return int(n * r) + len(range(step // 2, n - 1, step)) + 1
        return super().count(n)


def _signals(features: Tensor, cls_attn, keys, q, k, method: str) -> tuple[Tensor, Tensor]:
    """Either (cls_attn, keys) or captured (q, k) with [CLS] at position 0."""
    if q is not None or k is not None:
        if q is None or k is None or cls_attn is not None or keys is not None:
            raise ValueError(f"{method}: pass either q and k (B, N+1, C), or cls_attn (B, N) and keys (B, N, C)")
        b, n = features.shape[:2]
        if q.dim() != 3 or tuple(q.shape[:2]) != (b, n + 1):
            raise ValueError(
                f"{method}: q/k must have shape (B, N+1, C) = ({b}, {n + 1}, C) with [CLS] first, got {tuple(q.shape)}"
            )
        cls_attn = cls_attention_from_qk(q, k, form="prumerge")
        keys = k[:, 1:]
    if cls_attn is None or keys is None:
        raise ValueError(f"{method} needs cls_attn (B, N) and keys (B, N, C), or the captured q and k")
    check_scores(cls_attn, features, "cls_attn")
    check_keys(keys, features)
    return cls_attn, keys


_PRUMERGE_SIGNALS = SignalRequest(score_layer=-1, style="full_width")


@register("prumerge", config=PruMergeConfig, applies="pre_projector", signals=_PRUMERGE_SIGNALS,
          needs=("cls_attn", "keys"), adaptive=True,
          summary="IQR outliers of [CLS] attention + kNN merge of the rest (needs cls_attn+keys, or q+k)",
          reference="Shang et al. 2024, arXiv 2403.15388; 42Shawn/LLaVA-PruMerge clip_encoder.py")
def prumerge(
    features: Tensor,
    *,
    cls_attn: Tensor | None = None,
    keys: Tensor | None = None,
    q: Tensor | None = None,
    k: Tensor | None = None,
    config: PruMergeConfig,
) -> Reduction:
    """PruMerge on patch features ``(B, N, C)`` (CLS excluded), e.g. CLIP's ``hidden_states[-2][:, 1:]``.

    Signals: ``cls_attn`` ``(B, N)`` and ``keys`` ``(B, N, Ck)``, or the raw ``q``/``k`` ``(B, N+1, C)`` of
    the scoring layer ([CLS] first; official: ``q_proj``/``k_proj`` of the last layer), from which the
    official single-head attention and the keys are derived. Options are :class:`PruMergeConfig` fields.
    Returns a padded :class:`Reduction` (different counts per image in clean adaptive mode).
    """
    return _prumerge(features, cls_attn, keys, q, k, config, plus=False)


@register("prumerge+", config=PruMergePlusConfig, applies="pre_projector", signals=_PRUMERGE_SIGNALS,
          needs=("cls_attn", "keys"), adaptive=True,
          summary="PruMerge + spatially uniform samples (needs cls_attn+keys, or q+k)",
          reference="Shang et al. 2024, arXiv 2403.15388 (PruMerge+); token_prune_merge_advanced_plus")
def prumerge_plus(
    features: Tensor,
    *,
    cls_attn: Tensor | None = None,
    keys: Tensor | None = None,
    q: Tensor | None = None,
    k: Tensor | None = None,
    config: PruMergePlusConfig,
) -> Reduction:
    """PruMerge+ : PruMerge's outliers plus spatially uniform samples, then the same Token Supplement.
    Arguments as :func:`prumerge`; options are :class:`PruMergePlusConfig` fields."""
    return _prumerge(features, cls_attn, keys, q, k, config, plus=True)


def _prumerge(features, cls_attn, keys, q, k, cfg: PruMergeConfig, plus: bool) -> Reduction:
    method = cfg.name
    cls_attn, keys = _signals(features, cls_attn, keys, q, k, method)
    b, n, _ = features.shape
    dev = features.device
    faithful = cfg.mode == "faithful"
    attn = cls_attn.float()
    order, rank = descending_rank(attn)
    pos = torch.arange(n, device=dev).expand(b, n)
    budget_given = cfg.budget_given
    with_extra = True if faithful else cfg.extra_token

    if faithful:
        if not budget_given:  # adaptive: one pooled fence, one count for the batch (§1.4)
            fence = iqr_upper_fence(attn, pooled=True)
            ratio = float((attn.double() > fence).sum()) / (b * n)
            m = int(n * ratio)
        elif plus:  # fixed-ratio PruMerge+: official reduction_ratio r keeps int(N r) + the r-grid
            r = cfg.faithful_rate(n)
            m = int(n * r)
        else:
            m = cfg.faithful_selected(n)
        outliers = order[:, :m]  # descending attention
        if not plus:
            centres, centre_len = outliers, torch.full((b,), m, device=dev)
            pruned_mask = rank >= m
            drop_low = 0
        elif not budget_given:
            if m == 0:
                raise ValueError(
                    "prumerge+ (faithful): no [CLS]-attention outlier in this batch; the official code divides by "
                    "zero here (int(1/ratio)). Use mode='clean' (min_keep guard) or a fixed keep/ratio."
                )
            stride = int(int(1 / ratio) / 3)
            if stride == 0:
                raise ValueError(
                    f"prumerge+ (faithful): {m} outliers of N={n} (> N/3) make the official sampling stride 0. "
                    "Use mode='clean' (max_keep guard) or a fixed keep/ratio."
                )
            sample_mask = (pos % stride == 0) & (pos < n - 1) & (rank >= m)
            samples, sample_len = pack(sample_mask)
            centres, centre_len = _concat_padded(outliers, m, samples, sample_len)
            pruned_mask = (rank >= m) & ~sample_mask
            drop_low = 0
        else:
            step = int(1 / r)
            grid = torch.arange(step // 2, n - 1, step, device=dev)  # r = 1/8, N = 576: arange(4, 575, 8)
            centres = torch.cat([outliers, grid.expand(b, -1)], dim=1)
            centre_len = torch.full((b,), centres.shape[1], device=dev)
            pruned_mask = (rank >= m) & ~torch.isin(pos, grid)
            # complement_idx drops one low-index pruned token per duplicate (an outlier that is also sampled)
            drop_low = (rank[:, grid] < m).sum(1)
    else:
        min_keep = 1 if cfg.min_keep is None else cfg.min_keep
        max_keep = n if cfg.max_keep is None else min(n, cfg.max_keep)
        if not budget_given:
            fence = iqr_upper_fence(attn, pooled=False)
            counts = (attn.double() > fence).sum(1).clamp(min(min_keep, n), max_keep)
            outlier_mask = rank < counts[:, None]
            if plus:
                stride = ((n // counts.clamp(min=1)) // 3).clamp(min=1)
                sample_mask = (pos % stride[:, None] == 0) & ~outlier_mask
            else:
                sample_mask = torch.zeros_like(outlier_mask)
        else:
            total = cfg.count(n)
            with_extra = cfg.with_summary(total, n)
            total -= int(with_extra)  # the summary token is one of the budget's tokens
            n_top = math.ceil(total / 2) if plus else total
            outlier_mask = rank < n_top
            sample_mask = torch.zeros_like(outlier_mask)
            n_samples = total - n_top
            if n_samples:
                rest, _ = pack(~outlier_mask)  # every row has n - n_top entries
                picks = ((torch.arange(n_samples, device=dev) * 2 + 1) * (n - n_top)) // (2 * n_samples)
                sample_mask.scatter_(1, rest[:, picks], True)
        centres, centre_len = pack(outlier_mask | sample_mask)  # raster order
        pruned_mask = ~(outlier_mask | sample_mask)
        drop_low = 0

    pruned, pruned_len = pack(pruned_mask)
    if not isinstance(drop_low, int) or drop_low:
        pruned, pruned_len = _drop_first(pruned, pruned_len, drop_low)
    return token_supplement(
        features,
        attn,
        keys,
        centres,
        centre_len,
        pruned,
        pruned_len,
        k_neighbors=cfg.k_neighbors,
        normalize=cfg.normalize_weights,
        extra_token=with_extra,
        extra_when_nothing_pruned=faithful,
        exact=faithful,
        method=method,
    )


def _concat_padded(a: Tensor, a_len: int, b_idx: Tensor, b_len: Tensor) -> tuple[Tensor, Tensor]:
    """Concatenate a fixed-length index block with a padded one, keeping the padding at the end."""
    out = torch.cat([a, b_idx], dim=1)
    return out, b_len + a_len


def _drop_first(idx: Tensor, lengths: Tensor, drop: Tensor) -> tuple[Tensor, Tensor]:
    """Remove the first ``drop[b]`` entries of each padded row."""
    m = idx.shape[1]
    shift = torch.arange(m, device=idx.device)[None, :] + drop[:, None]
    shifted = idx.gather(1, shift.clamp(max=max(m - 1, 0)))
    new_len = (lengths - drop).clamp(min=0)
    valid = torch.arange(m, device=idx.device)[None, :] < new_len[:, None]
    return torch.where(valid, shifted, torch.zeros_like(shifted)), new_len


def token_supplement(
    features: Tensor,
    weights: Tensor,
    keys: Tensor,
    centres: Tensor,
    centre_len: Tensor,
    pruned: Tensor,
    pruned_len: Tensor,
    *,
    k_neighbors: int = 32,
    normalize: bool = False,
    extra_token: bool = True,
    extra_when_nothing_pruned: bool = False,
    exact: bool = False,
    method: str = "prumerge",
) -> Reduction:
    """PruMerge's Token Supplement (§1.6) for padded centre and pruned index lists.

    The candidate list of each centre is ``[other centres (by slot), pruned tokens]`` as in the official loop;
    its ``k_neighbors`` most similar candidates (cosine of L2-normalised keys; ties: earlier candidate first)
    are added with weight ``weights[j]`` (centre weight 1), or averaged convexly when ``normalize``.
    Each merged row has only k + 1 terms, so it is summed as a weighted bag of feature rows (no dense
    centre × token weight matrix). ``exact``: the similarities in float64 (at most N × N of them), so that
    neighbours whose cosines differ by less than float32 rounding are ordered as exact arithmetic orders them,
    which is the order the official per-token products give (float32 batched matmuls can swap such near-ties).
    """
    b, n, c = features.shape
    dev = features.device
    m, p = centres.shape[1], pruned.shape[1]
    cand = torch.cat([centres, pruned], dim=1)  # (B, M+P) original indices
    slot = torch.arange(m + p, device=dev)
    cand_valid = torch.cat(
        [slot[None, :m] < centre_len[:, None], slot[None, : p] < pruned_len[:, None]], dim=1
    )
    centre_valid = cand_valid[:, :m]

    kn = F.normalize(keys.double() if exact else keys.float(), dim=-1)
    rows_b = torch.arange(b, device=dev)[:, None]
    # similarities of every centre to every token, then read in candidate-slot order (duplicates included)
    sim = (kn[rows_b, centres] @ kn.transpose(1, 2)).gather(2, cand[:, None, :].expand(-1, m, -1))
    sim.masked_fill_(~cand_valid[:, None, :], -math.inf)
    sim.diagonal(dim1=1, dim2=2).fill_(-math.inf)  # a centre is not its own candidate
    n_cand = int(cand_valid.sum(1).min()) if b else 0
    kk = max(0, min(k_neighbors, n_cand - 1))
    nbr = _top_candidates(sim, kk, centre_valid)  # (B, M, kk) candidate slots

    w_cand = weights.float().gather(1, cand) * cand_valid  # (B, M+P)
    xf = features.float()
    merged = _merge_neighbours(xf, cand, w_cand, nbr, centre_valid, normalize)  # (B, M, C), padding rows 0

    has_pruned = pruned_len > 0
    add_extra = extra_token and (extra_when_nothing_pruned or bool(has_pruned.any()))

    # Lay out: centres in slots [0, len), the extra token right after them; padding zeroed.
    extra_here = add_extra & (has_pruned | extra_when_nothing_pruned)
    lengths = centre_len + extra_here.long()
    width = m + int(add_extra)
    features_out = torch.zeros(b, width, c, dtype=features.dtype, device=dev)
    anchors = torch.full((b, width), -1, dtype=torch.long, device=dev)
    features_out[:, :m] = merged
    anchors[:, :m] = torch.where(centre_valid, centres, -1)
    if add_extra:
        with_x = torch.nonzero(extra_here).flatten()
        at = centre_len[with_x]
        extra = _pruned_summary(xf, pruned, w_cand[:, m:], cand_valid[:, m:], normalize)  # (B, C)
        features_out[with_x, at] = extra[with_x].to(features.dtype)
        w_pruned = torch.where(cand_valid[:, m:], w_cand[:, m:], -1.0)
        top = pruned.gather(1, w_pruned.argmax(1, keepdim=True)).squeeze(1) if p else torch.zeros_like(centre_len)
        anchors[with_x, at] = torch.where(has_pruned[with_x], top[with_x], -1)

    # Assignment: kept tokens -> own slot; pruned -> the most similar centre that took it, else the extra slot.
    assignment = torch.full((b, n), -1, dtype=torch.long, device=dev)
    if p:
        taker = _best_taker(sim, nbr, centre_valid, p)  # (B, P) centre slot, -1 if no centre took it
        fallback = centre_len[:, None].expand(-1, p) if add_extra else torch.full_like(taker, -1)
        target = torch.where(taker >= 0, taker, fallback)
        assignment = _scatter_valid(assignment, pruned, target, cand_valid[:, m:])
    slots = torch.arange(m, device=dev).expand(b, m)
    assignment = _scatter_valid(assignment, centres.flip(1), slots.flip(1), centre_valid.flip(1))
    summary = extra_here if add_extra else torch.zeros(b, dtype=torch.bool, device=dev)
    return Reduction(features_out, anchors, lengths, assignment, method, summary)


def _merge_neighbours(
    x: Tensor, cand: Tensor, w_cand: Tensor, nbr: Tensor, centre_valid: Tensor, normalize: bool
) -> Tensor:
    """Merged centre rows ``w_i x_i + Σ_{j∈N(i)} a_j x_j`` (B, M, C) from float32 features ``x`` (B, N, C).

    ``w_i = 1`` (official); with ``normalize`` the centre weighs ``a_i`` and the k + 1 weights are divided by
    their sum (a convex combination). Each row is one weighted bag of k + 1 rows of the flattened features,
    summed by ``embedding_bag``; padding centres get zero weights, hence zero rows.
    """
    b, n, c = x.shape
    m, kk = nbr.shape[1], nbr.shape[2]
    if b * m == 0:
        return x.new_zeros(b, m, c)
    own = torch.arange(m, device=x.device).expand(b, m)[..., None]
    bag = torch.cat([own, nbr], dim=2).flatten(1)  # (B, M·(1+kk)) candidate slots, the centre itself first
    w = w_cand.gather(1, bag).view(b, m, kk + 1)
    if normalize:
        w = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    else:
        w[..., 0] = 1.0
    w = w * centre_valid[..., None]
    rows = cand.gather(1, bag).view(b, m, kk + 1) + n * torch.arange(b, device=x.device)[:, None, None]
    flat = F.embedding_bag(
        rows.view(b * m, kk + 1), x.reshape(b * n, c), per_sample_weights=w.view(b * m, kk + 1), mode="sum"
    )
    return flat.view(b, m, c)


def _pruned_summary(x: Tensor, pruned: Tensor, w_pruned: Tensor, valid: Tensor, normalize: bool) -> Tensor:
    """The extra token ``Σ_{j pruned} a_j x_j`` per item (B, C); with ``normalize`` the weights are divided by
    their sum (uniform if that is 0). ``w_pruned`` is already 0 on padding."""
    b, n, _ = x.shape
    if normalize:
        s = w_pruned.sum(-1, keepdim=True)
        uniform = valid.float() / valid.sum(-1, keepdim=True).clamp_min(1)
        w_pruned = torch.where(s > 0, w_pruned / s.clamp_min(torch.finfo(s.dtype).tiny), uniform)
    w_tok = torch.zeros(b, n + 1, device=x.device)  # per-token weights; padding goes to the dump column n
    w_tok.scatter_add_(1, torch.where(valid, pruned, n), w_pruned)
    return (w_tok[:, None, :n] @ x).squeeze(1)


def _best_taker(sim: Tensor, nbr: Tensor, centre_valid: Tensor, p: int) -> Tensor:
    """For each pruned candidate (slot ``M + j``), the centre slot that took it as a neighbour with the highest
    similarity, ties to the lowest centre slot; -1 if no valid centre took it. Returns (B, P).

    Two scatter passes over the (centre, neighbour) pairs: the best similarity per pruned column (amax), then
    the lowest centre slot among the pairs that reach it (amin).
    """
    b, m, kk = nbr.shape
    s = sim.gather(2, nbr).masked_fill_(~centre_valid[..., None], -math.inf).flatten(1)  # (B, M·kk)
    col = torch.where(nbr >= m, nbr - m, p).flatten(1)  # pruned column; centre neighbours go to the dump column p
    best = torch.full((b, p + 1), -math.inf, dtype=sim.dtype, device=sim.device)
    best.scatter_reduce_(1, col, s, reduce="amax")
    hit = (s == best.gather(1, col)) & (s > -math.inf)
    centre_slot = torch.arange(m, device=sim.device).repeat_interleave(kk).expand(b, -1)
    lowest = torch.full((b, p + 1), m, dtype=torch.long, device=sim.device)
    lowest.scatter_reduce_(1, torch.where(hit, col, p), centre_slot, reduce="amin")
    return torch.where(best[:, :p] > -math.inf, lowest[:, :p], -1)


def _top_candidates(sim: Tensor, kk: int, row_valid: Tensor) -> Tensor:
    """Indices of the ``kk`` largest entries of each row, ties broken towards the lower index.

    ``topk`` is several times faster than a full sort but leaves tie order unspecified; only the *set* matters
    for the merge, and it is ambiguous only when the kk-th and (kk+1)-th values are equal, so those rows alone
    are redone with a stable sort.
    """
    if kk == 0:
        return sim.new_zeros(sim.shape[:-1] + (0,), dtype=torch.long)
    width = sim.shape[-1]
    vals, idx = torch.topk(sim, min(kk + 1, width), dim=-1)
    if kk < width:
        tie = (vals[..., kk - 1] == vals[..., kk]) & row_valid & torch.isfinite(vals[..., kk - 1])
        if tie.any():
            where = tie.nonzero(as_tuple=True)
            idx = idx.clone()
            idx[where[0], where[1], :kk] = torch.sort(sim[where], dim=-1, descending=True, stable=True).indices[:, :kk]
    return idx[..., :kk]


def _scatter_valid(target: Tensor, index: Tensor, values: Tensor, valid: Tensor) -> Tensor:
    """``target[b, index[b, j]] = values[b, j]`` for valid j only (invalid entries write nowhere)."""
    b, n = target.shape
    padded = torch.cat([target, torch.full((b, 1), -1, dtype=target.dtype, device=target.device)], dim=1)
    padded.scatter_(1, torch.where(valid, index, n), values)
    return padded[:, :n]
