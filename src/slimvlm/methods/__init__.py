"""Token-reduction methods as pure tensor functions (torch only, no transformers).

Every method takes features ``(B, N, C)`` plus the signals it declares and returns a :class:`Reduction`
(padded features, anchors, lengths, assignment). Each is declared once, in its own module, with
:func:`~slimvlm.methods.registry.register`; importing this package registers them all. See :func:`available`,
:func:`get` (the :class:`Method` descriptor) and :func:`reduce`.
"""

from .base import Reduction
from .budget import DEFAULT_RATIO, BudgetConfig, MethodConfig, budget_count
from .common import attention_received, cls_attention_from_qk, head_mean_keys, iqr_upper_fence
from .registry import SIGNALS, Method, PrunerPlan, SignalRequest, available, get, make_config, reduce, register

# The methods, in listing order; each module registers its methods when imported.
from .none import IdentityConfig, identity
from .prumerge import PruMergeConfig, PruMergePlusConfig, prumerge, prumerge_plus
from .tome import ToMeConfig, halving_schedule, tome
from .aim import AIMConfig, AIMMergeConfig, aim, aim_merge
from .visionzip import VisionZipConfig, visionzip
from .random_sample import RandomConfig, random_sample
from .sequential import SequentialConfig, sequential
from .spatial import SpatialConfig, spatial
from .pool import PoolConfig, pool
from .fastv import FastVConfig, fastv
from .fastervlm import FasterVLMConfig, fastervlm
from .vispruner import VisPrunerConfig, vispruner
from .divprune import DivPruneConfig, divprune
from .cdpruner import CDPrunerConfig, cdpruner
from .pyramiddrop import PyramidDropConfig, pyramiddrop
from .dart import DARTConfig, dart
from .sparsevlm import SparseVLMConfig, sparsevlm
from .dycoke import DyCokeConfig, dycoke
from .fastvid import FastVIDConfig, fastvid
from .holitom import HoliTomConfig, holitom
from .evs import EVSConfig, evs

#: Old name of the descriptor class.
MethodInfo = Method

__all__ = [
    "Reduction", "Method", "MethodInfo", "SignalRequest", "PrunerPlan", "SIGNALS",
    "available", "get", "make_config", "reduce", "register",
    "MethodConfig", "BudgetConfig", "budget_count", "DEFAULT_RATIO",
    "cls_attention_from_qk", "attention_received", "head_mean_keys", "iqr_upper_fence",
    "identity", "IdentityConfig",
    "prumerge", "prumerge_plus", "PruMergeConfig", "PruMergePlusConfig",
    "tome", "halving_schedule", "ToMeConfig",
    "aim_merge", "aim", "AIMMergeConfig", "AIMConfig",
    "visionzip", "VisionZipConfig",
    "random_sample", "RandomConfig",
    "sequential", "SequentialConfig",
    "spatial", "SpatialConfig",
    "pool", "PoolConfig",
    "fastv", "FastVConfig",
    "fastervlm", "FasterVLMConfig",
    "vispruner", "VisPrunerConfig",
    "divprune", "DivPruneConfig",
    "cdpruner", "CDPrunerConfig",
    "pyramiddrop", "PyramidDropConfig",
    "dart", "DARTConfig",
    "sparsevlm", "SparseVLMConfig",
    "dycoke", "DyCokeConfig",
    "fastvid", "FastVIDConfig",
    "holitom", "HoliTomConfig",
    "evs", "EVSConfig",
]
