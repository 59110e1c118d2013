"""encode → reduce → rebuild → stock forward / generate, the same for every model family.

``slimvlm.apply(model, method, **options)`` wraps a stock transformers 5 VLM; its ``generate`` and ``__call__``
take the processor's outputs like the stock model. Each image / video is encoded by the family adapter, reduced
by the method (per frame for video; across its frames for temporal methods, ``Method.temporal``), and injected through ``mm_encoder_outputs`` — the official way to pass
precomputed visual features in transformers 5 — with ``input_ids`` / ``attention_mask`` (and, for Qwen,
``mm_token_type_ids`` and 3-D ``position_ids``) rebuilt for the shorter sequence. No transformers class is
patched. ``positions="original"`` (1-D RoPE families) also passes ``position_ids`` in which every kept token
keeps the position it had in the full prompt (see :data:`POSITIONS`). ``slimvlm.prepare(model, inputs, method)``
returns those kwargs for users who drive the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .methods import SignalRequest, make_config
from .methods import get as get_method
from .methods.registry import PROMPT_SIGNALS, TOWER_SIGNALS
from .models import adapter_for
from .models.base import Adapter, VisualItem, no_signal_message

__all__ = [
    "apply", "prepare", "encode", "encoding_key", "prompt_signals", "SlimVLM", "ItemStats", "Prepared", "POSITIONS",
]

#: How the reduced prompt is numbered for 1-D RoPE families (LLaVA, LLaVA-NeXT, OneVision, Video-LLaVA):
#: ``"renumber"`` (default; the official LLaVA / PruMerge code): positions 0..L'-1 over the shorter sequence,
#: as the stock model numbers any prompt; ``"original"``: each kept token keeps its position in the full
#: prompt (a merged token its anchor's), so the text after the image keeps its distance to the image and
#: ``generate`` continues from the full prompt's length — what in-LLM pruning (FastV) does implicitly.
#: "original" numbers a reduced prompt as ``generate`` numbers the full one (``cumsum(attention_mask) - 1``); when
#: nothing moved (``"none"``, or a method that kept every token in place) no ``position_ids`` are passed, so the
#: call is the stock model's bit for bit, ``forward`` (which numbers a left-padded row 0..L-1, pads included) and
#: ``generate`` alike. A reduced left-padded row is thus numbered from its first real token where the stock
#: ``forward`` would count the pads: a constant shift per row, which RoPE attention does not see (equal up to
#: float rounding, ~1e-7).
#: M-RoPE families (Qwen2-VL, Qwen2.5-VL) always keep the original (t, h, w) positions: only ``"original"``.
POSITIONS = ("renumber", "original")

_INPUT_KEYS = {"input_ids", "attention_mask", "mm_token_type_ids", "position_ids"}


@dataclass(frozen=True)
class ItemStats:
    """One image or video of a batch: its batch row, modality, visual tokens before / after (all its frames
    together), the method and options (budget) that reduced it, and its frames (1 for an image; for Qwen's videos
    its temporal patches of 2 frames; a temporal method's ``keep`` is per frame on average over them:
    docs/methods.md, "Budgets"). ``frame_tokens``: per frame, the tokens the method kept in that frame's row of
    ``frame_size`` (protected tokens, such as a video's closing newline, counted in neither; a temporal method's
    token merged across frames counts in the row of the frame it joined)."""

    row: int
    modality: str
    tokens_before: int
    tokens_after: int
    method: str = "none"
    options: Mapping[str, Any] = field(default_factory=dict)
    frames: int = 1
    frame_tokens: tuple[int, ...] = ()
    frame_size: int = 0


@dataclass
class Prepared:
    """The kwargs for the stock ``forward`` / ``generate`` and the per-item statistics."""

    kwargs: dict[str, Any]
    stats: list[ItemStats]
    method: str
    options: dict[str, Any] = field(default_factory=dict)


def _split_frames(x: Tensor, frames: int, what: str) -> Tensor:
    n = x.shape[0]
    if n % frames:
        raise ValueError(f"{what}: {n} tokens do not split into {frames} equal frames")
    return x.reshape(frames, n // frames, *x.shape[1:])


def item_reduction(
    item: VisualItem, method: str, config: Any, use_pre: bool, prompt: Mapping[str, Tensor] | None = None
) -> tuple[Any, Tensor]:
    """The method's :class:`~slimvlm.methods.Reduction` of one image / video (frames as its batch rows: one call
    per video, so that temporal methods see its frames together) and the item positions of its unprotected
    tokens, which the reduction's indices refer to. ``prompt``: the item's signals from the prompt
    (:func:`prompt_signals`), the same for every frame."""
    info = get_method(method)
    n = item.num_tokens
    dev = item.tokens.device
    free = torch.arange(n, device=dev) if item.protected is None else (~item.protected).nonzero().flatten()
    base = item.pre if use_pre else item.tokens
    if use_pre and base is None:
        raise RuntimeError(f"no pre-projector features for {method}")
    frames = item.frames
    feats = _split_frames(base[free], frames, "features")
    n_f = feats.shape[1]
    signals: dict[str, Any] = {}
    for name in TOWER_SIGNALS:
        if name in item.signals:
            signals[name] = _split_frames(item.signals[name][free], frames, name)
    if "cls_feature" in item.signals:
        cls = item.signals["cls_feature"]
        signals["cls_feature"] = cls.reshape(frames, -1)
    if item.grid is not None and item.grid[0] * item.grid[1] == n_f:
        signals["grid"] = item.grid
    for name, value in (prompt or {}).items():
        signals[name] = value[None].expand(frames, *value.shape)
    given = {k: v for k, v in signals.items() if k in info.accepts}
    return info.function(feats, config=config, **given), free


def reduce_item(
    item: VisualItem, method: str, config: Any, adapter: Adapter, use_pre: bool,
    prompt: Mapping[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Reduce one image / video. Returns ``(tokens (m, D), source (m,))``: the LLM-width tokens to inject and,
    for each, the position within the item's placeholder run whose position it takes (its anchor: M-RoPE, and
    1-D with ``positions="original"``)."""
    tokens, src, _ = _reduce_item(item, method, config, adapter, use_pre, prompt)
    return tokens, src


def _reduce_item(
    item: VisualItem, method: str, config: Any, adapter: Adapter, use_pre: bool,
    prompt: Mapping[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor, tuple[tuple[int, ...], int]]:
    """:func:`reduce_item` plus the tokens kept per frame and the tokens each frame had."""
    red, free = item_reduction(item, method, config, use_pre, prompt)
    frames = item.frames
    n_f = red.assignment.shape[1]
    out_tokens, out_src = [], []
    for f in range(frames):
        kept, anchors = red.item(f)
        if use_pre:
            kept = adapter.project(item, kept)
        pos = torch.where(anchors >= 0, free[(f * n_f + anchors).clamp(min=0)], -1)
        out_tokens.append(kept.to(item.tokens.dtype))
        out_src.append(pos)
    tokens, src = torch.cat(out_tokens), torch.cat(out_src)
    if item.protected is not None and bool(item.protected.any()):
        # newline tokens keep their place: merge kept tokens (at their anchor) and protected ones by position
        prot = item.protected.nonzero().flatten()
        key = torch.cat([src.float(), prot.float()])
        key = torch.where(key < 0, torch.zeros_like(key) - 0.5, key)  # [CLS]-like tokens go first
        order = torch.sort(key, stable=True).indices
        tokens = torch.cat([tokens, item.tokens[prot]])[order]
        src = torch.cat([src, prot])[order]
    per_frame = tuple(int(t.shape[0]) for t in out_tokens)
    return tokens, torch.where(src >= 0, src, torch.zeros_like(src)), (per_frame, int(n_f))


def _container(tokens: list[Tensor], kind: str) -> Any:
    if kind == "list":
        return list(tokens)
    if kind == "flat":
        return torch.cat(tokens)[:, None, :] if tokens else None
    if kind == "list_flat":
        return [t[:, None, :] for t in tokens]
    raise ValueError(f"unknown container {kind!r}")


def _make_pruner(model: nn.Module, method: str, config: Any) -> Any:
    """The in-LLM pruner the method declares (AIM, FastV), built from its config for this model's depth; else None."""
    info = get_method(method)
    if info.pruner is None:
        return None
    from .inllm import InLLMPruner, find_text_model

    num_layers = len(find_text_model(model)[1].layers)
    try:
        plan = info.pruner(config, num_layers)
        return InLLMPruner(model, plan.schedule, score=plan.score, mode=plan.mode, **plan.options)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{method}: {err}") from None


def _signal_request(adapter: Adapter, method: str) -> SignalRequest | None:
    """Which tower signals ``method`` reads from this adapter (None: none); refuses impossible combinations."""
    request = get_method(method).signals
    if request is not None and not adapter.attention_signals:
        raise ValueError(f"{method}: " + no_signal_message(adapter))
    return request


def _check_counts(input_ids: Tensor, placeholder: dict[str, int], counts: dict[str, list[int]]) -> None:
    """Every modality's placeholder tokens must equal the visual tokens its items give (as the stock model checks)."""
    for modality, token_id in placeholder.items():
        have, want = int((input_ids == token_id).sum()), sum(counts[modality])
        if have != want:
            raise ValueError(
                f"input_ids hold {have} {modality} placeholder tokens but the {modality}s give {want} visual tokens; "
                "pass the processor's outputs unchanged"
            )


def _item_runs(input_ids: Tensor, placeholder: dict[str, int], counts: dict[str, list[int]]) -> dict[str, list[Tensor]]:
    """Per modality, each item's placeholder positions in the flattened ``(B·L)`` input (items in placeholder
    order; the counts are checked by :func:`_check_counts`)."""
    flat = input_ids.flatten()
    runs: dict[str, list[Tensor]] = {}
    for modality, token_id in placeholder.items():
        where = (flat == token_id).nonzero().flatten()
        runs[modality] = list(where.split(counts[modality])) if counts[modality] else []
    return runs


def _instructions(
    adapter: Adapter, inputs: Mapping[str, Any], items: list[VisualItem], placeholder: dict[str, int],
    counts: dict[str, list[int]],
) -> list[dict[str, Tensor]]:
    """``text_embeds`` per item: the language model's input embeddings of the text tokens of the item's batch row
    that follow its placeholder run (padding and every placeholder left out), or of those before it when none
    follow. The instruction sits after the image in the usual chat templates, the system prompt before it."""
    ids: Tensor = inputs["input_ids"]
    length = ids.shape[1]
    mask = inputs.get("attention_mask")
    text = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask != 0
    for token_id in placeholder.values():
        text &= ids != token_id
    runs = _item_runs(ids, placeholder, counts)
    embed = adapter.model.get_input_embeddings()
    pos = torch.arange(length, device=ids.device)
    seen = dict.fromkeys(placeholder, 0)
    out = []
    for item in items:
        run = runs[item.modality][seen[item.modality]]
        seen[item.modality] += 1
        row, first, last = int(run[0]) // length, int(run[0]) % length, int(run[-1]) % length
        after = text[row] & (pos > last)
        chosen = after if bool(after.any()) else text[row] & (pos < first)
        out.append({"text_embeds": embed(ids[row][chosen])})
    return out


def prompt_signals(
    model: nn.Module, inputs: Mapping[str, Any], items: list[VisualItem], method: str
) -> list[dict[str, Tensor]]:
    """Per item (:func:`encode` order), the signals ``method`` reads from the prompt (see ``PROMPT_SIGNALS`` in
    ``slimvlm.methods.registry``; empty dicts when it reads none): what :func:`prepare` passes to the method."""
    return _prompt_signals(adapter_for(model), inputs, items, method)


def _prompt_signals(
    adapter: Adapter, inputs: Mapping[str, Any], items: list[VisualItem], method: str
) -> list[dict[str, Tensor]]:
    if not set(PROMPT_SIGNALS) & set(get_method(method).accepts):
        return [{} for _ in items]
    placeholder = adapter.placeholder_ids()
    counts = {m: [it.num_tokens for it in items if it.modality == m] for m in placeholder}
    _check_counts(inputs["input_ids"], placeholder, counts)
    with torch.no_grad():
        return _instructions(adapter, inputs, items, placeholder, counts)


def _check_items(items: Any, method: str, use_pre: bool, request: SignalRequest | None) -> None:
    """Precomputed items must be a list of :class:`VisualItem` carrying what ``method`` reads."""
    if not isinstance(items, (list, tuple)) or not all(isinstance(it, VisualItem) for it in items):
        raise TypeError(f"items must be a list of VisualItem from slimvlm.pipeline.encode, got {type(items).__name__}")
    if use_pre and any(it.pre is None for it in items):
        raise ValueError(f"{method} reduces pre-projector features; these items have none (encode them for {method!r})")
    need = [s for s in TOWER_SIGNALS if s in get_method(method).needs]
    if request is not None and any(s not in it.signals for it in items for s in need):
        raise ValueError(f"{method} needs tower signals {need}; these items lack them (encode them for {method!r})")


def _rebuild(
    inputs: Mapping[str, Any],
    placeholder: dict[str, int],
    reduced: dict[str, list[tuple[Tensor, Tensor]]],
    counts: dict[str, list[int]],
    pos3d: Tensor | None,
    original_1d: bool = False,
) -> tuple[dict[str, Any], list[int]]:
    """Shrink each item's placeholder run to its kept count and re-pad the batch. Returns the new per-position
    inputs and, per item (modality order, then placeholder order), its batch row. ``pos3d``: the full prompt's
    M-RoPE positions; ``original_1d``: give 1-D ``position_ids`` from the full prompt (``positions="original"``)."""
    ids: Tensor = inputs["input_ids"]
    b, length = ids.shape
    mask = inputs.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask
    flat_ids = ids.flatten()
    keep = (mask.flatten() != 0).clone()
    source = torch.arange(b * length, device=ids.device)  # whose original position each kept position takes
    rows: list[int] = []
    runs = _item_runs(ids, placeholder, counts)
    for modality, token_id in placeholder.items():
        keep[flat_ids == token_id] = False
        for (tokens, src), run in zip(reduced.get(modality, []), runs[modality]):
            row = int(run[0]) // length
            if int(run[-1]) // length != row:
                raise ValueError(f"a {modality}'s placeholder tokens span two batch rows")
            rows.append(row)
            m = tokens.shape[0]
            keep[run[:m]] = True
            source[run[:m]] = run[src]
    keep = keep.view(b, length)
    new_len = keep.sum(1)
    width = int(new_len.max()) if b else 0
    right_padded = bool((mask[:, 0] != 0).all()) and bool((mask[:, -1] == 0).any())
    slot = torch.arange(width, device=ids.device)[None, :]
    valid = slot >= (width - new_len)[:, None] if not right_padded else slot < new_len[:, None]
    order = torch.sort((~keep).long(), dim=1, stable=True).indices[:, :width]  # kept positions, in order
    if not right_padded:  # left padding: shift each row's kept positions to the right end
        shift = (slot - (width - new_len)[:, None]).clamp(min=0)
        order = order.gather(1, shift)
    gather = order + torch.arange(b, device=ids.device)[:, None] * length
    pad_id = 0
    out: dict[str, Any] = {
        "input_ids": torch.where(valid, flat_ids[gather], torch.full_like(gather, pad_id)),
        "attention_mask": valid.to(mask.dtype),
    }
    if inputs.get("mm_token_type_ids") is not None:
        tt = inputs["mm_token_type_ids"].flatten()
        out["mm_token_type_ids"] = torch.where(valid, tt[gather], torch.zeros_like(tt[gather]))
    if pos3d is not None:
        src = source[gather]
        flat3d = pos3d.reshape(3, b * length)
        vis = torch.where(valid[None], flat3d[:, src], torch.ones_like(flat3d[:, src]))
        text = (valid.long().cumsum(-1) - 1).masked_fill(~valid, 1)
        out["position_ids"] = torch.cat([text[None], vis], 0)
    elif original_1d and not _in_place(gather, source, valid, mask, length):
        # the full prompt's positions as generate numbers it: cumsum of the mask, pads at 0
        full = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0).flatten()
        out["position_ids"] = torch.where(valid, full[source[gather]], torch.zeros_like(gather))
    return out, rows


def _in_place(gather: Tensor, source: Tensor, valid: Tensor, mask: Tensor, length: int) -> bool:
    """Whether the rebuilt prompt is the full prompt position for position (same width, same real tokens, each
    at its own place): then it needs no ``position_ids`` and the stock model numbers it exactly as its own."""
    if gather.shape[1] != length or not torch.equal(valid, mask != 0):
        return False
    return bool((source[gather] == gather)[valid].all())


def prepare(
    model: nn.Module,
    inputs: Mapping[str, Any],
    method: str = "none",
    *,
    items: list[VisualItem] | None = None,
    positions: str | None = None,
    **options: Any,
) -> Prepared:
    """Encode, reduce and rebuild: the kwargs to pass to the stock ``model(...)`` / ``model.generate(...)``.

    ``inputs`` are the processor's outputs (``input_ids``, ``attention_mask``, ``pixel_values``, …); ``options``
    are the method's config fields (``keep=``, ``ratio=``, ``mode=``, …). Keys this does not know are passed
    through unchanged. ``items``: the output of :func:`encode` for these inputs and this method, to reuse one
    tower forward across many prompts or methods (the vision encoder is then not run). ``positions``: how the
    reduced prompt is numbered, one of :data:`POSITIONS` (default: ``"renumber"`` for 1-D RoPE families,
    ``"original"`` for M-RoPE ones).
    """
    adapter = adapter_for(model)
    positions = _check_positions(adapter, positions)
    config = make_config(method, **options)
    _signal_request(adapter, method)
    return _prepare(adapter, inputs, method, config, options, items, positions)


def _check_positions(adapter: Adapter, positions: str | None) -> str:
    """The effective ``positions`` choice for this family, or a ValueError naming the allowed ones."""
    if positions is None:
        return "original" if adapter.positions == "mrope" else "renumber"
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {', '.join(map(repr, POSITIONS))}, got {positions!r}")
    if adapter.positions == "mrope" and positions != "original":
        raise ValueError(
            f"{type(adapter.model).__name__} uses M-RoPE: its kept visual tokens always keep their original (t, h, w) "
            "positions; only positions='original' applies"
        )
    return positions


def encoding_key(model: nn.Module, method: str) -> tuple[bool, SignalRequest | None]:
    """What :func:`encode` computes for ``method``: ``(pre-projector features?, tower signals)``. Methods with equal
    keys can share one encoding."""
    return _encoding_key(adapter_for(model), method)


def _encoding_key(adapter: Adapter, method: str) -> tuple[bool, SignalRequest | None]:
    return get_method(method).applies == "pre_projector", _signal_request(adapter, method)


@torch.no_grad()
def encode(model: nn.Module, inputs: Mapping[str, Any], method: str = "none") -> list[VisualItem]:
    """Run the vision encoder the way :func:`prepare` would for ``method``: one :class:`VisualItem` per image /
    video in placeholder order. Pass the result to ``prepare(..., items=...)`` to reuse it."""
    adapter = adapter_for(model)
    adapter.check_inputs(inputs)
    need_pre, request = _encoding_key(adapter, method)
    return adapter.encode(inputs, need_pre=need_pre, signals=request)


def _prepare(
    adapter: Adapter,
    inputs: Mapping[str, Any],
    method: str,
    config: Any,
    options: dict,
    items: list[VisualItem] | None = None,
    positions: str = "renumber",
) -> Prepared:
    adapter.check_inputs(inputs)
    if inputs.get("position_ids") is not None:
        raise ValueError("position_ids are rebuilt by slimvlm for the reduced sequence; do not pass them")
    use_pre, request = _encoding_key(adapter, method)
    with torch.no_grad():
        if items is None:
            items = adapter.encode(inputs, need_pre=use_pre, signals=request)
        else:
            _check_items(items, method, use_pre, request)
        use_pre = use_pre and all(it.pre is not None for it in items)
        placeholder = adapter.placeholder_ids()
        counts: dict[str, list[int]] = {m: [it.num_tokens for it in items if it.modality == m] for m in placeholder}
        frames: dict[str, list[int]] = {m: [it.frames for it in items if it.modality == m] for m in placeholder}
        _check_counts(inputs["input_ids"], placeholder, counts)  # before anything reads positions
        prompts = _prompt_signals(adapter, inputs, items, method)
        reduced: dict[str, list[tuple[Tensor, Tensor]]] = {}
        per_frame: dict[str, list[tuple[tuple[int, ...], int]]] = {}
        for item, prompt in zip(items, prompts):
            tokens, src, kept = _reduce_item(item, method, config, adapter, use_pre, prompt)
            reduced.setdefault(item.modality, []).append((tokens, src))
            per_frame.setdefault(item.modality, []).append(kept)
        pos3d = adapter.mrope_positions(inputs) if adapter.positions == "mrope" and items else None
    original_1d = positions == "original" and adapter.positions != "mrope"
    per_position, rows = _rebuild(inputs, placeholder, reduced, counts, pos3d, original_1d)
    kwargs = {k: v for k, v in inputs.items() if k not in _INPUT_KEYS and k not in adapter.encoder_keys}
    kwargs.update(per_position)
    if reduced:
        kwargs["mm_encoder_outputs"] = {
            modality: BaseModelOutputWithPooling(pooler_output=_container([t for t, _ in pairs], adapter.containers[modality]))
            for modality, pairs in reduced.items()
        }
    stats = []
    i = 0
    for modality in placeholder:
        for (tokens, _), n, f, kept in zip(reduced.get(modality, []), counts[modality], frames[modality],
                                           per_frame.get(modality, [])):
            stats.append(ItemStats(rows[i], modality, n, tokens.shape[0], method, dict(options), f, *kept))
            i += 1
    return Prepared(kwargs, stats, method, dict(options))


class SlimVLM:
    """A stock VLM with a token-reduction method in front of its language model.

    ``generate(**processor_outputs, **generation_kwargs)`` and ``__call__`` behave like the stock model's
    (both also take ``items=``, the output of :func:`encode`, to skip the vision encoder);
    ``last_stats`` lists, per image / video of the last call, its batch row and visual tokens before / after
    (entering the LLM); for AIM / FastV, ``last_inllm_stats`` gives the visual tokens kept per LLM layer;
    ``last_prompt_length`` is the reduced prompt length (new tokens in ``generate``'s output start there);
    ``positions`` says how the reduced prompt is numbered (:data:`POSITIONS`).
    Every other attribute is the wrapped model's.
    """

    def __init__(self, model: nn.Module, method: str = "none", *, positions: str | None = None, **options: Any):
        self.model = model
        self.adapter = adapter_for(model)
        self.method = method
        #: the method's declaration (:class:`slimvlm.methods.Method`).
        self.info = get_method(method)
        self.options = dict(options)
        #: how the reduced prompt is numbered (:data:`POSITIONS`), resolved for this model's family.
        self.positions = _check_positions(self.adapter, positions)
        self._positions_given = positions is not None
        self.config_ = make_config(method, **options)  # validate now, not at the first call
        _signal_request(self.adapter, method)
        #: the in-LLM pruner of AIM / FastV (attached only during a call), else None.
        self.pruner = _make_pruner(model, method, self.config_)
        #: per-layer kept counts of the last call's in-LLM pruning (AIM / FastV), else None.
        self.last_inllm_stats: dict[str, Any] | None = None
        self.last_stats: list[ItemStats] = []
        #: length of the (reduced, padded) prompt of the last call: ``generate``'s output continues after it.
        self.last_prompt_length: int = 0

    def _input_keys(self) -> set[str]:
        return _INPUT_KEYS | set(self.adapter.encoder_keys)

    def prepare(self, items: list[VisualItem] | None = None, **inputs: Any) -> dict[str, Any]:
        """The kwargs the stock model gets for these processor outputs (``items``: see :func:`prepare`)."""
        prepared = _prepare(self.adapter, inputs, self.method, self.config_, self.options, items, self.positions)
        self.last_stats = prepared.stats
        self.last_prompt_length = int(prepared.kwargs["input_ids"].shape[1])
        return prepared.kwargs

    def _split(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        keys = self._input_keys() | {"batch_num_images", "vision_feature_layer", "vision_feature_select_strategy"}
        inputs = {k: v for k, v in kwargs.items() if k in keys}
        rest = {k: v for k, v in kwargs.items() if k not in keys}
        return inputs, rest

    def _run(self, fn: Any, kwargs: dict[str, Any]) -> Any:
        items = kwargs.pop("items", None)
        inputs, rest = self._split(kwargs)
        prepared = self.prepare(items, **inputs)
        if self.pruner is None:
            return fn(**prepared, **rest)
        with self.pruner:  # hooks live only for this call; outside it the model is stock
            out = fn(**prepared, **rest)
        self.last_inllm_stats = self.pruner.last_stats
        return out

    def __call__(self, **kwargs: Any) -> Any:
        return self._run(self.model, kwargs)

    def generate(self, **kwargs: Any) -> Any:
        return self._run(self.model.generate, kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "model":  # not yet set (during unpickling)
            raise AttributeError(name)
        return getattr(self.model, name)

    def __repr__(self) -> str:
        given = {"positions": self.positions} if self._positions_given else {}
        opts = ", ".join(f"{k}={v!r}" for k, v in {**self.options, **given}.items())
        return f"SlimVLM({type(self.model).__name__}, method={self.method!r}{', ' + opts if opts else ''})"


def apply(model: nn.Module, method: str = "none", *, positions: str | None = None, **options: Any) -> SlimVLM:
    """Wrap ``model`` (a stock transformers 5 VLM) so that ``generate`` / ``__call__`` reduce its visual tokens
    with ``method`` (a name from ``slimvlm.methods.available()``) and ``options`` (its config fields).
    ``positions``: ``"renumber"`` or ``"original"`` (:data:`POSITIONS`; default: the family's usual one)."""
    return SlimVLM(model, method, positions=positions, **options)
