"""``holitom``: HoliTom's merging before the language model (Shao et al., "HoliTom: Holistic Token Merging for
Fast Video Large Language Models", NeurIPS 2025): static tokens of a window of similar frames are merged over
time, then every frame's dynamic tokens and the window's static ones are reduced spatially.

Official rule: ``cokeshao/HoliTom`` at ``e9b2972f6895c9e7d7fe74eb8c3a2ecaab8056e0``, ``holitom/llava_arch.py``
(``LlavaMetaForCausalLM_holitom.prepare_inputs_labels_for_multimodal`` and the helpers it calls, on a
LLaVA-OneVision / LLaVA-Video video's pooled, projected frame tokens and the pooled attention each token receives
in the last SigLIP layer); ported to ``ModelTC/LightCompress`` at ``9701d035b0aac5df97a2ebaadb30bcf0707616f5``,
``llmc/compression/token_reduction/holitom.py``. With F frames of n tokens, retention ratio r (``RETAIN_RATIO``):

1. ``sim[f, j]`` = cosine of token j in frames f and f+1; window ``[s, e]`` saves ``(e - s) · #{j : sim[f, j] > tau
   for s ≤ f < e}`` tokens (``select_static_windows``); a dynamic programme over the frames (windows of at most
   ``max_window`` frames, strict improvement only, backtracked from the last frame) picks the windows that save
   most, ``reduced`` in all; then ``r' = min(r / ((F·n - reduced) / (F·n)), 1)``;
2. in a window of several frames the static positions (similar all through it) become one token each, the
   mean over the window's frames; the others are dynamic;
3. each frame's L dynamic tokens (``merge_tokens_by_attention_density``): ``total = ceil(L · r')``,
   ``dominant = round(total · (1 - D))`` tokens of largest attention (kept in position order), and
   ``total - dominant`` DPC-KNN clusters (``k = min(K, clusters)``, K = ``knn``) of the others;
4. the window's static tokens (``merge_tokens_by_density``): ``round(L_s · r')`` DPC-KNN clusters;
5. a cluster of DPC-KNN: centres = the best-scored tokens (position order), every other token joins its nearest
   centre (``cdist / sqrt(C)``), a centre with members becomes ``beta · centre + (1 - beta) · mean(members)``;
6. order (``mm_newline_position="one_token"``): per window, its static tokens, then each frame's dominant and
   contextual tokens.

Here the static tokens are the first tokens of the row of their window's first frame (anchored at their centre's
position in that frame), so the rows in frame order give the official sequence. Official defaults: r = 0.10,
``tau`` = 0.8 (``T``), D = 0 (every dynamic token kept is dominant), ``beta`` = 0.6, K = 7, windows of at most 1024
frames. The DPC-KNN noise (1e-6) comes from a seeded generator (``seed``), drawn window by window, dynamic then
static, as the official code draws it. Computed in float32. Signals: ``cls_attn`` (the attention each token
receives where the tower has no [CLS] — HoliTom's own score — else the [CLS] attention). The inner-LLM merging
of the paper (``holitom/modeling_qwen2.py``) is not part of this method.

Budget: ``retain_ratio`` is the official ratio with its float arithmetic (default 0.10); ``keep`` / ``ratio`` set
it to ``K / n`` with ``K = budget_count(n, keep, ratio)``, computed exactly (K per frame on average; one frame,
an image, keeps exactly K: its top-K tokens by attention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Reduction, check_scores
from .budget import BudgetConfig
from .common import pack
from .registry import SignalRequest, register
from .temporal import (
    TemporalConfig,
    check_unit,
    consecutive_cosine,
    density_peaks,
    rows_reduction,
    tie_noise,
    top,
)

__all__ = ["HoliTomConfig", "holitom", "static_windows"]

#: the official default retention ratio (``RETAIN_RATIO``)
DEFAULT_RETAIN_RATIO = 0.10


@dataclass(frozen=True)
class HoliTomConfig(TemporalConfig):
    """Options of HoliTom (official names and defaults).

    Attributes:
        keep / ratio: tokens per frame on average (sets the retention ratio to ``K / n``).
        retain_ratio: the official ``RETAIN_RATIO`` in (0, 1] instead (default 0.10).
        tau: similarity above which a position is static between two frames (``T``).
        d: share of each frame's dynamic budget given to DPC-KNN clusters (``D``).
        beta: weight of a cluster's centre in its merged token.
        knn: neighbours of the DPC-KNN density (``K``).
        max_window: longest window of frames.
        seed: seed of the 1e-6 tie-breaking noise on the densities.
    """

    retain_ratio: float | None = None
    tau: float = 0.8
    d: float = 0.0
    beta: float = 0.6
    knn: int = 7
    max_window: int = 1024
    seed: int = 0

    default_budget: ClassVar[float | int | None] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.retain_ratio is not None:
            if self.budget_given:
                raise ValueError(f"{self.name}: give retain_ratio or a keep/ratio budget, not both")
            check_unit(self.retain_ratio, "retain_ratio", self.name, low_open=True)
        if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)):
            raise ValueError(f"{self.name}: tau must be a number, got {self.tau!r}")
        check_unit(self.d, "d", self.name)
        check_unit(self.beta, "beta", self.name)
        for name in ("knn", "max_window"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{self.name}: {name} must be a whole number >= 1, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"{self.name}: seed must be an int, got {self.seed!r}")

    def rate(self, n: int) -> Fraction | float:
        """The retention ratio: ``K / n`` exactly for a keep / ratio budget, else the official float."""
        if self.budget_given:
            return Fraction(BudgetConfig.count(self, n), n)
        return DEFAULT_RETAIN_RATIO if self.retain_ratio is None else float(self.retain_ratio)

    def video_count(self, n: int, frames: int) -> int | None:
        """One frame: ``ceil(n · r)``; a longer video: decided by its static windows."""
        return min(n, math.ceil(n * self.rate(n))) if frames == 1 else None


def static_windows(similar: Tensor, max_window: int) -> tuple[list[tuple[int, int]], int]:
    """HoliTom's windows: ``similar`` ``(F-1, n)`` bool (token j similar in frames f and f+1) → the ``(start,
    end)`` windows of the dynamic programme and the tokens they save."""
    f = similar.shape[0] + 1
    run = torch.zeros(f, similar.shape[1], dtype=torch.long, device=similar.device)
    for s in range(f - 2, -1, -1):  # run[s, j]: consecutive similar pairs from frame s on
        run[s] = (run[s + 1] + 1) * similar[s]
    span = torch.arange(f, device=similar.device)
    static = (run[:, None, :] >= span[None, :, None]).sum(-1).tolist()  # [s][e - s]: static positions of [s, e]
    best, start = [0] * f, [0] * f
    for i in range(f):
        value, first = (best[i - 1] if i else 0), i
        for size in range(2, min(i + 1, max_window) + 1):
            j = i - size
            cand = (best[j] if j >= 0 else 0) + static[j + 1][size - 1] * (size - 1)
            if cand > value:
                value, first = cand, j + 1
        best[i], start[i] = value, first
    windows, i = [], f - 1
    while i >= 0:
        windows.append((start[i], i))
        i = start[i] - 1
    return windows[::-1], best[-1]


def _clusters(tokens: Tensor, m: int, k: int, noise: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """DPC-KNN merge of each row of ``tokens`` ``(B, L, C)`` into ``m`` clusters: ``(merged (B, m, C), centres
    (B, m) ascending, joined (B, L) the cluster of every token)``."""
    score, dist = density_peaks(tokens, k, noise)
    centres = top(score, m).sort(-1).values
    b, length, c = tokens.shape
    is_centre = torch.zeros(b, length, dtype=torch.bool, device=tokens.device).scatter_(1, centres, True)
    joined = dist.gather(2, centres[:, None, :].expand(b, length, m)).argmin(-1)
    own = torch.zeros(b, length, dtype=torch.long, device=tokens.device)
    own.scatter_(1, centres, torch.arange(m, device=tokens.device).expand(b, m).contiguous())
    joined = torch.where(is_centre, own, joined)
    member = F.one_hot(joined, m).to(tokens.dtype) * (~is_centre)[..., None]
    count = member.sum(1)[..., None]
    centre = tokens.gather(1, centres[..., None].expand(-1, -1, c))
    mean = member.transpose(1, 2) @ tokens / count.clamp(min=1)
    return torch.where(count > 0, beta * centre + (1 - beta) * mean, centre), centres, joined


@register("holitom", config=HoliTomConfig, temporal=True, signals=SignalRequest(score_layer=-1, style="head_mean"),
          needs=("cls_attn",),
          summary="HoliTom: static tokens merged over windows of similar frames, then attention / density per frame (default 10%)",
          reference="Shao et al., NeurIPS 2025; cokeshao/HoliTom (outer-LLM merging)")
def holitom(features: Tensor, *, cls_attn: Tensor | None = None, config: HoliTomConfig) -> Reduction:
    """HoliTom on one video ``(F, n, C)`` (row = frame) with ``cls_attn`` ``(F, n)``; see the module."""
    if cls_attn is None:
        raise ValueError(f"{config.name} needs cls_attn (F, n): the attention of each frame's tokens")
    check_scores(cls_attn, features, "cls_attn")
    cfg = config
    f, n, c = features.shape
    dev = features.device
    x = features.float()
    attn = cls_attn.float()
    unit = F.normalize(x, p=2, dim=-1)
    similar = consecutive_cosine(unit) > cfg.tau
    windows, reduced = static_windows(similar, cfg.max_window)
    rate, total = cfg.rate(n), f * n
    if isinstance(rate, Fraction):
        rate = min(rate * total / (total - reduced), Fraction(1))
    else:
        rate = min(rate / ((total - float(reduced)) / total), 1)
    gen = torch.Generator().manual_seed(cfg.seed)
    owners = torch.full((f, n), -1, dtype=torch.long, device=dev)
    kept: list[list[Tensor]] = [[] for _ in range(f)]
    feats: list[list[Tensor]] = [[] for _ in range(f)]

    for s, e in windows:
        size = e - s + 1
        static = similar[s:e].all(0) if size > 1 else torch.zeros(n, dtype=torch.bool, device=dev)
        dyn_pos = (~static).nonzero().flatten()
        length = dyn_pos.shape[0]
        budget = math.ceil(length * rate)
        dominant = round(budget * (1 - cfg.d))
        contextual = budget - dominant
        dyn = x[s : e + 1, dyn_pos]  # (W, L, C)
        frames = torch.arange(s, e + 1, device=dev)[:, None]
        parts: list[tuple[Tensor, Tensor]] = []  # per kind: (features (W, m, C), anchors (W, m))
        if dominant > 0:
            best = top(attn[s : e + 1, dyn_pos], dominant)
            is_best = torch.zeros(size, length, dtype=torch.bool, device=dev).scatter_(1, best, True)
            first, _ = pack(is_best)
            parts.append((dyn.gather(1, first[..., None].expand(-1, -1, c)), dyn_pos[first]))
            owners[frames, dyn_pos[first]] = dyn_pos[first]
            others, _ = pack(~is_best)
        else:
            others = torch.arange(length, device=dev).expand(size, length)
        if contextual > 0:
            pool = dyn.gather(1, others[..., None].expand(-1, -1, c))
            noise = tie_noise(tuple(pool.shape[:2]), gen, dev)
            merged, centres, joined = _clusters(pool, contextual, min(cfg.knn, contextual), noise, cfg.beta)
            centre_pos = dyn_pos[others.gather(1, centres)]
            parts.append((merged, centre_pos))
            owners[frames, dyn_pos[others]] = centre_pos.gather(1, joined)
        static_pos = static.nonzero().flatten()
        clusters = round(static_pos.shape[0] * rate)
        if size > 1 and clusters > 0:
            mean = x[s : e + 1, static_pos].mean(0)[None]  # (1, L_s, C)
            noise = tie_noise((1, static_pos.shape[0]), gen, dev)
            merged, centres, joined = _clusters(mean, clusters, min(cfg.knn, clusters), noise, cfg.beta)
            kept[s].append(static_pos[centres[0]])
            feats[s].append(merged[0])
            owners[s, static_pos] = static_pos[centres[0]][joined[0]]
        for w in range(size):
            for kind_feats, kind_pos in parts:
                kept[s + w].append(kind_pos[w])
                feats[s + w].append(kind_feats[w])

    empty = x.new_zeros((0, c))
    none = torch.zeros(0, dtype=torch.long, device=dev)
    rows = [(torch.cat(feats[i]) if feats[i] else empty, torch.cat(kept[i]) if kept[i] else none) for i in range(f)]
    return rows_reduction(rows, owners, features, cfg.name)
