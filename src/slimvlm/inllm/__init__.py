"""Visual-token pruning inside the language model (AIM progressive PageRank pruning, FastV, PyramidDrop
schedules) that really removes tokens (``mode="remove"``) or reproduces the official masking semantics
(``mode="mask"``), by hooks on a stock transformers 5 VLM; SDPA-compatible."""

from .engine import InLLMPruner, cache_lengths, find_text_model
from .schedules import (
    AIM_DEFAULTS,
    Schedule,
    aim_retain_rates,
    aim_schedule,
    fastv_schedule,
    make_schedule,
    per_layer_schedule,
    pyramiddrop_schedule,
)
from .scores import attention_logits, fastv_scores, pagerank_from_qk, pagerank_head_dist, pagerank_importance

__all__ = [
    "InLLMPruner",
    "cache_lengths",
    "find_text_model",
    "Schedule",
    "AIM_DEFAULTS",
    "aim_retain_rates",
    "aim_schedule",
    "fastv_schedule",
    "pyramiddrop_schedule",
    "per_layer_schedule",
    "make_schedule",
    "attention_logits",
    "pagerank_head_dist",
    "pagerank_importance",
    "pagerank_from_qk",
    "fastv_scores",
]
