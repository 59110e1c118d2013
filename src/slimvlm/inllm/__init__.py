"""Visual-token pruning inside the language model (AIM progressive PageRank pruning, FastV, PyramidDrop, DART,
SparseVLM) that really removes tokens (``mode="remove"``) or keeps the full length with the same choices
(``mode="mask"``), by hooks on a stock transformers 5 VLM; SDPA-compatible."""

from .engine import POSITIONS, InLLMPruner, cache_lengths, find_text_model
from .schedules import (
    AIM_DEFAULTS,
    Recycle,
    Schedule,
    aim_retain_rates,
    aim_schedule,
    fastv_schedule,
    make_schedule,
    per_layer_schedule,
    pyramiddrop_schedule,
    sparsevlm_schedule,
    sparsevlm_stage_counts,
)
from .scores import (
    RULES,
    attention_logits,
    fastv_scores,
    pagerank_from_qk,
    pagerank_head_dist,
    pagerank_importance,
)

__all__ = [
    "InLLMPruner",
    "POSITIONS",
    "RULES",
    "cache_lengths",
    "find_text_model",
    "Schedule",
    "AIM_DEFAULTS",
    "aim_retain_rates",
    "aim_schedule",
    "fastv_schedule",
    "pyramiddrop_schedule",
    "sparsevlm_schedule",
    "sparsevlm_stage_counts",
    "Recycle",
    "per_layer_schedule",
    "make_schedule",
    "attention_logits",
    "pagerank_head_dist",
    "pagerank_importance",
    "pagerank_from_qk",
    "fastv_scores",
]
