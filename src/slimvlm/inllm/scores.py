"""Token-importance scores for pruning inside the language model (pure torch).

All functions take post-RoPE queries / keys in the layout ``(B, heads, N, head_dim)`` (or attention logits
``(B, heads, N, N)``) and a per-token ``valid`` mask ``(B, N)``: the tokens that take part (not padding, not
dropped earlier, not a dead slot). Attention is causal by index, so the ``N`` tokens must be in their original
order (the engine guarantees it in both its modes).

Conventions of the returned ``(B, N)`` scores (AIM, ``get_importance``): ``protected`` tokens (text) score
``1.0`` and tokens that are not ``valid`` score ``-1``; everything is float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "SCORES",
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
