"""Token-reduction methods as pure tensor functions (torch only, no transformers).

Every method takes features ``(B, N, C)`` plus the signals it declares and returns a :class:`Reduction`
(padded features, anchors, lengths, assignment). See :func:`available` and :func:`reduce`.
"""

from .base import Reduction
from .common import attention_received, cls_attention_from_qk, head_mean_keys, iqr_upper_fence
from .prumerge import PruMergeConfig, PruMergePlusConfig, prumerge, prumerge_plus
from .registry import SIGNALS, MethodInfo, available, get, make_config, reduce
from .sampling import (
    IdentityConfig,
    PoolConfig,
    RandomConfig,
    SequentialConfig,
    SpatialConfig,
    identity,
    pool,
    random_sample,
    sequential,
    spatial,
)
from .tome import AIMMergeConfig, ToMeConfig, aim_merge, halving_schedule, tome
from .visionzip import VisionZipConfig, visionzip

__all__ = [
    "Reduction", "MethodInfo", "SIGNALS", "available", "get", "make_config", "reduce",
    "cls_attention_from_qk", "attention_received", "head_mean_keys", "iqr_upper_fence",
    "prumerge", "prumerge_plus", "PruMergeConfig", "PruMergePlusConfig",
    "tome", "aim_merge", "halving_schedule", "ToMeConfig", "AIMMergeConfig",
    "visionzip", "VisionZipConfig",
    "identity", "random_sample", "sequential", "spatial", "pool",
    "IdentityConfig", "RandomConfig", "SequentialConfig", "SpatialConfig", "PoolConfig",
]
