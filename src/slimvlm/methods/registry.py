"""The registry of named methods (like timm's model names): name → function, config class and the signals
it needs. ``slimvlm.methods.available()`` lists them; ``slimvlm.methods.reduce(name, features, ...)`` runs one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor

from .base import Reduction

import importlib

_pm = importlib.import_module(".prumerge", __package__)  # modules share names with their functions
_sp = importlib.import_module(".sampling", __package__)
_tm = importlib.import_module(".tome", __package__)
_vz = importlib.import_module(".visionzip", __package__)
_in = importlib.import_module(".inllm", __package__)

__all__ = ["MethodInfo", "available", "get", "reduce", "make_config", "SIGNALS"]

#: Inputs a method may take beside the features, with their shapes.
SIGNALS = {
    "cls_attn": "(B, N) [CLS]→patch attention (or a pseudo-[CLS] score for towers without [CLS])",
    "keys": "(B, N, Ck) similarity keys of the scoring layer",
    "q": "(B, N+1, C) raw q_proj output of the scoring layer, [CLS] first",
    "k": "(B, N+1, C) raw k_proj output of the scoring layer, [CLS] first",
    "metric": "(B, N, Ck) similarity metric for merging (default: the features)",
    "cls_feature": "(B, C) the [CLS] feature, prepended by VisionZip when given",
    "grid": "(rows, cols) layout of the N tokens in raster order (default: square)",
}


@dataclass(frozen=True)
class MethodInfo:
    """A registered method.

    Attributes:
        name: registry name.
        function: ``function(features, *, <signals>, config=None, **options) -> Reduction``.
        config: the typed config class (dataclass) whose fields are the method's options.
        needs: signals that must be given (alternatives noted in ``summary``).
        accepts: every signal the function takes.
        stage: where an adapter applies it: ``"pre_projector"`` (vision features, as PruMerge and VisionZip do),
            ``"post_projector"`` (LLM-width tokens, as AIM's merge), ``"any"``, or ``"in_llm"`` (the function is
            the pre-LLM part; the rest prunes inside the language model, see ``slimvlm.inllm``).
        adaptive: whether the default budget is the method's own per-image rule.
        summary: one line for listings.
        reference: paper / official code it follows.
    """

    name: str
    function: Callable[..., Reduction]
    config: type
    needs: tuple[str, ...]
    accepts: tuple[str, ...]
    stage: str
    adaptive: bool
    summary: str
    reference: str

    def defaults(self) -> dict[str, Any]:
        """The config's fields and default values."""
        return {f.name: f.default for f in dataclasses.fields(self.config)}


_REGISTRY: dict[str, MethodInfo] = {}


def _register(info: MethodInfo) -> None:
    _REGISTRY[info.name] = info


_register(MethodInfo(
    "none", _sp.identity, _sp.IdentityConfig, (), (), "any", False,
    "keep every token (identity)", "-"))
_register(MethodInfo(
    "prumerge", _pm.prumerge, _pm.PruMergeConfig, ("cls_attn", "keys"), ("cls_attn", "keys", "q", "k"),
    "pre_projector", True,
    "IQR outliers of [CLS] attention + kNN merge of the rest (needs cls_attn+keys, or q+k)",
    "Shang et al. 2024, arXiv 2403.15388; 42Shawn/LLaVA-PruMerge clip_encoder.py"))
_register(MethodInfo(
    "prumerge+", _pm.prumerge_plus, _pm.PruMergePlusConfig, ("cls_attn", "keys"), ("cls_attn", "keys", "q", "k"),
    "pre_projector", True,
    "PruMerge + spatially uniform samples (needs cls_attn+keys, or q+k)",
    "Shang et al. 2024, arXiv 2403.15388 (PruMerge+); token_prune_merge_advanced_plus"))
_register(MethodInfo(
    "tome", _tm.tome, _tm.ToMeConfig, (), ("metric",), "any", False,
    "bipartite soft matching, size-weighted average, halving schedule (default 25%)",
    "Bolya et al., ICLR 2023; facebookresearch/ToMe tome/merge.py"))
_register(MethodInfo(
    "aim-merge", _tm.aim_merge, _tm.AIMMergeConfig, (), ("metric",), "post_projector", False,
    "AIM's iterative bipartite merge with plain means, per frame (default 25%)",
    "AIM, arXiv 2412.03248; LaVi-Lab/AIM llava/model/token_merge.py"))
_register(MethodInfo(
    "visionzip", _vz.visionzip, _vz.VisionZipConfig, ("cls_attn", "keys"), ("cls_attn", "keys", "cls_feature"),
    "pre_projector", False,
    "dominant tokens by [CLS] attention + contextual merge (default 54+10)",
    "Yang et al., CVPR 2025; dvlab-research/VisionZip"))
_register(MethodInfo(
    "random", _sp.random_sample, _sp.RandomConfig, (), (), "any", False,
    "uniform random subset, seeded (default 25%)", "baseline"))
_register(MethodInfo(
    "sequential", _sp.sequential, _sp.SequentialConfig, (), (), "any", False,
    "first K tokens in raster order (default 25%)", "PruMerge paper ablation"))
_register(MethodInfo(
    "spatial", _sp.spatial, _sp.SpatialConfig, (), ("grid",), "any", False,
    "uniform grid sample, e.g. 6x6 or 5x8 (default 25%)", "PruMerge paper ablation"))
_register(MethodInfo(
    "pool", _sp.pool, _sp.PoolConfig, (), ("grid",), "any", False,
    "average pooling to a grid (default 25%)", "LLaVA-OneVision / NeXT-Video spatial pooling"))


_register(MethodInfo(
    "aim", _tm.aim_merge, _in.AIMConfig, (), ("metric",), "in_llm", False,
    "AIM: merge before the LLM (25%) + progressive PageRank pruning inside it (layers l1..l2)",
    "AIM, arXiv 2412.03248; LaVi-Lab/AIM"))
_register(MethodInfo(
    "fastv", _sp.identity, _in.FastVConfig, (), (), "in_llm", False,
    "FastV: drop the least-attended visual tokens at layer K (K=2, R=0.5) inside the LLM",
    "Chen et al., ECCV 2024; pkunlp-icler/FastV"))


def available() -> list[str]:
    """Names of all registered methods."""
    return list(_REGISTRY)


def get(name: str) -> MethodInfo:
    """The registered method ``name``; a ValueError lists the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(_REGISTRY)}") from None


def make_config(name: str, **options) -> Any:
    """Build the typed config of ``name`` from keyword options, naming unknown options clearly."""
    info = get(name)
    fields = {f.name for f in dataclasses.fields(info.config)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(
            f"{name}: unknown option(s) {', '.join(unknown)}; options are: {', '.join(sorted(fields)) or '(none)'}"
        )
    return info.config(**options)


def reduce(method: str, features: Tensor, signals: dict[str, Any] | None = None, **options) -> Reduction:
    """Run a method by name. ``signals`` may hold more than the method takes (e.g. everything a tower hook
    captured); only the ones it accepts are passed. ``options`` are its config fields."""
    info = get(method)
    given = {k: v for k, v in (signals or {}).items() if k in info.accepts and v is not None}
    if "cls_attn" in given and "keys" in given:  # precomputed signals win over the raw q/k they come from
        given.pop("q", None)
        given.pop("k", None)
    return info.function(features, config=make_config(method, **options), **given)
