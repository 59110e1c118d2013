"""Literal, slow transcriptions of the published PruMerge / PruMerge+ rules (algorithms.md §1.3–1.8), written
as the official code is: numpy percentiles, Python lists, one loop per image and per kept token.

They are the oracles of tests/test_prumerge.py (benchmarks/reducers.py times its own transcription with the
official loop structure). They share no code with slimvlm.methods.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def official_outlier_ratio(cls_attn: torch.Tensor) -> float:
    """``outlier_dectection``: numpy percentiles over the whole batch flattened, strict upper fence."""
    x = cls_attn.float().cpu().numpy().flatten()
    q1, q3 = np.percentile(x, 25), np.percentile(x, 75)
    upper = q3 + 1.5 * (q3 - q1)
    return float(np.sum(x > upper)) / len(x)


def per_image_outlier_count(attn_row: torch.Tensor) -> int:
    x = attn_row.float().cpu().numpy()
    q1, q3 = np.percentile(x, 25), np.percentile(x, 75)
    return int(np.sum(x > q3 + 1.5 * (q3 - q1)))


def top_indices(attn_row: torch.Tensor, m: int) -> list[int]:
    """Indices of the m largest values, largest first (ties: lower index first)."""
    vals = attn_row.tolist()
    return sorted(range(len(vals)), key=lambda i: (-vals[i], i))[:m]


def complement_idx(idx: list[int], n: int) -> list[int]:
    """The official ``complement_idx``: write 0 at every index in idx (position 0 holds 0 anyway), sort, and
    drop as many leading entries as idx has (duplicates included)."""
    a = list(range(n))
    for i in idx:
        a[i] = 0
    return sorted(a)[len(idx):]


def cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    return float(torch.dot(u / u.norm(), v / v.norm()))


def token_supplement_literal(x, a, keys, centres, pruned, k=32, normalize=False, extra=True):
    """One image. For each centre (by slot): candidates = other centres (by slot) + pruned; the k most similar
    by cosine of keys; y = x_c + Σ a_j x_j (official) or (a_c x_c + Σ a_j x_j)/(a_c + Σ a_j) (normalised).
    Then the extra token Σ_{pruned} a_j x_j (or its a-weighted mean)."""
    out = []
    for s, c in enumerate(centres):
        cands = [centres[t] for t in range(len(centres)) if t != s] + list(pruned)
        sims = [cosine(keys[c], keys[j]) for j in cands]
        order = sorted(range(len(cands)), key=lambda t: -sims[t])  # stable: earlier candidate wins ties
        nbrs = [cands[t] for t in order[: min(k, len(cands))]]
        if normalize:
            num = a[c] * x[c]
            den = float(a[c])
            for j in nbrs:
                num = num + a[j] * x[j]
                den += float(a[j])
            out.append(num / den)
        else:
            y = x[c].clone()
            for j in nbrs:
                y = y + a[j] * x[j]
            out.append(y)
    if extra:
        e = torch.zeros_like(x[0])
        tot = 0.0
        for j in pruned:
            e = e + a[j] * x[j]
            tot += float(a[j])
        if normalize:
            e = e / tot if tot > 0 else sum(x[j] for j in pruned) / len(pruned)
        out.append(e)
    return torch.stack(out) if out else x[:0]


def prumerge_faithful_literal(features, cls_attn, keys, plus=False, keep=None, ratio=None, k=32):
    """The official ``token_prune_merge_advanced[_plus]`` for every image of the batch.

    Returns (list of outputs (m+1, C), list of centre index lists). Raises ZeroDivisionError / ValueError where
    the official code does (0 outliers / stride 0 in adaptive PruMerge+).
    """
    b, n, _ = features.shape
    outs, centres_all = [], []
    fixed = keep is not None or ratio is not None
    if not fixed:
        r = official_outlier_ratio(cls_attn)
        m = int(n * r)
    elif plus:
        r = ratio / 2 if ratio is not None else keep / (2 * n)
        m = int(n * r)
    else:
        m = keep if keep is not None else int(n * ratio)
    for bi in range(b):
        idx = top_indices(cls_attn[bi], m)
        if plus and not fixed:
            step = int(1 / r)  # ZeroDivisionError when r == 0, as the official code
            stride = int(step / 3)
            if stride == 0:
                raise ValueError("arange step 0")
            samples = list(range(0, n - 1, stride))
            idx = idx + [i for i in samples if i not in idx]
        elif plus:
            step = int(1 / r)
            idx = idx + list(range(step // 2, n - 1, step))
        pruned = complement_idx(idx, n)
        outs.append(token_supplement_literal(features[bi], cls_attn[bi], keys[bi], idx, pruned, k=k))
        centres_all.append(idx)
    return outs, centres_all


def prumerge_clean_literal(
    features, cls_attn, keys, plus=False, keep=None, ratio=None, k=32, min_keep=1, max_keep=None,
    normalize=False, extra=True,
):
    """slimvlm's documented clean rule, per image: own IQR fence, clamped count, raster order, stride
    max(1, (N//m)//3) up to N; a fixed budget K counts the summary token (K - 1 selected when 2 <= K < N and the
    summary is on); fixed PruMerge+ = ceil(K'/2) top + evenly spread samples of the rest (K' selected)."""
    b, n, _ = features.shape
    outs, centres_all = [], []
    for bi in range(b):
        a = cls_attn[bi]
        with_extra = extra
        if keep is None and ratio is None:
            m = per_image_outlier_count(a)
            m = max(min(min_keep, n), min(m, n if max_keep is None else min(n, max_keep)))
            chosen = set(top_indices(a, m))
            if plus:
                stride = max(1, (n // max(m, 1)) // 3)
                chosen |= {i for i in range(0, n, stride)}
        else:
            total = min(n, keep) if keep is not None else max(1, min(n, int(n * ratio)))
            with_extra = extra and 2 <= total < n  # the summary token is one of the K
            total -= int(with_extra)
            n_top = math.ceil(total / 2) if plus else total
            chosen = set(top_indices(a, n_top))
            rest = [i for i in range(n) if i not in chosen]
            n_s = total - n_top
            for t in range(n_s):
                chosen.add(rest[((2 * t + 1) * len(rest)) // (2 * n_s)])
        centres = sorted(chosen)
        pruned = [i for i in range(n) if i not in chosen]
        outs.append(
            token_supplement_literal(
                features[bi], a, keys[bi], centres, pruned, k=k, normalize=normalize, extra=with_extra and bool(pruned)
            )
        )
        centres_all.append(centres)
    return outs, centres_all
