"""The method descriptor and the registry of named methods (like timm's model names).

Each method is declared once, in its own module, by decorating its tensor function with :func:`register`:

.. code-block:: python

    @register("spatial", config=SpatialConfig, summary="uniform grid sample", reference="PruMerge paper ablation")
    def spatial(features, *, grid=None, config): ...

The declaration says everything the rest of slimvlm asks about the method — its options (the config class),
where its pre-LLM function runs (before or after the projector), which vision-tower signals it reads and from
which layer, whether its default budget is adaptive, and its in-LLM pruner if it has one — and it wraps the
function in the preamble every method shares: options → validated config, input checks, the empty batch.
The pipeline, adapters, CLI, demo, bench, viz and cost ask :func:`get` and never branch on a method's name.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Literal

from torch import Tensor

from .base import Reduction, check_features, empty_reduction
from .budget import MethodConfig

__all__ = [
    "Method",
    "SignalRequest",
    "PrunerPlan",
    "SIGNALS",
    "register",
    "available",
    "get",
    "make_config",
    "reduce",
]

#: Inputs a method may take beside the features, with their shapes.
SIGNALS = {
    "cls_attn": "(B, N) [CLS]→patch attention (or a pseudo-[CLS] score for towers without [CLS])",
    "keys": "(B, N, Ck) similarity keys of the scoring layer",
    "q": "(B, N+1, C) raw q_proj output of the scoring layer, [CLS] first",
    "k": "(B, N+1, C) raw k_proj output of the scoring layer, [CLS] first",
    "metric": "(B, N, Ck) similarity metric for merging (default: the features)",
    "cls_feature": "(B, C) the [CLS] feature, prepended by VisionZip when given",
    "grid": "(rows, cols) layout of the N tokens in raster order (default: square)",
    "text_embeds": "(B, M, Dt) embeddings of each item's instruction (all-zero rows are padding); the pipeline gives "
    "the language model's input embeddings of the prompt's text after the image",
    "image_embeds": "(B, N, Dt) the visual tokens in the space of text_embeds (default: the features)",
}

#: the signals an adapter reads from the vision tower (the others come from the features or the layout).
TOWER_SIGNALS = ("cls_attn", "keys")
#: the signals the pipeline reads from the prompt (per item, from its batch row), see ``slimvlm.pipeline``.
PROMPT_SIGNALS = ("text_embeds",)

Stage = Literal["pre_projector", "post_projector"]


@dataclass(frozen=True)
class SignalRequest:
    """Where a method reads its vision-tower signals: the encoder layer whose q/k give the [CLS] attention and
    the keys (``score_layer``, Python indexing), and their form (``style``): ``"full_width"`` (one head over the
    full width and full-width keys, PruMerge's form) or ``"head_mean"`` (per-head attention averaged over heads and
    head-mean keys, VisionZip's)."""

    score_layer: int = -1
    style: Literal["full_width", "head_mean"] = "full_width"


@dataclass(frozen=True)
class PrunerPlan:
    """What an in-LLM method asks of :class:`slimvlm.inllm.InLLMPruner`: the per-layer schedule of kept visual
    tokens, the rule that chooses them (a key of :data:`slimvlm.inllm.scores.RULES`), ``"remove"`` or ``"mask"``,
    and the pruner's other keyword options (``positions``, the rule's options such as PageRank's ``tau`` /
    ``iters``)."""

    schedule: Any  # slimvlm.inllm.schedules.Schedule
    score: str
    mode: str = "remove"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """A registered method: everything slimvlm needs to know about it, declared once.

    Attributes:
        name: registry name.
        function: ``function(features, *, <signals>, config=None, **options) -> Reduction``, the part that runs
            before the language model (the identity for methods that only prune inside it).
        config: the typed config class (a frozen dataclass) whose fields are the method's options.
        applies: where ``function`` runs: ``"pre_projector"`` (the vision features, as PruMerge and VisionZip do;
            needs the adapter's pre-projector features) or ``"post_projector"`` (the LLM-width tokens).
        signals: where its vision-tower signals are read, or None if it reads none.
        needs: signals that must be given (alternatives are noted in ``summary``).
        accepts: every signal ``function`` takes.
        adaptive: whether the default budget is the method's own per-image rule.
        reduces: whether ``function`` changes the tokens (False for the identity and for in-LLM-only methods):
            whether there is anything to draw before the language model.
        temporal: whether the batch rows are the consecutive frames of ONE video (the method compares or merges
            across rows: DyCoke, FastVID, HoliTom, EVS). Callers pass one video per call, never unrelated images
            as a batch; an image is a one-frame video. Its ``keep`` / ``ratio`` budget is per video
            (``BudgetConfig.video_budget``); each row still holds its own frame's tokens (a token merged across
            frames sits in the row of the frame it joined and counts as dropped from its own).
        pruner: for methods that also prune inside the language model, ``pruner(config, num_layers)`` →
            :class:`PrunerPlan`; None otherwise.
        summary: one line for listings.
        reference: the paper and the official code it follows.
    """

    name: str
    function: Callable[..., Reduction]
    config: type
    applies: Stage
    signals: SignalRequest | None
    needs: tuple[str, ...]
    accepts: tuple[str, ...]
    adaptive: bool
    reduces: bool
    pruner: Callable[[Any, int], PrunerPlan] | None
    summary: str
    reference: str
    temporal: bool = False

    @property
    def prunes_in_llm(self) -> bool:
        """Whether the method also removes visual tokens inside the language model."""
        return self.pruner is not None

    @property
    def identity(self) -> bool:
        """Whether the method leaves every visual token in place (neither reduces before the LLM nor prunes in it)."""
        return not self.reduces and self.pruner is None

    @property
    def stage(self) -> str:
        """``"in_llm"`` for methods that prune inside the language model, else :attr:`applies`."""
        return "in_llm" if self.pruner is not None else self.applies

    @property
    def where(self) -> str:
        """Where the method acts, for listings: ``"pre-projector"``, ``"post-projector"``, ``"in-LLM"``, combinations
        with ``" + in-LLM"``, or ``"identity"``."""
        before = self.applies.replace("_", "-") if self.reduces else None
        inside = "in-LLM" if self.pruner is not None else None
        return " + ".join(p for p in (before, inside) if p) or "identity"

    @property
    def options(self) -> tuple[str, ...]:
        """Names of the config's fields."""
        return tuple(f.name for f in dataclasses.fields(self.config))

    def defaults(self) -> dict[str, Any]:
        """The config's fields and default values."""
        return {f.name: f.default for f in dataclasses.fields(self.config)}

    def make_config(self, **options: Any) -> Any:
        """The typed config from keyword options; unknown options are named with the valid ones."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(
                f"{self.name}: unknown option(s) {', '.join(unknown)}; options are: {', '.join(sorted(self.options)) or '(none)'}"
            )
        return self.config(**options)

    def count(self, config: Any, n: int, frames: int = 1) -> int | None:
        """Visual tokens an image (``frames=1``) or a video of ``frames`` frames of ``n`` tokens brings into the
        language model under ``config``, all frames together; None when the content decides (adaptive methods,
        and temporal ones whose split depends on the video)."""
        return config.count(n) if frames == 1 else config.video_count(n, frames)

    def layer_counts(self, config: Any, n_entering: int, num_layers: int) -> list[int]:
        """Visual tokens each of the ``num_layers`` LLM layers processes when ``n_entering`` enter it."""
        if self.pruner is None:
            return [n_entering] * num_layers
        return self.pruner(config, num_layers).schedule.counts(n_entering)


_REGISTRY: dict[str, Method] = {}


def register(
    name: str,
    *,
    config: type,
    summary: str,
    reference: str,
    applies: Stage = "post_projector",
    signals: SignalRequest | None = None,
    needs: tuple[str, ...] = (),
    adaptive: bool = False,
    reduces: bool = True,
    pruner: Callable[[Any, int], PrunerPlan] | None = None,
    temporal: bool = False,
) -> Callable[[Callable[..., Reduction]], Callable[..., Reduction]]:
    """Declare a method (see :class:`Method` for the fields) by decorating its tensor function.

    The decorated function is ``core(features, *, <signals>, config)``: its keyword-only parameters other than
    ``config`` are the signals it accepts. It receives a validated config and a non-empty, finite ``(B, N, C)``
    float batch. The returned wrapper takes ``config=`` or the config's fields as keyword options, checks the
    features and returns an empty :class:`Reduction` for an empty batch.
    """
    if name in _REGISTRY:
        raise ValueError(f"method {name!r} is registered twice")
    if not (isinstance(config, type) and issubclass(config, MethodConfig) and dataclasses.is_dataclass(config)):
        raise TypeError(f"{name}: config must be a MethodConfig dataclass, got {config!r}")
    if applies not in ("pre_projector", "post_projector"):
        raise ValueError(f"{name}: applies must be 'pre_projector' or 'post_projector', got {applies!r}")
    if any(s in needs for s in TOWER_SIGNALS) and signals is None:
        raise ValueError(f"{name}: needs tower signals {needs} but declares no SignalRequest")

    def decorate(core: Callable[..., Reduction]) -> Callable[..., Reduction]:
        params = inspect.signature(core).parameters
        accepts = tuple(p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY and p != "config")
        unknown = [s for s in (*accepts, *needs) if s not in SIGNALS]
        if unknown or not set(needs) <= set(accepts):
            raise ValueError(f"{name}: signals {unknown or needs} are not among the function's or SIGNALS")
        config.name = name

        @functools.wraps(core)
        def run(features: Tensor, *, config: Any = None, **kwargs: Any) -> Reduction:
            signals_given = {k: kwargs.pop(k) for k in list(kwargs) if k in accepts}
            if config is None:
                config = method.make_config(**kwargs)
            elif kwargs:
                raise ValueError(f"{name}: give config= or options ({', '.join(sorted(kwargs))}), not both")
            elif not isinstance(config, method.config):
                raise TypeError(f"{name}: config must be a {method.config.__name__}, got {type(config).__name__}")
            check_features(features)
            if features.shape[0] == 0:
                return empty_reduction(features, name)
            return core(features, config=config, **signals_given)

        method = Method(
            name=name, function=run, config=config, applies=applies, signals=signals, needs=tuple(needs),
            accepts=accepts, adaptive=adaptive, reduces=reduces, pruner=pruner, summary=summary,
            reference=reference, temporal=bool(temporal),
        )
        _REGISTRY[name] = method
        return run

    return decorate


def available() -> list[str]:
    """Names of all registered methods."""
    return list(_REGISTRY)


def get(name: str) -> Method:
    """The registered method ``name``; a ValueError lists the known names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; available: {', '.join(_REGISTRY)}") from None


def make_config(name: str, **options: Any) -> Any:
    """Build the typed config of ``name`` from keyword options, naming unknown options clearly."""
    return get(name).make_config(**options)


def reduce(method: str, features: Tensor, signals: dict[str, Any] | None = None, **options: Any) -> Reduction:
    """Run a method by name. ``signals`` may hold more than the method takes (e.g. everything a tower hook
    captured); only the ones it accepts are passed. ``options`` are its config fields."""
    info = get(method)
    given = {k: v for k, v in (signals or {}).items() if k in info.accepts and v is not None}
    if "cls_attn" in given and "keys" in given:  # precomputed signals win over the raw q/k they come from
        given.pop("q", None)
        given.pop("k", None)
    return info.function(features, config=info.make_config(**options), **given)
