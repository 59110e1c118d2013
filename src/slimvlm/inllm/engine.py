"""Visual-token pruning inside the language model of a stock transformers 5 VLM, by hooks (no patching).

``InLLMPruner(model, schedule, score=..., mode=...)`` registers

- a kwargs pre-hook on the VLM's inner model (``model.model``) that records, per forward, which positions are
  visual placeholders (``input_ids`` equal to the image / video token id) and the 2-D padding mask;
- forward hooks on ``q_proj`` / ``k_proj`` of the layers whose attention decides a cut (only those);
- a kwargs pre-hook on every decoder layer that, in prefill, applies the rule (:data:`~slimvlm.inllm.scores.RULES`)
  at the scheduled layers and feeds the layer its slice of ``hidden_states``, ``(cos, sin)``, ``position_ids``
  and the attention mask, and in decoding gives each layer the mask over its own (shorter) KV cache.

The model stays on SDPA (or eager); scores are recomputed from the hooked projections with the layer's own
RoPE (``apply_rotary_pos_emb`` of the layer's transformers module) and GQA head repetition. A rule whose
``source`` is ``"input"`` instead applies the cut layer's own ``input_layernorm`` / ``q_proj`` / ``k_proj`` to its
input before the cut (PyramidDrop).

Merged tokens: a rule may return merged tokens (SparseVLM's recycling). Each takes the slot of a pruned token
(whose hidden state it replaces from the cut layer on) and is ordered right after the row's last visual token
(in the order the rule gives), before the text that follows: every token carries an order key, the causal
order of the layers after a cut. Without merges the order is the original one.

Positions
---------
``positions="original"``: kept tokens keep their original RoPE positions (FastV, DART). ``"renumber"``: from the
first cut on, every layer numbers its live tokens ``p0, p0 + 1, ...`` in their order (``p0``: the row's first
position) and a decoded token ``position - (tokens removed before that layer)`` (PyramidDrop, SparseVLM v1.5);
1-D RoPE only. ``"auto"``: renumber on 1-D RoPE, original on M-RoPE (Qwen2-VL, Qwen2.5-VL).

Modes
-----
``"remove"``: dropped tokens really leave the sequence; later layers run on fewer tokens and hold a shorter
KV cache (``DynamicCache`` layers may differ in length). Kept tokens keep their original positions.
``"mask"``: the official (AIM / FastV reference) semantics: full length everywhere; from the layer after a
decision on, every query is masked from the dropped keys, in prefill and in decoding (with merged tokens, the
causal mask follows the order keys, and renumbered positions are given to the live tokens). Both modes use the
same scores (over the tokens still present, in sequence order) and the same choices, so they agree to float
rounding.

Batches (``remove``)
--------------------
Each sample keeps its own tokens: all its text tokens and ``int(n_b · keep[l])`` of its ``n_b`` visual tokens.
The hidden states stay one rectangular tensor: after a cut every row holds its live tokens (original order)
right-aligned, and shorter rows are LEFT-padded with masked "dead" slots (padding tokens are dropped at the
first cut too). Dead slots are never attended (a dead slot only sees itself, so no row is fully masked),
neither in prefill nor in decoding. The width of layer ``l`` (its KV-cache length after prefill) is
``max_b(live tokens of b)``. Nothing falls back to batch size 1.

Limits: sdpa / eager only (no flash / flex / sliding-window layers); DynamicCache only; prefill must start from
an empty cache and decoding must be one token per step (no chunked prefill, assisted decoding or cache
continuation with new prompt tokens); in ``remove`` mode ``logits`` / hidden states of a prefill have the
width of the last layer (the LAST position is the last input token, as ``generate`` needs), and ``labels``
losses are not meaningful.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .._compat import cache_from_kwargs
from . import scores as S
from .schedules import Schedule, make_schedule

__all__ = ["InLLMPruner", "find_text_model", "cache_lengths", "POSITIONS"]

_SUPPORTED_ATTN = ("sdpa", "eager")
#: how kept tokens are numbered for RoPE after a cut (see the module docstring).
POSITIONS = ("original", "renumber", "auto")
#: order keys: token ``i`` has ``i * _STRIDE``; the merged tokens of cut ``s`` follow the row's last visual token
#: ``v`` with ``v * _STRIDE + (s + 1) * _STAGE + j + 1``.
_STRIDE = 1 << 24
_STAGE = 1 << 20


def find_text_model(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(outer, text_model)``: the module whose forward sees ``input_ids`` (the VLM's inner model) and the
    decoder stack with ``.layers`` (``model.model.language_model`` for the VLM classes)."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(getattr(inner, "language_model", None), "layers"):
        return inner, inner.language_model
    if hasattr(getattr(model, "language_model", None), "layers"):
        return model, model.language_model
    if inner is not None and hasattr(inner, "layers"):
        return inner, inner
    if hasattr(model, "layers"):
        return model, model
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__} (looked for model.language_model.layers)")


def cache_lengths(cache: Any) -> list[int]:
    """Per decoder layer, how many positions the (Dynamic)cache holds."""
    return [int(cache.get_seq_length(i)) for i in range(len(cache.layers))]


def _token_ids(model: nn.Module) -> list[int]:
    cfg = getattr(model, "config", None)
    ids = []
    for name in ("image_token_id", "image_token_index", "video_token_id", "video_token_index"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v >= 0 and v not in ids:
            ids.append(v)
    return ids


@dataclass
class _Run:
    """State of one prefill (and the decoding that follows it)."""

    batch: int
    length: int
    visual: Tensor  # (B, L) bool: visual placeholders (valid ones)
    valid: Tensor  # (B, L) bool: not padding
    n_visual: list[int]
    kept: Tensor  # (B, L) bool: visual tokens kept so far (merged tokens included, at their slots)
    order: Tensor  # (B, L) long: the causal order of the tokens (see _STRIDE)
    reordered: bool = False  # whether a merged token moved out of index order
    stage: int = 0  # cuts done so far
    prepared: dict[str, Tensor] = field(default_factory=dict)  # the rule's per-prefill tensors
    # renumbered positions: each row's first position, the stock prefill positions, tokens removed per layer
    pos0: Tensor | None = None
    stock_pos: Tensor | None = None
    removed: dict[int, Tensor] = field(default_factory=dict)
    # remove mode: current layout (slots → original index, live) and one per layer from the first cut on
    slots: Tensor | None = None
    live: Tensor | None = None
    layouts: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    # mask mode: per layer from the first cut on, the dropped visual tokens (original coordinates)
    dropped: dict[int, Tensor] = field(default_factory=dict)
    # captured at score layers: q, k and the layer's (pe, active, index); the previous prefill layer's context
    qk: dict[int, dict[str, Any]] = field(default_factory=dict)
    prev: dict[str, Any] = field(default_factory=dict)
    scores: dict[int, Tensor] = field(default_factory=dict)  # deciding layer -> (B, L) scores, original coordinates
    kept_per_layer: dict[int, list[int]] = field(default_factory=dict)  # layer -> per-sample kept visual count
    kept_mask: dict[int, Tensor] = field(default_factory=dict)  # cut layer -> (B, L) visual tokens kept from it on
    width: dict[int, int] = field(default_factory=dict)  # layer -> tokens the layer processes (remove: with dead)


class InLLMPruner:
    """Prune visual tokens inside the language model of ``model``.

    Args:
        model: a stock transformers 5 VLM (LLaVA family, Qwen2-VL, …) whose language model is Llama / Qwen2 /
            Qwen2-VL-text, on ``sdpa`` or ``eager`` attention.
        schedule: a :class:`~slimvlm.inllm.schedules.Schedule` for the model's depth (e.g. ``aim_schedule(28)``)
            or a per-layer list of kept fractions.
        score: the rule that chooses the tokens at a cut, a key of :data:`~slimvlm.inllm.scores.RULES`
            (``"pagerank"`` AIM, ``"fastv"`` last-token attention, ``"pyramiddrop"``, ``"dart"``, ``"sparsevlm"``).
        mode: ``"remove"`` (real speed-up) or ``"mask"`` (reference semantics, full length).
        positions: ``"original"``, ``"renumber"`` or ``"auto"`` (see the module docstring).
        visual_token_ids: placeholder ids that mark visual tokens (default: the config's image / video ids).
        options: the rule's options (e.g. PageRank's ``tau`` 0.1 and ``iters`` 5).

    Use as a context manager or with :meth:`attach` / :meth:`detach`. Detached, the model is the stock model.
    After a prefill, :attr:`last_stats` holds per-layer kept counts (``"kept"``) and widths (``"width"``), the
    kept visual tokens from each cut layer on (``"kept_mask"``, ``(B, L)``, original positions; a merged token is
    marked at the slot it took), and :attr:`last_scores` the scores of each deciding layer (``(B, L)``, original
    positions).
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: Schedule | Sequence[float],
        score: str = "pagerank",
        mode: str = "remove",
        *,
        positions: str = "original",
        visual_token_ids: Sequence[int] | None = None,
        **options: Any,
    ):
        if score not in S.RULES:
            raise ValueError(f"score must be one of {', '.join(map(repr, S.RULES))}, got {score!r}")
        if mode not in ("remove", "mask"):
            raise ValueError(f"mode must be 'remove' or 'mask', got {mode!r}")
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(map(repr, POSITIONS))}, got {positions!r}")
        self.rule = S.RULES[score]
        self.options = self.rule.check(options)
        self.model = model
        self.outer, self.text_model = find_text_model(model)
        self.layers = list(self.text_model.layers)
        cfg = self.text_model.config
        impl = getattr(cfg, "_attn_implementation", None)
        if impl not in _SUPPORTED_ATTN:
            raise ValueError(f"InLLMPruner supports attn_implementation 'sdpa' or 'eager', the model uses {impl!r}")
        self.attn_implementation = impl
        types = getattr(cfg, "layer_types", None)
        if types is not None and any(t != "full_attention" for t in types[: len(self.layers)]):
            raise ValueError("sliding-window attention layers are not supported")
        self.schedule = make_schedule(schedule, len(self.layers))
        self.score = score
        self.mode = mode
        rope_1d = self._rope_is_1d()
        if positions == "renumber" and not rope_1d:
            raise ValueError("renumbered positions (positions='renumber') need a 1-D RoPE language model; this one uses M-RoPE")
        self.positions = ("renumber" if rope_1d else "original") if positions == "auto" else positions
        self.visual_token_ids = list(visual_token_ids) if visual_token_ids is not None else _token_ids(model)
        if not self.visual_token_ids:
            raise ValueError("no visual placeholder token id found in the config; pass visual_token_ids=")
        self.cut_layers = set(self.schedule.cut_layers)
        self.score_layers = {c - 1 for c in self.cut_layers} if self.rule.source == "previous" else set()
        self.first_cut = min(self.cut_layers) if self.cut_layers else None
        attn = self.layers[0].self_attn
        mod = sys.modules[type(attn).__module__]
        if not hasattr(mod, "apply_rotary_pos_emb"):
            raise ValueError(f"{type(attn).__module__} has no apply_rotary_pos_emb")
        self._rope = mod.apply_rotary_pos_emb
        self._handles: list[Any] = []
        self._recorded: tuple[Tensor, Tensor | None] | None = None
        self._explicit: tuple[Tensor, Tensor | None] | None = None
        self._run: _Run | None = None
        self._phase: str | None = None
        self.last_stats: dict[str, Any] = {}
        self.last_scores: dict[int, Tensor] = {}

    def _rope_is_1d(self) -> bool:
        """Whether the language model's rotary embedding takes 1-D positions (not M-RoPE)."""
        rotary = getattr(self.text_model, "rotary_emb", None)
        if rotary is None or getattr(rotary, "mrope_section", None) is not None:
            return False
        cfg = self.text_model.config
        for name in ("rope_parameters", "rope_scaling"):
            params = getattr(cfg, name, None)
            if isinstance(params, dict) and "mrope_section" in params:
                return False
        return True

    # ------------------------------------------------------------------------------------------ attach / detach

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> "InLLMPruner":
        if self._handles:
            raise RuntimeError("already attached")
        h = self._handles
        h.append(self.outer.register_forward_pre_hook(self._outer_pre, with_kwargs=True))
        for i, layer in enumerate(self.layers):
            h.append(layer.register_forward_pre_hook(self._make_layer_pre(i), with_kwargs=True))
            if i in self.score_layers:
                h.append(layer.self_attn.q_proj.register_forward_hook(self._make_capture(i, "q")))
                h.append(layer.self_attn.k_proj.register_forward_hook(self._make_capture(i, "k")))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._run = None
        self._phase = None
        self._recorded = None

    def __enter__(self) -> "InLLMPruner":
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def set_visual_mask(self, visual_mask: Tensor, attention_mask: Tensor | None = None) -> None:
        """Visual positions (``(B, L)`` bool) for the next prefill, when the forward gets no ``input_ids``
        (``inputs_embeds`` or the language model called directly). Overrides what the input ids say."""
        self._explicit = (visual_mask.bool(), attention_mask)

    # ------------------------------------------------------------------------------------------ hooks

    def _outer_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if ids is None:
            self._recorded = None
            return None
        visual = torch.zeros_like(ids, dtype=torch.bool)
        for t in self.visual_token_ids:
            visual |= ids == t
        self._recorded = (visual, mask if isinstance(mask, Tensor) else None)
        return None

    def _make_capture(self, layer: int, name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            run = self._run
            if self._phase == "prefill" and run is not None and layer in run.qk:
                run.qk[layer][name] = output.detach()

        return hook

    def _make_layer_pre(self, layer: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            return self._layer_pre(layer, args, kwargs)

        return hook

    def _layer_pre(self, layer: int, args: tuple, kwargs: dict):
        hidden = args[0] if args else kwargs["hidden_states"]
        cache = cache_from_kwargs(kwargs)
        if layer == 0:
            past = int(cache.get_seq_length(0)) if cache is not None else 0
            if past == 0:
                self._phase = "prefill"
                self._start(hidden, kwargs)
            elif hidden.shape[1] == 1:
                self._phase = "decode"
            else:
                self._phase = None
                if self._run is not None:
                    raise NotImplementedError(
                        "InLLMPruner: a multi-token forward on a non-empty cache (chunked prefill, assisted "
                        "decoding, continuing a conversation) is not supported; start from an empty cache"
                    )
        run = self._run
        if run is None or self._phase is None or self.first_cut is None:
            return None
        if self._phase == "prefill":
            return self._prefill_layer(layer, hidden, args, kwargs)
        if layer < self.first_cut:
            return None
        if hidden.shape[0] != run.batch:
            raise RuntimeError(f"decode batch {hidden.shape[0]} differs from the prefill batch {run.batch}")
        return self._decode_layer(layer, args, kwargs)

    # ------------------------------------------------------------------------------------------ prefill

    def _start(self, hidden: Tensor, kwargs: dict) -> None:
        b, length = hidden.shape[:2]
        source = self._explicit if self._explicit is not None else self._recorded
        self._explicit = None
        self._recorded = None
        if source is None:
            raise RuntimeError(
                "InLLMPruner: no visual positions for this prefill; call the VLM with input_ids or use "
                "set_visual_mask() before calling the language model"
            )
        visual, mask2d = source
        if tuple(visual.shape) != (b, length):
            raise RuntimeError(f"visual mask {tuple(visual.shape)} does not match the prefill {(b, length)}")
        visual = visual.to(hidden.device).bool()
        if mask2d is not None and mask2d.dim() != 2:
            raise NotImplementedError("InLLMPruner needs a 2-D attention_mask (or none)")
        valid = torch.ones(b, length, dtype=torch.bool, device=hidden.device)
        if mask2d is not None:
            valid = mask2d.to(hidden.device).bool()
            if tuple(valid.shape) != (b, length):
                raise RuntimeError(f"attention_mask {tuple(valid.shape)} does not match the prefill {(b, length)}")
        visual = visual & valid
        n_visual = [int(v) for v in visual.sum(1).tolist()]
        if not any(n_visual):
            self._run = None  # nothing to prune: stock behaviour
            self.last_stats = {"n_visual": n_visual, "kept": {}, "width": {}}
            self.last_scores = {}
            return
        pos = torch.arange(length, device=hidden.device)
        order = (pos * _STRIDE).expand(b, length).clone()
        run = _Run(b, length, visual, valid, n_visual, kept=visual.clone(), order=order)
        if self.mode == "remove":
            run.slots = pos.expand(b, length)
            run.live = valid
        if self.positions == "renumber":
            stock = kwargs.get("position_ids")
            stock = stock.expand(b, length) if isinstance(stock, Tensor) and stock.dim() == 2 else pos.expand(b, length)
            first = torch.where(valid, pos, torch.full_like(pos, length - 1)).amin(1)
            run.stock_pos = stock
            run.pos0 = stock.gather(1, first[:, None])[:, 0]
        run.prepared = self.rule.prepare(hidden, visual, valid, self.options)
        self._run = run

    def _prefill_layer(self, layer: int, hidden: Tensor, args: tuple, kwargs: dict):
        run = self._run
        assert run is not None
        if layer in self.cut_layers:
            hidden = self._cut(layer, hidden)
        changed = self.first_cut is not None and layer >= self.first_cut
        if self.mode == "mask":
            dropped = run.visual & ~run.kept
            active = run.valid & ~dropped
            index = self._sequence_index()
            if changed:
                run.dropped[layer] = dropped
                kwargs["attention_mask"] = self._mask_prefill(kwargs.get("attention_mask"), dropped, hidden)
                if self.positions == "renumber":
                    kwargs = self._renumber_full(kwargs, active, hidden)
        else:
            if changed:
                run.layouts[layer] = (run.slots, run.live)
                kwargs = self._slice_kwargs(kwargs, run.slots, run.live, hidden)
            active, index = run.live, run.slots
        if changed and self.positions == "renumber":
            run.removed[layer] = run.valid.sum(1) - active.sum(1)
        run.kept_per_layer[layer] = [int(v) for v in run.kept.sum(1).tolist()]
        run.width[layer] = int(hidden.shape[1])
        context = {"pe": kwargs["position_embeddings"], "active": active, "index": index}
        if layer in self.score_layers:
            run.qk[layer] = dict(context)
        run.prev = context
        if layer == len(self.layers) - 1:
            self.last_stats = {
                "n_visual": list(run.n_visual),
                "kept": dict(run.kept_per_layer),
                "width": dict(run.width),
                "kept_mask": dict(run.kept_mask),
            }
            self.last_scores = dict(run.scores)
            run.qk.clear()
            run.prev = {}
        if not changed:
            return None
        if args:
            args = (hidden,) + tuple(args[1:])
        else:
            kwargs["hidden_states"] = hidden
        return args, kwargs

    def _sequence_index(self) -> Tensor:
        """Mask mode: the original index of the token at each place of the causal order (identity without merges)."""
        run = self._run
        if not run.reordered:
            return torch.arange(run.length, device=run.order.device).expand(run.batch, run.length)
        return torch.sort(run.order, dim=1, stable=True).indices

    def _projections(self, layer: int, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """``q_proj`` / ``k_proj`` of ``layer`` applied to its normalised input (rules whose source is "input")."""
        block = self.layers[layer]
        x = block.input_layernorm(hidden)
        return block.self_attn.q_proj(x), block.self_attn.k_proj(x)

    def _to_original(self, x: Tensor, index: Tensor, active: Tensor, fill: Any) -> Tensor:
        """``(B, N)`` values of the present tokens to original coordinates ``(B, L)``; the others get ``fill``."""
        run = self._run
        out = torch.full((run.batch, run.length + 1), fill, dtype=x.dtype, device=x.device)
        out.scatter_(1, torch.where(active, index, torch.full_like(index, run.length)), x)
        return out[:, : run.length]

    def _cut(self, layer: int, hidden: Tensor) -> Tensor:
        """Apply the rule before ``layer`` runs; returns ``hidden`` in the new layout (remove) or with merged tokens
        written in (mask)."""
        run = self._run
        if self.rule.source == "previous":
            src = layer - 1
            context = run.qk.pop(src, None)
            if context is None or "q" not in context or "k" not in context:
                raise RuntimeError(f"InLLMPruner: no q/k captured at layer {src}")
            q, k = context["q"], context["k"]
        else:
            src = layer
            context = run.prev
            q, k = self._projections(layer, hidden)
        attn = self.layers[src].self_attn
        b, n = q.shape[:2]
        hd = attn.head_dim
        q = q.view(b, n, -1, hd).transpose(1, 2)
        k = k.view(b, n, -1, hd).transpose(1, 2)
        cos, sin = context["pe"]
        q, k = self._rope(q, k, cos, sin)
        index, active, states = context["index"], context["active"], hidden
        if self.mode == "mask":  # to the causal order (the identity without merged tokens)
            active = active.gather(1, index)
            if run.reordered:
                q = q.gather(2, index[:, None, :, None].expand_as(q))
                k = k.gather(2, index[:, None, :, None].expand_as(k))
                states = hidden.gather(1, index[..., None].expand_as(hidden))
        candidates = (run.visual & run.kept).gather(1, index) & active
        present = candidates.sum(1).tolist()
        counts = torch.tensor(
            [self.schedule.selected(nv, p, layer) for nv, p in zip(run.n_visual, present)], device=q.device
        )
        cut = S.Cut(
            q=q, k=k, scaling=attn.scaling, active=active, visual=candidates, counts=counts, hidden=states,
            index=index, prepared=run.prepared, final_norm=getattr(self.text_model, "norm", None),
            recycle=self.schedule.recycle, options=self.options,
        )
        decision = self.rule.decide(cut)
        kept = self._to_original(decision.kept & candidates, index, active, False)
        scores = self._to_original(decision.scores.float(), index, active, -1.0)
        run.scores[src] = scores.masked_fill(~run.visual, 1.0).masked_fill(~run.valid, -1.0)
        merged = None
        if decision.merge_at is not None and bool((decision.merge_at >= 0).any()):
            at = decision.merge_at
            has = at >= 0
            slot = torch.where(has, index.gather(1, at.clamp(min=0)), torch.full_like(at, run.length))
            mark = torch.zeros(b, run.length + 1, dtype=torch.bool, device=kept.device).scatter(1, slot, has)
            kept |= mark[:, : run.length]
            pos = torch.arange(run.length, device=kept.device)
            last = torch.where(run.visual, pos, torch.full_like(pos, -1)).amax(1)
            if run.stage + 1 >= _STRIDE // _STAGE or at.shape[1] >= _STAGE:
                raise ValueError("too many cuts or merged tokens for the order keys")
            keys = last[:, None] * _STRIDE + (run.stage + 1) * _STAGE + torch.arange(at.shape[1], device=at.device) + 1
            order = torch.cat([run.order, run.order[:, :1]], 1).scatter(1, slot, keys)
            run.order = order[:, : run.length]
            run.reordered = True
            merged = (slot, decision.merged, has)
        run.kept = kept
        run.kept_mask[layer] = kept
        run.stage += 1
        if self.mode == "remove":
            hidden = self._relayout(hidden)
            if merged is not None:
                inv = torch.full((b, run.length + 1), -1, dtype=torch.long, device=hidden.device)
                width = run.slots.shape[1]
                where = torch.where(run.live, run.slots, torch.full_like(run.slots, run.length))
                inv.scatter_(1, where, torch.arange(width, device=hidden.device).expand(b, width))
                slot, values, has = merged
                rows, cols = has.nonzero(as_tuple=True)
                hidden = hidden.clone()
                hidden[rows, inv.gather(1, slot)[rows, cols]] = values[rows, cols].to(hidden.dtype)
        elif merged is not None:
            slot, values, has = merged
            rows, cols = has.nonzero(as_tuple=True)
            hidden = hidden.clone()
            hidden[rows, slot[rows, cols]] = values[rows, cols].to(hidden.dtype)
        return hidden

    def _relayout(self, hidden: Tensor) -> Tensor:
        """New remove-mode layout after a cut (live tokens in causal order, right-aligned); gathers ``hidden`` from
        the previous layout."""
        run = self._run
        b, length = run.batch, run.length
        dev = hidden.device
        live_tok = run.valid & (~run.visual | run.kept)
        width = int(live_tok.sum(1).max())
        key = torch.where(live_tok, run.order, torch.full_like(run.order, -1))
        ranked = torch.sort(key, dim=1, stable=True)  # dead (-1) first, then live tokens in causal order
        live = ranked.values[:, length - width :] >= 0
        slots = torch.where(live, ranked.indices[:, length - width :], torch.zeros_like(live, dtype=torch.long))
        inv = torch.full((b, length), -1, dtype=torch.long, device=dev)  # original position -> previous slot
        prev_slots, prev_live = run.slots, run.live
        prev_idx = torch.arange(prev_slots.shape[1], device=dev).expand_as(prev_slots)
        # dead slots of the previous layout all point at original index 0: amax lets a live entry win
        inv.scatter_reduce_(1, prev_slots, torch.where(prev_live, prev_idx, torch.full_like(prev_idx, -1)), "amax")
        src = inv.gather(1, slots).clamp(min=0)
        hidden = hidden.gather(1, src[..., None].expand(b, width, hidden.shape[-1]))
        run.slots, run.live = slots, live
        return hidden

    def _rotary(self, hidden: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """``(cos, sin)`` of the language model's rotary embedding at ``positions`` ``(B, N)``."""
        return self.text_model.rotary_emb(hidden, position_ids=positions)

    def _slice_kwargs(self, kwargs: dict, slots: Tensor, live: Tensor, hidden: Tensor) -> dict:
        b, width = slots.shape
        cos, sin = kwargs["position_embeddings"]

        def take(x: Tensor) -> Tensor:
            x = x.expand(b, *x.shape[1:])
            idx = slots.view(b, width, *([1] * (x.dim() - 2))).expand(b, width, *x.shape[2:])
            return x.gather(1, idx)

        pid = kwargs.get("position_ids")
        if self.positions == "renumber":
            rank = torch.arange(width, device=slots.device)[None, :] - (~live).sum(1, keepdim=True)
            positions = torch.where(live, self._run.pos0[:, None] + rank, torch.zeros_like(rank))
            kwargs["position_embeddings"] = self._rotary(hidden, positions)
            if isinstance(pid, Tensor) and pid.dim() == 2:
                kwargs["position_ids"] = positions
        else:
            kwargs["position_embeddings"] = (take(cos), take(sin))
            if isinstance(pid, Tensor) and pid.dim() == 2:
                kwargs["position_ids"] = take(pid)
        kwargs["attention_mask"] = self._layout_mask(live, width, hidden)
        return kwargs

    def _renumber_full(self, kwargs: dict, active: Tensor, hidden: Tensor) -> dict:
        """Mask mode: renumbered positions for the live tokens (by causal order), the stock ones for the others."""
        run = self._run
        big = torch.iinfo(run.order.dtype).max
        ranked = torch.sort(torch.where(active, run.order, torch.full_like(run.order, big)), dim=1, stable=True).indices
        rank = torch.empty_like(ranked).scatter_(1, ranked, torch.arange(run.length, device=ranked.device).expand_as(ranked))
        positions = torch.where(active, run.pos0[:, None] + rank, run.stock_pos)
        kwargs["position_embeddings"] = self._rotary(hidden, positions)
        pid = kwargs.get("position_ids")
        if isinstance(pid, Tensor) and pid.dim() == 2:
            kwargs["position_ids"] = positions
        return kwargs

    # ------------------------------------------------------------------------------------------ masks

    def _as_format(self, allowed: Tensor, dtype: torch.dtype) -> Tensor:
        if self.attn_implementation == "sdpa":
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )

    def _layout_mask(self, live: Tensor, width: int, hidden: Tensor) -> Tensor | None:
        """Remove-mode prefill mask over a layout: causal among live slots, dead slots see only themselves."""
        if self.attn_implementation == "sdpa" and bool(live.all()):
            return None  # sorted live tokens: sdpa's is_causal is exact
        allowed = S.causal_valid_mask(live, width) | torch.eye(width, dtype=torch.bool, device=live.device)
        return self._as_format(allowed, hidden.dtype)

    def _mask_prefill(self, mask: Any, dropped: Tensor, hidden: Tensor) -> Tensor:
        """Mask-mode prefill: the stock mask with the dropped keys masked for every other query (with merged
        tokens: causal by order key over the valid, not dropped keys)."""
        run = self._run
        length = dropped.shape[1]
        dev = dropped.device
        eye = torch.eye(length, dtype=torch.bool, device=dev)[None, None]
        keep_col = ~dropped[:, None, None, :] | eye
        if run.reordered:
            o = run.order
            keys = (run.valid & ~dropped)[:, None, None, :]
            allowed = ((o[:, None, None, :] <= o[:, None, :, None]) & keys) | eye
            return self._as_format(allowed, hidden.dtype)
        if mask is None:
            causal = torch.ones(length, length, dtype=torch.bool, device=dev).tril()[None, None]
            return self._as_format(causal & keep_col, hidden.dtype)
        if not isinstance(mask, Tensor) or mask.dim() != 4:
            raise NotImplementedError("InLLMPruner needs a 4-D attention mask (sdpa / eager)")
        if mask.dtype == torch.bool:
            return mask & keep_col
        return mask.masked_fill(~keep_col, torch.finfo(mask.dtype).min)

    def _decode_layer(self, layer: int, args: tuple, kwargs: dict):
        run = self._run
        mask = kwargs.get("attention_mask")
        if mask is not None and (not isinstance(mask, Tensor) or mask.dim() != 4):
            raise NotImplementedError("InLLMPruner needs a 4-D attention mask (sdpa / eager)")
        hidden = args[0] if args else kwargs["hidden_states"]
        q = hidden.shape[1]
        b = run.batch
        dev = hidden.device
        if self.positions == "renumber":
            pid = kwargs.get("position_ids")
            if not isinstance(pid, Tensor) or pid.dim() != 2:
                raise NotImplementedError("InLLMPruner: renumbered positions need 2-D position_ids in decoding")
            positions = pid.expand(b, q) - run.removed[layer][:, None]
            kwargs["position_ids"] = positions
            kwargs["position_embeddings"] = self._rotary(hidden, positions)
        if self.mode == "mask":
            dropped = run.dropped[layer]
            if mask is None:
                past = int(cache_from_kwargs(kwargs).get_seq_length(layer))  # before this layer's update
                extra = past + q - run.length
                cols = torch.cat([~dropped, torch.ones(b, extra, dtype=torch.bool, device=dev)], 1)
                kwargs["attention_mask"] = self._as_format(cols[:, None, None, :].expand(b, 1, q, -1), hidden.dtype)
            else:
                cols = torch.ones(b, mask.shape[-1], dtype=torch.bool, device=dev)
                cols[:, : run.length] = ~dropped
                cols = cols[:, None, None, :]
                if mask.dtype == torch.bool:
                    kwargs["attention_mask"] = mask & cols
                else:
                    kwargs["attention_mask"] = mask.masked_fill(~cols, torch.finfo(mask.dtype).min)
            return args, kwargs
        slots, live = run.layouts[layer]
        width = slots.shape[1]
        past = int(cache_from_kwargs(kwargs).get_seq_length(layer))
        extra = past + q - width
        if mask is None:
            if self.attn_implementation == "sdpa" and bool(live.all()):
                return args, kwargs
            new = torch.ones(b, 1, q, extra, dtype=torch.bool, device=dev)
            allowed = torch.cat([live[:, None, None, :].expand(b, 1, q, width), new], -1)
            kwargs["attention_mask"] = self._as_format(allowed, hidden.dtype)
            return args, kwargs
        if mask.shape[-1] - run.length != extra:
            raise RuntimeError(
                f"layer {layer}: the cache holds {past} positions for a prefill of width {width}, the mask "
                f"{mask.shape[-1]} for a prefill of {run.length}; was the cache reused across prompts?"
            )
        tail = mask[..., run.length :]
        if mask.dtype == torch.bool:
            head = live[:, None, None, :].expand(b, 1, mask.shape[2], width)
        else:
            head = torch.zeros(b, 1, mask.shape[2], width, dtype=mask.dtype, device=dev).masked_fill(
                ~live[:, None, None, :], torch.finfo(mask.dtype).min
            )
        kwargs["attention_mask"] = torch.cat([head.expand(tail.shape[0], -1, -1, -1), tail], -1)
        return args, kwargs
