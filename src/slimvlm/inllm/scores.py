"""Token-importance scores and the pruning rules built on them, for pruning inside the language model (pure torch).

All score functions take post-RoPE queries / keys in the layout ``(B, heads, N, head_dim)`` (or attention logits
``(B, heads, N, N)``) and a per-token ``valid`` mask ``(B, N)``: the tokens that take part (not padding, not
dropped earlier, not a dead slot). Attention is causal by index, so the ``N`` tokens must be in sequence order
(the engine guarantees it in both its modes).

Conventions of the returned ``(B, N)`` scores (AIM, ``get_importance``): ``protected`` tokens (text) score
``1.0`` and tokens that are not ``valid`` score ``-1``; everything is float32.

A *rule* (:data:`RULES`, named after the paper that introduced it) turns what the engine hands it at a cut — a
:class:`Cut`: the deciding layer's q / k, the hidden states entering the cut layer, the candidates and how many to
keep — into a :class:`Decision`: the kept visual tokens, their scores, and optionally merged tokens that take the
place of pruned ones (SparseVLM's recycling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from .schedules import Recycle

__all__ = [
    "SCORES",
    "RULES",
    "Cut",
    "Decision",
    "Rule",
    "top_counts",
    "query_attention",
    "dart_select",
    "sparsevlm_raters",
    "dpc_knn_merge",
    "repeat_kv",
    "causal_valid_mask",
    "attention_logits",
    "pagerank_head_dist",
    "pagerank_importance",
    "pagerank_from_qk",
    "fastv_scores",
    "last_valid_index",
]


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """``(B, Hkv, N, D)`` → ``(B, Hkv·n_rep, N, D)``, each KV head repeated for its query group (GQA)."""
    if n_rep == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, n, d).reshape(b, h * n_rep, n, d)


def causal_valid_mask(valid: Tensor | None, n: int, device=None) -> Tensor:
    """``(B|1, 1, N, N)`` bool: query ``i`` may attend key ``j`` iff ``j <= i`` and both are valid."""
    causal = torch.ones(n, n, dtype=torch.bool, device=device if valid is None else valid.device).tril()
    if valid is None:
        return causal[None, None]
    v = valid.bool()
    return causal[None, None] & v[:, None, :, None] & v[:, None, None, :]


def attention_logits(q: Tensor, k: Tensor, *, scaling: float, valid: Tensor | None = None) -> Tensor:
    """Masked attention logits ``q·kᵀ·scaling`` in float32, ``(B, H, N, N)``, ``-inf`` where a query may not
    attend (causal, invalid key or invalid query). ``k`` may have fewer (KV) heads than ``q``."""
    k = repeat_kv(k, q.shape[1] // k.shape[1])
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scaling
    allowed = causal_valid_mask(valid, q.shape[-2], device=q.device)
    return logits.masked_fill(~allowed, float("-inf"))


def pagerank_head_dist(logits: Tensor, valid: Tensor | None = None, *, tau: float = 0.1, iters: int = 5) -> Tensor:
    """Per-head PageRank mass ``(B, H, N)`` (AIM ``get_importance``, damping 0):
    ``M = softmax(logits / tau)`` in float32, ``dist`` uniform over the valid tokens, ``dist ← dist @ M``
    ``iters`` times. Rows and columns of invalid tokens are removed from the chain."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    b, h, n, _ = logits.shape
    x = logits.float() / tau
    if valid is None:
        valid = torch.ones(b, n, dtype=torch.bool, device=logits.device)
    valid = valid.bool()
    x = x.masked_fill(~valid[:, None, None, :], float("-inf"))
    m = torch.softmax(x, dim=-1)
    m = m.masked_fill(~valid[:, None, :, None], 0.0)  # rows of invalid tokens (all -inf: NaN) leave the chain
    count = valid.sum(-1).clamp(min=1).float()
    dist = (valid.float() / count[:, None])[:, None, None, :].expand(b, h, 1, n)
    for _ in range(iters):
        dist = torch.matmul(dist, m)
    return dist[:, :, 0, :]


def _finish(score: Tensor, valid: Tensor | None, protected: Tensor | None) -> Tensor:
    if protected is not None:
        score = score.masked_fill(protected.bool(), 1.0)
    if valid is not None:
        score = score.masked_fill(~valid.bool(), -1.0)
    return score


def pagerank_importance(
    logits: Tensor,
    valid: Tensor | None = None,
    protected: Tensor | None = None,
    *,
    tau: float = 0.1,
    iters: int = 5,
) -> Tensor:
    """AIM importance ``(B, N)`` from masked attention logits ``(B, H, N, N)``: RMS over heads of the per-head
    PageRank mass, ``sqrt(mean_h dist_h²)``; protected (text) tokens 1.0, invalid (padding / dropped) -1."""
    dist = pagerank_head_dist(logits, valid, tau=tau, iters=iters)
    return _finish(dist.pow(2).mean(1).sqrt(), valid, protected)


def pagerank_from_qk(
    q: Tensor,
    k: Tensor,
    *,
    scaling: float,
    valid: Tensor | None = None,
    protected: Tensor | None = None,
    tau: float = 0.1,
    iters: int = 5,
    max_bytes: int = 1 << 28,
) -> Tensor:
    """:func:`pagerank_importance` from post-RoPE ``q (B, H, N, D)`` and ``k (B, Hkv, N, D)``, computed a few
    heads at a time so that one chunk of float32 logits stays under ``max_bytes``."""
    b, h, n, _ = q.shape
    k = repeat_kv(k, h // k.shape[1])
    chunk = max(1, min(h, max_bytes // max(1, b * n * n * 4)))
    sq = torch.zeros(b, n, dtype=torch.float32, device=q.device)
    for s in range(0, h, chunk):
        logits = attention_logits(q[:, s : s + chunk], k[:, s : s + chunk], scaling=scaling, valid=valid)
        sq += pagerank_head_dist(logits, valid, tau=tau, iters=iters).pow(2).sum(1)
    return _finish((sq / h).sqrt(), valid, protected)


def last_valid_index(valid: Tensor | None, b: int, n: int, device=None) -> Tensor:
    """``(B,)`` index of the last valid token of each row (``n - 1`` when ``valid`` is None)."""
    if valid is None:
        return torch.full((b,), n - 1, dtype=torch.long, device=device)
    idx = torch.arange(n, device=valid.device).expand(b, n)
    return torch.where(valid.bool(), idx, torch.full_like(idx, -1)).amax(1)


def fastv_scores(
    q: Tensor,
    k: Tensor,
    *,
    scaling: float,
    valid: Tensor | None = None,
    query_index: Tensor | None = None,
    protected: Tensor | None = None,
) -> Tensor:
    """FastV importance ``(B, N)``: the attention probabilities of one query token (default: the last valid
    token of each row) over the keys it may attend (causal, valid), averaged over heads; float32."""
    b, h, n, _ = q.shape
    if query_index is None:
        query_index = last_valid_index(valid, b, n, q.device)
    k = repeat_kv(k, h // k.shape[1]).float()
    qi = q.float().gather(2, query_index.view(b, 1, 1, 1).expand(b, h, 1, q.shape[-1]))
    logits = torch.matmul(qi, k.transpose(-1, -2))[:, :, 0, :] * scaling  # (B, H, N)
    allowed = torch.arange(n, device=q.device)[None, :] <= query_index[:, None]
    if valid is not None:
        allowed = allowed & valid.bool()
    logits = logits.masked_fill(~allowed[:, None, :], float("-inf"))
    return _finish(torch.softmax(logits, dim=-1).mean(1), valid, protected)


#: the scores :class:`~slimvlm.inllm.InLLMPruner` ranks visual tokens by, named after the paper that uses them.
SCORES = {"pagerank": pagerank_from_qk, "fastv": fastv_scores}


def _sort_index(mask: Tensor, key: Tensor | None = None, descending: bool = False) -> Tensor:
    """Per row, the indices of the ``mask`` entries first (ordered by ``key``, ties by index; by index without
    ``key``), then the others."""
    if key is None:
        key = torch.arange(mask.shape[1], device=mask.device, dtype=torch.float64).expand(mask.shape)
        descending = False
    fill = float("-inf") if descending else float("inf")
    return torch.sort(torch.where(mask, key.double(), torch.full_like(key, fill, dtype=torch.float64)),
                      dim=1, descending=descending, stable=True).indices


def top_counts(score: Tensor, candidates: Tensor, counts: Tensor) -> Tensor:
    """``(B, N)`` bool: per row the ``counts[b]`` highest-scored ``candidates`` (ties: the earlier token)."""
    order = _sort_index(candidates, score, descending=True)
    take = torch.arange(score.shape[1], device=score.device)[None, :] < counts.to(score.device)[:, None]
    return torch.zeros_like(candidates).scatter(1, order, take) & candidates


def query_attention(q: Tensor, k: Tensor, *, scaling: float, valid: Tensor, queries: Tensor) -> Tensor:
    """``(B, N)``: the attention probabilities the ``queries`` tokens ``(B, N)`` bool pay each key (causal, over the
    ``valid`` keys), averaged over heads, then over the query tokens; float32 (0 for a row without queries)."""
    b, h, n, d = q.shape
    k = repeat_kv(k, h // k.shape[1]).float()
    nq = queries.sum(1)
    r = max(int(nq.max()), 1)
    qidx = _sort_index(queries)[:, :r]  # the query tokens of each row, in order
    qmask = torch.arange(r, device=q.device)[None, :] < nq[:, None]
    qr = q.float().gather(2, qidx[:, None, :, None].expand(b, h, r, d))
    logits = torch.matmul(qr, k.transpose(-1, -2)) * scaling  # (B, H, R, N)
    keys = torch.arange(n, device=q.device)
    allowed = (keys[None, None, :] <= qidx[:, :, None]) & valid.bool()[:, None, :] & qmask[:, :, None]
    probs = torch.softmax(logits.masked_fill(~allowed[:, None], float("-inf")), dim=-1).nan_to_num(0.0)
    per_query = probs.mean(1)  # heads, then the query tokens
    return (per_query * qmask[..., None]).sum(1) / nq.clamp(min=1)[:, None].float()


# ------------------------------------------------------------------------------------------------------ rules


@dataclass
class Cut:
    """What a rule sees at a cut: the ``N`` tokens present before it, in sequence order, for ``B`` rows.

    Attributes:
        q, k: post-RoPE queries ``(B, H, N, D)`` and keys ``(B, Hkv, N, D)`` of the deciding layer.
        scaling: that layer's attention scaling.
        active: ``(B, N)`` tokens present (not padding, not dropped, not a dead slot).
        visual: ``(B, N)`` the visual tokens present: the candidates.
        counts: ``(B,)`` how many candidates to keep.
        hidden: ``(B, N, C)`` the hidden states entering the cut layer.
        index: ``(B, N)`` each token's index in the prefill (its original position in the sequence).
        prepared: what the rule's :meth:`Rule.prepare` returned for this prefill (``(B, L)`` tensors, original
            coordinates; gather them with ``index``).
        final_norm: the language model's final norm (DART compares normalised hidden states).
        recycle: the schedule's token recycling (None: none).
        options: the rule's options.
    """

    q: Tensor
    k: Tensor
    scaling: float
    active: Tensor
    visual: Tensor
    counts: Tensor
    hidden: Tensor
    index: Tensor
    prepared: dict[str, Tensor] = field(default_factory=dict)
    final_norm: Any = None
    recycle: Recycle | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Decision:
    """A rule's answer: ``kept`` ``(B, N)`` visual tokens kept, ``scores`` ``(B, N)`` float32 (what ranked them),
    and optionally merged tokens: ``merged`` ``(B, M, C)`` take the slots of the pruned tokens ``merge_at``
    ``(B, M)`` (current coordinates, -1: none) and are placed after the row's visual tokens, in order."""

    kept: Tensor
    scores: Tensor
    merge_at: Tensor | None = None
    merged: Tensor | None = None


class Rule:
    """How the visual tokens are chosen at a cut.

    ``source``: whose q / k decide — ``"previous"``: the layer before the cut (its hooked ``q_proj`` / ``k_proj``
    outputs; the hidden states are its output), ``"input"``: the cut layer's own projections applied to its input
    before the cut (PyramidDrop). ``defaults``: the rule's options and their default values."""

    def __init__(self, source: str = "previous", defaults: dict[str, Any] | None = None):
        if source not in ("previous", "input"):
            raise ValueError(f"source must be 'previous' or 'input', got {source!r}")
        self.source = source
        self.defaults = dict(defaults or {})

    def check(self, options: dict[str, Any]) -> dict[str, Any]:
        """The options with defaults filled in; a ValueError names unknown or bad ones."""
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for this score; options: {', '.join(self.defaults) or '(none)'}")
        return {**self.defaults, **options}

    def prepare(self, embeds: Tensor, visual: Tensor, valid: Tensor, options: dict[str, Any]) -> dict[str, Tensor]:
        """Called once per prefill with the input embeddings of the first layer; returns ``(B, L)`` tensors."""
        return {}

    def decide(self, cut: Cut) -> Decision:
        raise NotImplementedError


class TopK(Rule):
    """Keep the ``counts`` best candidates by a score function ``fn(q, k, *, scaling, valid, **options)``."""

    def __init__(self, fn: Callable[..., Tensor], source: str = "previous", defaults: dict[str, Any] | None = None,
                 check: Callable[[dict[str, Any]], None] | None = None):
        super().__init__(source, defaults)
        self.fn, self._check = fn, check

    def check(self, options: dict[str, Any]) -> dict[str, Any]:
        out = super().check(options)
        if self._check is not None:
            self._check(out)
        return out

    def decide(self, cut: Cut) -> Decision:
        s = self.fn(cut.q, cut.k, scaling=cut.scaling, valid=cut.active, **cut.options)
        return Decision(top_counts(s, cut.visual, cut.counts), s)


def _check_pagerank(options: dict[str, Any]) -> None:
    if not options["tau"] > 0 or options["iters"] < 0:
        raise ValueError(f"need tau > 0 and iters >= 0, got tau={options['tau']}, iters={options['iters']}")


# ------------------------------------------------------------------------------------------------------ DART


def dart_select(
    keys: Tensor,
    states: Tensor,
    visual: Tensor,
    active: Tensor,
    counts: Tensor,
    index: Tensor,
    *,
    pivot_image: int = 4,
    pivot_text: int = 4,
) -> tuple[Tensor, Tensor]:
    """DART (Wen et al. 2025, ``get_retained_image_token``): kept visual tokens ``(B, N)`` and the key L1 norms.

    ``keys`` ``(B, Hkv, N, D)``: post-RoPE keys of the layer before the cut; ``states`` ``(B, N, C)``: its output
    after the final norm. Pivots: the ``pivot_image`` visual tokens and the ``pivot_text`` tokens after the last
    visual token with the largest key L1 norm. The pivots are visited in the order the official code iterates
    its Python ``set`` of their positions (counted from the row's first token), and each takes the not yet taken
    visual tokens least cosine-similar to it: ``(counts - image pivots) // pivots`` each, one more for the first
    ``(counts - image pivots) % pivots`` pivots. Kept: the image pivots and every token taken."""
    b, n = visual.shape
    dev = visual.device
    l1 = keys.float().abs().sum((1, 3))  # (B, N); repeat_kv would scale it by the group size, not reorder it
    pos = torch.arange(n, device=dev)
    last_visual = torch.where(visual, pos, torch.full_like(pos, -1)).amax(1)
    after = active & ~visual & (pos[None, :] > last_visual[:, None])
    counts = counts.to(dev)
    n_img = torch.minimum(counts, torch.full_like(counts, pivot_image)).clamp(max=visual.sum(1))
    n_txt = torch.minimum(after.sum(1), torch.full_like(counts, pivot_text))
    img_order = _sort_index(visual, l1, descending=True)
    txt_order = _sort_index(after, l1, descending=True)
    first = torch.where(active, index, torch.full_like(index, torch.iinfo(index.dtype).max)).amin(1)
    rel = (index - first[:, None]).tolist()
    pivots, img_rows = [], []
    for row in range(b):  # the official pivot order: iteration order of a Python set of positions
        img = img_order[row, : int(n_img[row])].tolist()
        txt = txt_order[row, : int(n_txt[row])].tolist()
        at = {rel[row][i]: i for i in img + txt}
        pivots.append([at[p] for p in list(set([rel[row][i] for i in img] + [rel[row][i] for i in txt]))])
        img_rows.append(img)
    kept = torch.zeros(b, n, dtype=torch.bool, device=dev)
    for row, img in enumerate(img_rows):
        kept[row, img] = True
    width = max((len(p) for p in pivots), default=0)
    piv = torch.full((b, max(width, 1)), -1, dtype=torch.long, device=dev)
    for row, p in enumerate(pivots):
        piv[row, : len(p)] = torch.tensor(p, dtype=torch.long, device=dev)
    n_piv = (piv >= 0).sum(1)
    extra = (counts - n_img).clamp(min=0)
    each, more = extra // n_piv.clamp(min=1), extra % n_piv.clamp(min=1)
    pool = visual & ~kept
    states = states.float()
    for i in range(width):
        p = piv[:, i]
        take = torch.where(p >= 0, each + (i < more).long(), torch.zeros_like(each))
        anchor = states.gather(1, p.clamp(min=0)[:, None, None].expand(b, 1, states.shape[-1]))
        sim = torch.nn.functional.cosine_similarity(anchor, states, dim=-1)  # (B, N)
        order = _sort_index(pool, sim, descending=False)  # least similar first
        pick = torch.arange(n, device=dev)[None, :] < take[:, None]
        picked = torch.zeros_like(pool).scatter(1, order, pick) & pool
        kept |= picked
        pool &= ~picked
    return kept, l1


class DART(Rule):
    """DART: pivots by key L1 norm, then the tokens least similar to each pivot (duplication, not importance)."""

    def __init__(self) -> None:
        super().__init__("previous", {"pivot_image": 4, "pivot_text": 4})

    def check(self, options: dict[str, Any]) -> dict[str, Any]:
        out = super().check(options)
        for name in ("pivot_image", "pivot_text"):
            v = out[name]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {v!r}")
        if out["pivot_image"] + out["pivot_text"] < 1:
            raise ValueError("DART needs at least one pivot (pivot_image + pivot_text >= 1)")
        return out

    def decide(self, cut: Cut) -> Decision:
        if cut.final_norm is None:
            raise ValueError("DART compares hidden states after the language model's final norm; none was found")
        states = cut.final_norm(cut.hidden)
        kept, l1 = dart_select(cut.k, states, cut.visual, cut.active, cut.counts, cut.index, **cut.options)
        return Decision(kept, l1)


# ------------------------------------------------------------------------------------------------------ SparseVLM


def sparsevlm_raters(embeds: Tensor, visual: Tensor, valid: Tensor) -> Tensor:
    """SparseVLM's text raters (section 3.2; ``LlamaDynamicvitModel.forward``): ``(B, L)`` bool.

    Of the tokens after the last visual token, ``m = softmax_t(v · tᵀ)`` averaged over the visual tokens ``v``
    (input embeddings); the raters are the ``t`` with ``m_t > mean(m)``. A row without such text rates by its last
    token."""
    b, length, _ = embeds.shape
    dev = embeds.device
    pos = torch.arange(length, device=dev)
    last_visual = torch.where(visual, pos, torch.full_like(pos, -1)).amax(1)
    after = valid & ~visual & (pos[None, :] > last_visual[:, None]) & (last_visual >= 0)[:, None]
    nt = after.sum(1)
    t = max(int(nt.max()), 1)
    tidx = _sort_index(after)[:, :t]
    tmask = torch.arange(t, device=dev)[None, :] < nt[:, None]
    e = embeds.float()
    text = e.gather(1, tidx[..., None].expand(b, t, e.shape[-1]))
    rel = torch.matmul(e, text.transpose(1, 2)).masked_fill(~tmask[:, None, :], float("-inf"))
    rel = torch.softmax(rel, dim=-1).nan_to_num(0.0)  # (B, L, T): rows are every token, used: the visual ones
    nv = visual.sum(1).clamp(min=1)
    m = (rel * visual[..., None]).sum(1) / nv[:, None].float()  # (B, T)
    mean = (m * tmask).sum(1) / nt.clamp(min=1).float()
    chosen = (m > mean[:, None]) & tmask
    raters = torch.zeros(b, length, dtype=torch.bool, device=dev).scatter(1, tidx, chosen) & after
    last = torch.where(valid, pos, torch.full_like(pos, -1)).amax(1)
    lonely = ~raters.any(1) & visual.any(1)
    raters[lonely, last[lonely]] = True
    return raters


def dpc_knn_merge(x: Tensor, valid: Tensor, clusters: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """SparseVLM's ``cluster_and_merge`` (DPC-KNN), batched: ``x`` ``(B, M, C)`` with ``valid`` ``(B, M)`` and
    ``clusters`` ``(B,)`` clusters per row. Returns ``(centres (B, K) token index or -1, assign (B, M) cluster or
    -1, merged (B, K, C))``.

    Distances ``‖x_i - x_j‖ / sqrt(C)``; density ``exp(-mean d²)`` over the ``clusters`` nearest (self included);
    a token's parent distance is its distance to the nearest denser token (the largest distance of the row for
    the densest one); centres: the ``clusters`` largest ``parent distance × density`` (in that order); every token
    joins its nearest centre, a centre its own cluster; a merged token is the sum of its members, each weighted by
    ``1 / (members + 1e-6)``. The official code breaks density ties with ``U(0, 1) · 1e-6`` noise; here the earlier
    token counts as denser."""
    b, m, c = x.shape
    dev = x.device
    xf = x.float()
    d = torch.cdist(xf, xf, compute_mode="donot_use_mm_for_euclid_dist") / math.sqrt(c)
    pair = valid[:, :, None] & valid[:, None, :]
    kk = clusters.to(dev).clamp(min=1)
    near = torch.sort(d.masked_fill(~valid[:, None, :], float("inf")), dim=-1).values
    first_k = torch.arange(m, device=dev)[None, None, :] < kk[:, None, None]
    density = torch.exp(-(near.pow(2) * first_k).nan_to_num(0.0).sum(-1) / kk[:, None].float())
    idx = torch.arange(m, device=dev)
    denser = (density[:, None, :] > density[:, :, None]) | (
        (density[:, None, :] == density[:, :, None]) & (idx[None, None, :] < idx[None, :, None])
    )
    denser &= valid[:, None, :]
    dmax = d.masked_fill(~pair, float("-inf")).flatten(1).amax(1)
    parent = torch.where(denser, d, dmax[:, None, None]).amin(-1)
    score = parent * density
    k = max(int(clusters.max()), 1)
    centres = _sort_index(valid, score, descending=True)[:, :k]
    has = torch.arange(k, device=dev)[None, :] < clusters.to(dev)[:, None]
    to_centre = d.gather(1, centres[..., None].expand(b, k, m)).masked_fill(~has[..., None], float("inf"))
    assign = to_centre.argmin(1)  # (B, M): the nearest centre (the first one on ties)
    own = torch.where(has, torch.arange(k, device=dev).expand(b, k), assign.gather(1, centres))
    assign = assign.scatter(1, centres, own)
    assign = torch.where(valid, assign, torch.full_like(assign, -1))
    members = torch.zeros(b, k, device=dev).scatter_add(1, assign.clamp(min=0), valid.float())
    weight = 1.0 / (members + 1e-6)
    w = weight.gather(1, assign.clamp(min=0)) * valid
    merged = torch.zeros(b, k, c, device=dev).scatter_add(1, assign.clamp(min=0)[..., None].expand(b, m, c), xf * w[..., None])
    return torch.where(has, centres, torch.full_like(centres, -1)), assign, merged.to(x.dtype)


class SparseVLM(Rule):
    """SparseVLM v1.5: visual tokens ranked by the attention the text raters pay them (heads and raters averaged);
    with the schedule's recycling, the best-ranked pruned tokens are clustered into merged tokens."""

    def prepare(self, embeds: Tensor, visual: Tensor, valid: Tensor, options: dict[str, Any]) -> dict[str, Tensor]:
        return {"raters": sparsevlm_raters(embeds, visual, valid)}

    def decide(self, cut: Cut) -> Decision:
        raters = cut.prepared["raters"].gather(1, cut.index) & cut.active
        relation = query_attention(cut.q, cut.k, scaling=cut.scaling, valid=cut.active, queries=raters)
        kept = top_counts(relation, cut.visual, cut.counts)
        if cut.recycle is None:
            return Decision(kept, relation)
        pruned = cut.visual & ~kept
        p = pruned.sum(1)
        m = torch.where(p > 0, (p.double() * cut.recycle.share).floor().long() + 1, torch.zeros_like(p))
        clusters = torch.where(m > 0, m // cut.recycle.per_token + 1, torch.zeros_like(m))
        width = max(int(m.max()), 1)
        rec = _sort_index(pruned, relation, descending=True)[:, :width]  # the best-ranked pruned tokens
        rmask = torch.arange(width, device=rec.device)[None, :] < m[:, None]
        h = cut.hidden
        x = h.gather(1, rec[..., None].expand(h.shape[0], width, h.shape[-1]))
        centres, _, merged = dpc_knn_merge(x, rmask, clusters)
        at = torch.where(centres >= 0, rec.gather(1, centres.clamp(min=0)), torch.full_like(centres, -1))
        return Decision(kept, relation, at, merged)


#: the pruning rules :class:`~slimvlm.inllm.InLLMPruner` applies at a cut, named after the paper that uses them.
RULES: dict[str, Rule] = {
    "pagerank": TopK(pagerank_from_qk, defaults={"tau": 0.1, "iters": 5}, check=_check_pagerank),
    "fastv": TopK(fastv_scores),
    "pyramiddrop": TopK(fastv_scores, source="input"),
    "dart": DART(),
    "sparsevlm": SparseVLM(),
}
