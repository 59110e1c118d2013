"""Visual-token pruning inside the language model of a stock transformers 5 VLM, by hooks (no patching).

``InLLMPruner(model, schedule, score=..., mode=...)`` registers

- a kwargs pre-hook on the VLM's inner model (``model.model``) that records, per forward, which positions are
  visual placeholders (``input_ids`` equal to the image / video token id) and the 2-D padding mask;
- forward hooks on ``q_proj`` / ``k_proj`` of the layers whose attention decides a cut (only those);
- a kwargs pre-hook on every decoder layer that, in prefill, scores and cuts at the scheduled layers and feeds
  the layer its slice of ``hidden_states``, ``(cos, sin)``, ``position_ids`` and the attention mask, and in
  decoding gives each layer the mask over its own (shorter) KV cache.

The model stays on SDPA (or eager); scores are recomputed from the hooked projections with the layer's own
RoPE (``apply_rotary_pos_emb`` of the layer's transformers module) and GQA head repetition.

Modes
-----
``"remove"``: dropped tokens really leave the sequence; later layers run on fewer tokens and hold a shorter
KV cache (``DynamicCache`` layers may differ in length). Kept tokens keep their original positions.
``"mask"``: the official (AIM / FastV reference) semantics: full length everywhere; from the layer after a
decision on, every query is masked from the dropped keys, in prefill and in decoding. Both modes use the same
scores (over the tokens still present) and the same choices, so they agree to float rounding.

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

__all__ = ["InLLMPruner", "find_text_model", "cache_lengths"]

_SUPPORTED_ATTN = ("sdpa", "eager")


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
    counts: dict[int, list[int]]  # cut layer -> per-sample kept visual count
    kept: Tensor  # (B, L) bool: visual tokens kept so far
    # remove mode: current layout (slots → original index, live) and one per layer from the first cut on
    slots: Tensor | None = None
    live: Tensor | None = None
    layouts: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    # mask mode: per layer from the first cut on, the dropped visual tokens (original coordinates)
    dropped: dict[int, Tensor] = field(default_factory=dict)
    # captured at score layers
    qk: dict[int, dict[str, Any]] = field(default_factory=dict)
    scores: dict[int, Tensor] = field(default_factory=dict)  # score layer -> (B, L) scores, original coordinates
    kept_per_layer: dict[int, list[int]] = field(default_factory=dict)  # layer -> per-sample kept visual count
    width: dict[int, int] = field(default_factory=dict)  # layer -> tokens the layer processes (remove: with dead)


class InLLMPruner:
    """Prune visual tokens inside the language model of ``model``.

    Args:
        model: a stock transformers 5 VLM (LLaVA family, Qwen2-VL, …) whose language model is Llama / Qwen2 /
            Qwen2-VL-text, on ``sdpa`` or ``eager`` attention.
        schedule: a :class:`~slimvlm.inllm.schedules.Schedule` for the model's depth (e.g. ``aim_schedule(28)``)
            or a per-layer list of kept fractions.
        score: ``"pagerank"`` (AIM) or ``"fastv"`` (last-token attention averaged over heads).
        mode: ``"remove"`` (real speed-up) or ``"mask"`` (reference semantics, full length).
        tau, iters: PageRank temperature and power iterations (AIM: 0.1, 5).
        visual_token_ids: placeholder ids that mark visual tokens (default: the config's image / video ids).

    Use as a context manager or with :meth:`attach` / :meth:`detach`. Detached, the model is the stock model.
    After a prefill, :attr:`last_stats` holds per-layer kept counts and widths, and :attr:`last_scores` the
    scores of each deciding layer (``(B, L)``, original positions).
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: Schedule | Sequence[float],
        score: str = "pagerank",
        mode: str = "remove",
        *,
        tau: float = 0.1,
        iters: int = 5,
        visual_token_ids: Sequence[int] | None = None,
    ):
        if score not in S.SCORES:
            raise ValueError(f"score must be one of {', '.join(map(repr, S.SCORES))}, got {score!r}")
        if mode not in ("remove", "mask"):
            raise ValueError(f"mode must be 'remove' or 'mask', got {mode!r}")
        if tau <= 0 or iters < 0:
            raise ValueError(f"need tau > 0 and iters >= 0, got tau={tau}, iters={iters}")
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
        self.tau = float(tau)
        self.iters = int(iters)
        self.visual_token_ids = list(visual_token_ids) if visual_token_ids is not None else _token_ids(model)
        if not self.visual_token_ids:
            raise ValueError("no visual placeholder token id found in the config; pass visual_token_ids=")
        self.cut_layers = set(self.schedule.cut_layers)
        self.score_layers = set(self.schedule.score_layers)
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
                self._start(hidden)
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

    def _start(self, hidden: Tensor) -> None:
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
        counts = {layer: [self.schedule.count(n, layer) for n in n_visual] for layer in self.cut_layers}
        run = _Run(b, length, visual, valid, n_visual, counts, kept=visual.clone())
        if self.mode == "remove":
            run.slots = torch.arange(length, device=hidden.device).expand(b, length)
            run.live = valid
        self._run = run

    def _prefill_layer(self, layer: int, hidden: Tensor, args: tuple, kwargs: dict):
        run = self._run
        assert run is not None
        if layer in self.cut_layers:
            self._cut(layer)
        changed = False
        if self.first_cut is not None and layer >= self.first_cut:
            changed = True
            if self.mode == "mask":
                dropped = run.visual & ~run.kept
                run.dropped[layer] = dropped
                kwargs["attention_mask"] = self._mask_prefill(kwargs.get("attention_mask"), dropped, hidden)
            else:
                if layer in self.cut_layers:
                    hidden = self._relayout(hidden)
                slots, live = run.slots, run.live
                run.layouts[layer] = (slots, live)
                kwargs = self._slice_kwargs(kwargs, slots, live, hidden)
        run.kept_per_layer[layer] = [int(v) for v in run.kept.sum(1).tolist()]
        run.width[layer] = int(hidden.shape[1])
        if layer in self.score_layers:
            if self.mode == "mask":
                active = run.valid & ~(run.visual & ~run.kept)
            else:
                active = run.live
            run.qk[layer] = {"pe": kwargs["position_embeddings"], "active": active}
        if layer == len(self.layers) - 1:
            self.last_stats = {
                "n_visual": list(run.n_visual),
                "kept": dict(run.kept_per_layer),
                "width": dict(run.width),
            }
            self.last_scores = dict(run.scores)
            run.qk.clear()
        if not changed:
            return None
        if args:
            args = (hidden,) + tuple(args[1:])
        else:
            kwargs["hidden_states"] = hidden
        return args, kwargs

    def _cut(self, layer: int) -> None:
        """Score with layer ``layer - 1``'s attention and keep each sample's top visual tokens."""
        run = self._run
        src = layer - 1
        cap = run.qk.pop(src, None)
        if cap is None or "q" not in cap or "k" not in cap:
            raise RuntimeError(f"InLLMPruner: no q/k captured at layer {src}")
        attn = self.layers[src].self_attn
        q, k = cap["q"], cap["k"]
        b, n = q.shape[:2]
        hd = attn.head_dim
        q = q.view(b, n, -1, hd).transpose(1, 2)
        k = k.view(b, n, -1, hd).transpose(1, 2)
        cos, sin = cap["pe"]
        q, k = self._rope(q, k, cos, sin)
        active = cap["active"]
        options = {"tau": self.tau, "iters": self.iters} if self.score == "pagerank" else {}
        s = S.SCORES[self.score](q, k, scaling=attn.scaling, valid=active, **options)
        if self.mode == "remove":  # to original coordinates (dead slots go to a spare column)
            slots, live = run.slots, run.live
            full = torch.full((run.batch, run.length + 1), -1.0, device=s.device)
            full.scatter_(1, torch.where(live, slots, torch.full_like(slots, run.length)), s)
            s = full[:, : run.length]
        s = s.masked_fill(~run.visual, 1.0).masked_fill(~run.valid, -1.0)
        run.scores[src] = s
        cand = run.visual & run.kept
        ranked = torch.where(cand, s, torch.full_like(s, float("-inf")))
        order = torch.sort(ranked, dim=1, descending=True, stable=True).indices
        want = torch.tensor(run.counts[layer], device=s.device)
        take = torch.arange(run.length, device=s.device)[None, :] < want[:, None]
        new = torch.zeros_like(cand).scatter(1, order, take) & cand
        run.kept = new

    def _relayout(self, hidden: Tensor) -> Tensor:
        """New remove-mode layout after a cut; gathers ``hidden`` from the previous layout."""
        run = self._run
        b, length = run.batch, run.length
        dev = hidden.device
        live_tok = run.valid & (~run.visual | run.kept)
        width = int(live_tok.sum(1).max())
        pos = torch.arange(length, device=dev).expand(b, length)
        key = torch.where(live_tok, pos, torch.full_like(pos, -1))
        raw = torch.sort(key, dim=1).values[:, length - width :]  # dead (-1) first, then live positions in order
        live = raw >= 0
        slots = raw.clamp(min=0)
        inv = torch.full((b, length), -1, dtype=torch.long, device=dev)  # original position -> previous slot
        prev_slots, prev_live = run.slots, run.live
        prev_idx = torch.arange(prev_slots.shape[1], device=dev).expand_as(prev_slots)
        # dead slots of the previous layout all point at original index 0: amax lets a live entry win
        inv.scatter_reduce_(1, prev_slots, torch.where(prev_live, prev_idx, torch.full_like(prev_idx, -1)), "amax")
        src = inv.gather(1, slots).clamp(min=0)
        hidden = hidden.gather(1, src[..., None].expand(b, width, hidden.shape[-1]))
        run.slots, run.live = slots, live
        return hidden

    def _slice_kwargs(self, kwargs: dict, slots: Tensor, live: Tensor, hidden: Tensor) -> dict:
        b, width = slots.shape
        cos, sin = kwargs["position_embeddings"]

        def take(x: Tensor) -> Tensor:
            x = x.expand(b, *x.shape[1:])
            idx = slots.view(b, width, *([1] * (x.dim() - 2))).expand(b, width, *x.shape[2:])
            return x.gather(1, idx)

        kwargs["position_embeddings"] = (take(cos), take(sin))
        pid = kwargs.get("position_ids")
        if isinstance(pid, Tensor) and pid.dim() == 2:
            kwargs["position_ids"] = take(pid)
        kwargs["attention_mask"] = self._layout_mask(live, width, hidden)
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
        """Mask-mode prefill: the stock mask with the dropped keys masked for every other query."""
        length = dropped.shape[1]
        dev = dropped.device
        keep_col = ~dropped[:, None, None, :] | torch.eye(length, dtype=torch.bool, device=dev)[None, None]
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
                return None
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
