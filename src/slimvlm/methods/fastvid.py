"""``fastvid``: FastVID (Shen et al., "FastVID: Dynamic Density Pruning for Fast Video Large Language Models",
NeurIPS 2025): dynamic temporal segments, then per frame salient tokens plus density-peak context tokens that
absorb the rest of their segment.

Official rule: ``LunarShen/FastVID`` at ``a40a109cb8df20e8c2c17c6850f8269717369990``,
``fastvid_llavaonevision/LLaVA-NeXT/llava/model/language_model/modeling_qwen2.py`` (``Qwen2Model.forward``,
the "FastVID" block on the LLM's input embeddings), ported unchanged to ``ModelTC/LightCompress`` at
``9701d035b0aac5df97a2ebaadb30bcf0707616f5``, ``llmc/compression/token_reduction/fastvid.py``. Per video of F
frames of n tokens, ``retain = int(n · retention_ratio)``, ``salient = retain - int(retain · d)``,
``context = retain - salient``:

1. DySeg: cosine similarity of consecutive frames' global features; cut after the ``c - 1`` least similar pairs
   and after every pair below ``tau``: segments of consecutive frames;
2. anchor frames: in a segment of L frames the last frame and every ``p``-th before it, each getting
   ``(context · L) // ceil(L / p)`` context tokens (a one-frame segment: ``context``);
3. ATS: every frame keeps its ``salient`` tokens of largest attention;
4. density: over each frame's other tokens, the DPC-KNN score (``cdist / sqrt(C)``, 4 nearest, noise 1e-6);
5. DTM, one-frame segments: the ``context`` best-scored tokens are targets; every other-than-salient token of
   the frame (targets included) joins its most cosine-similar target; a target becomes
   ``w · target + (1 - w) · mean(joined)``, ``w = max(1 / (joined + 1), beta)``;
6. DTM, longer segments: each anchor frame's best-scored tokens are targets for ALL the segment's
   other-than-salient tokens (each anchor absorbs the whole segment); the other frames keep their salient
   tokens only;
7. the kept tokens in their original order (the official code keeps their original positions).

Signals: the official LLaVA-OneVision code takes the frame global features and the salience from the SigLIP
attention-pooling head (a separately loaded checkpoint; LLaVA-OneVision in transformers has no head). slimvlm
follows the official Qwen2.5-VL variant (``fastvid_qwen25vl/.../modeling_qwen2_5_vl.py``): global feature =
the mean of the frame's tokens, salience = ``cls_attn`` (the tower's [CLS] attention, or the attention each token
receives where there is no [CLS]). Computed in float32; the noise comes from a seeded generator (``seed``).
Guards where the official code raises: ``c - 1`` larger than the F - 1 pairs (every pair is cut), an anchor's
count above its frame's other tokens or fewer than 4 of them (clamped). The budget is per frame, the official
``retention_ratio``: ``keep`` / ``ratio`` → ``budget_count(n, …)`` (default 10 %, the official default); a video
keeps at most F times that (exactly that on one frame, an image: salient + context tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
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
    density_peaks,
    rows_reduction,
    tie_noise,
    top,
)

__all__ = ["FastVIDConfig", "fastvid", "fastvid_segments"]


@dataclass(frozen=True)
class FastVIDConfig(TemporalConfig):
    """Options of FastVID (official names, lower case; official LLaVA-OneVision defaults).

    Attributes:
        keep / ratio: tokens per frame (``retention_ratio``; default 10 %).
        dyseg_c: at least this many segments (cuts after the ``c - 1`` least similar frame pairs).
        dyseg_tau: also cut after every pair of cosine similarity below this.
        stprune_d: share of a frame's budget given to context (density) tokens; the rest are salient.
        dtm_p: anchor-frame stride inside a segment.
        dtm_beta: least weight of a target in its merged token.
        seed: seed of the 1e-6 tie-breaking noise on the densities.
    """

    dyseg_c: int = 8
    dyseg_tau: float = 0.9
    stprune_d: float = 0.4
    dtm_p: int = 4
    dtm_beta: float = 0.6
    seed: int = 0

    default_budget: ClassVar[float | int | None] = 0.10

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("dyseg_c", "dtm_p"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{self.name}: {name} must be a whole number >= 1, got {v!r}")
        if isinstance(self.dyseg_tau, bool) or not isinstance(self.dyseg_tau, (int, float)):
            raise ValueError(f"{self.name}: dyseg_tau must be a number, got {self.dyseg_tau!r}")
        check_unit(self.stprune_d, "stprune_d", self.name)
        check_unit(self.dtm_beta, "dtm_beta", self.name)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"{self.name}: seed must be an int, got {self.seed!r}")

    def split(self, n: int) -> tuple[int, int]:
        """``(salient, context)`` tokens of a frame of ``n``: ``retain - int(retain · d)`` and the rest."""
        retain = BudgetConfig.count(self, n)
        salient = retain - int(retain * self.stprune_d)
        return salient, retain - salient

    def video_count(self, n: int, frames: int) -> int | None:
        """One frame: its budget; a longer video: decided by its segments (at most ``frames`` times it)."""
        return BudgetConfig.count(self, n) if frames == 1 else None


def fastvid_segments(features: Tensor, c: int, tau: float) -> list[int]:
    """DySeg: the sizes of the consecutive-frame segments of ``features`` ``(F, n, C)`` (global feature = the
    frame's mean token)."""
    g = features.float().mean(1)
    g = g / g.norm(dim=1, keepdim=True)
    sim = (g[:-1] * g[1:]).sum(1)
    cuts = set(top(sim, min(c - 1, sim.shape[0]), largest=False).tolist())
    cuts |= set((sim < tau).nonzero().flatten().tolist())
    bounds = [-1, *sorted(cuts), features.shape[0] - 1]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def _anchor_counts(sizes: list[int], context: int, p: int) -> list[int]:
    """Context tokens of every frame: in a segment of L frames, the last and every p-th before it get
    ``(context · L) // ceil(L / p)``; the others 0."""
    out: list[int] = []
    for size in sizes:
        share = (context * size) // -(-size // p)
        out += [share if (size - 1 - q) % p == 0 else 0 for q in range(size)]
    return out


def _merge(pool: Tensor, targets: Tensor, joined: Tensor, beta: float) -> Tensor:
    """DTM: ``w · target + (1 - w) · mean(joined tokens)``, ``w = max(1 / (count + 1), beta)``; ``pool`` (B, L, C),
    ``targets`` (B, m, C), ``joined`` (B, L) the target each pool token joins."""
    onehot = F.one_hot(joined, targets.shape[1]).to(pool.dtype)  # (B, L, m)
    count = onehot.sum(1)[..., None]
    weight = (1 / (count + 1)).clamp(min=beta)
    mean = onehot.transpose(1, 2) @ pool / count.clamp(min=1)
    return weight * targets + (1 - weight) * mean


def _join(pool: Tensor, targets: Tensor) -> Tensor:
    """For every token of ``pool`` (B, L, C), its most cosine-similar of ``targets`` (B, m, C)."""
    a = pool / pool.norm(dim=-1, keepdim=True)
    b = targets / targets.norm(dim=-1, keepdim=True)
    return (a @ b.transpose(1, 2)).argmax(-1)


@register("fastvid", config=FastVIDConfig, temporal=True, signals=SignalRequest(score_layer=-1, style="head_mean"),
          needs=("cls_attn",),
          summary="FastVID: temporal segments, salient tokens + density-peak context tokens per anchor frame (default 10%)",
          reference="Shen et al., NeurIPS 2025; LunarShen/FastVID")
def fastvid(features: Tensor, *, cls_attn: Tensor | None = None, config: FastVIDConfig) -> Reduction:
    """FastVID on one video ``(F, n, C)`` (row = frame) with ``cls_attn`` ``(F, n)``; see the module."""
    if cls_attn is None:
        raise ValueError(f"{config.name} needs cls_attn (F, n): the salience of each frame's tokens")
    check_scores(cls_attn, features, "cls_attn")
    f, n, c = features.shape
    dev = features.device
    x = features.float()
    salient, context = config.split(n)
    sizes = fastvid_segments(x, config.dyseg_c, config.dyseg_tau)
    shares = _anchor_counts(sizes, context, config.dtm_p)

    best = top(cls_attn.float(), salient)  # (F, s)
    is_best = torch.zeros(f, n, dtype=torch.bool, device=dev).scatter_(1, best, True)
    rest, _ = pack(~is_best)  # (F, R): the other tokens, ascending
    r = n - salient
    owners = torch.full((f, n), -1, dtype=torch.long, device=dev)
    owners.scatter_(1, best, best)
    kept: list[list[Tensor]] = [[best[i]] for i in range(f)]  # anchors per frame
    feats: list[list[Tensor]] = [[x[i, best[i]]] for i in range(f)]

    if context > 0:
        tok = x.gather(1, rest[..., None].expand(-1, -1, c))  # (F, R, C)
        noise = tie_noise((f, r), torch.Generator().manual_seed(config.seed), dev)
        score, _ = density_peaks(tok, min(4, r), noise)
        # one-frame segments (and every frame whose share is exactly `context`)
        single = [i for i in range(f) if shares[i] == context]
        if single:
            idx = torch.tensor(single, device=dev)
            t = top(score[idx], context)  # (S, context)
            targets = tok[idx].gather(1, t[..., None].expand(-1, -1, c))
            joined = _join(tok[idx], targets)
            merged = _merge(tok[idx], targets, joined, config.dtm_beta)
            anchor = rest[idx].gather(1, t)
            owners[idx[:, None], rest[idx]] = anchor.gather(1, joined)
            for row, i in enumerate(single):
                kept[i].append(anchor[row])
                feats[i].append(merged[row])
        # longer segments: each anchor frame's targets absorb the whole segment
        start = 0
        for size in sizes:
            frames = list(range(start, start + size))
            start += size
            anchors_of = [i for i in frames if shares[i] > context]
            if size == 1 or not anchors_of:
                continue
            m = min(shares[frames[-1]], r)
            idx = torch.tensor(anchors_of, device=dev)
            t = top(score[idx], m)  # (A, m)
            targets = tok[idx].gather(1, t[..., None].expand(-1, -1, c))
            pool = tok[frames[0] : frames[-1] + 1].reshape(1, size * r, c).expand(len(anchors_of), -1, -1)
            joined = _join(pool, targets)  # (A, size · R)
            merged = _merge(pool, targets, joined, config.dtm_beta)
            anchor = rest[idx].gather(1, t)
            for row, i in enumerate(anchors_of):
                own = joined[row, (i - frames[0]) * r : (i - frames[0] + 1) * r]
                owners[i, rest[i]] = anchor[row, own]
                kept[i].append(anchor[row])
                feats[i].append(merged[row])

    rows = []
    for i in range(f):
        a = torch.cat(kept[i])
        order = a.argsort()
        rows.append((torch.cat(feats[i])[order], a[order]))
    return rows_reduction(rows, owners, features, config.name)
