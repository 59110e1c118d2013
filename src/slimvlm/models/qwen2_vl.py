"""Qwen2-VL and Qwen2.5-VL: a ViT without [CLS] whose PatchMerger turns every 2×2 patch group into one LLM
token; images and videos as ``(t, h, w)`` grids; 3-D M-RoPE positions.

Reduction runs per temporal slice (``frames = t``, each ``(h/2)·(w/2)`` LLM tokens, ``grid = (h/2, w/2)``).
Kept tokens take their anchor's ``(t, h, w)`` position from ``get_rope_index`` on the unreduced sequence; text
positions do not change. ``tokens`` are always the stock ``get_image_features`` / ``get_video_features``
output; when a method needs more, the same single tower call runs with temporary hooks (removed afterwards,
also on errors):

Pre-projector path (PruMerge, PruMerge+, VisionZip are ``"pre_projector"`` methods). The PatchMerger is
``mlp(ln_q(x).view(-1, 4C))``. A forward pre-hook on ``visual.merger`` records ``x``; ``pre`` is
``ln_q(x).view(-1, 4C)`` (one ``4C`` row per LLM token, its 2×2 patches concatenated) and
``project(item, pre) = merger.mlp(pre)``, so ``project(pre)`` is the stock token. Methods that merge tokens
therefore average normalised 2×2 groups, which the merger's MLP then maps to LLM width.

Attention signals (pseudo-[CLS] deviation, docs/methods.md "Signals", as for LLaVA-OneVision's SigLIP): the tower
has no [CLS] token, so ``cls_attn`` is the "attention received" of the **last** vision block: a forward
pre-hook (``with_kwargs=True``) on ``visual.blocks[-1].attn`` records its input (the block's ``norm1`` output),
``cu_seqlens`` and ``position_embeddings`` (cos, sin); q and k are recomputed with the module's own ``qkv``
Linear and the model's own ``apply_rotary_pos_emb_vision``, and within every ``cu_seqlens`` chunk (one per
temporal slice of each image / video; a window for a window-attention block) the per-head softmax
``softmax(q kᵀ · d^-1/2)`` is averaged over queries (column mean) and over heads. This is computed outside
the tower, so its attention implementation (sdpa, eager, flash) does not matter. ``keys`` are the same
block's (post-RoPE) keys, all heads concatenated (``"full_width"`` style) or averaged over heads
(``"head_mean"`` style). The requested score layer is not used: Qwen2.5-VL's inner blocks use window
attention (only ``fullatt_block_indexes`` attend over the whole frame, the last one among them in the
released checkpoints), so both PruMerge and VisionZip read the last block here. There is no ``cls_feature``.

2×2 aggregation: patches are stored 2×2-merge-group contiguous (the merger's ``view(-1, 4C)`` relies on it),
so per LLM token ``cls_attn`` is the **sum** of its 4 patches' scores (``view(-1, 4).sum(-1)``; the scores of
one chunk's LLM tokens still sum to 1) and ``keys`` the **mean** of its 4 patches' keys.

Qwen2.5-VL permutes the patches inside the tower by ``window_index`` (in whole 2×2 groups) and restores the
order after the merger with ``argsort(window_index)``. The signals and ``pre`` are computed in the tower's
order, aggregated per 2×2 group, then un-permuted with the same ``argsort(window_index)`` (from the model's
own ``get_vision_window_index``); every call checks that the merger output recorded by a hook, put in that
order, is bit-identical to the stock tokens.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn

from .base import Adapter, SignalRequest, VisualItem

__all__ = ["Qwen2VLAdapter", "TowerCapture", "capture_tower", "attention_received_chunks"]

#: query rows × keys × heads processed at once by :func:`attention_received_chunks` (bounds the memory).
_BLOCK_ELEMENTS = 1 << 24


@dataclass
class TowerCapture:
    """What the hooks of :func:`capture_tower` recorded during one ``visual`` forward (tower order)."""

    attn_input: Tensor | None = None  # (N, C): the last block's attention input (its norm1 output)
    cu_seqlens: Tensor | None = None  # (chunks + 1,) the chunks that block attends within
    position_embeddings: tuple[Tensor, Tensor] | None = None  # (cos, sin), each (N, head_dim)
    merger_input: Tensor | None = None  # (N, C): the PatchMerger's input
    merger_output: Tensor | None = None  # (N / 4, D): the PatchMerger's output (before any un-permutation)
    calls: dict[str, int] = field(default_factory=dict)


def _arg(args: tuple, kwargs: dict, index: int, name: str) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else None


@contextmanager
def capture_tower(visual: nn.Module, *, attention: bool = True, merger: bool = True) -> Iterator[TowerCapture]:
    """Temporarily hook a Qwen2-VL / Qwen2.5-VL vision tower; yields a :class:`TowerCapture` filled by the
    next forward. The hooks are removed on exit, also on exceptions. If the tower runs several times inside
    the block, the last call wins."""
    cap = TowerCapture()
    handles = []

    def on_attn(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        cap.attn_input = _arg(args, kwargs, 0, "hidden_states")
        cap.cu_seqlens = _arg(args, kwargs, 1, "cu_seqlens")
        cap.position_embeddings = _arg(args, kwargs, 2, "position_embeddings")
        cap.calls["attn"] = cap.calls.get("attn", 0) + 1

    def on_merger_in(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        cap.merger_input = _arg(args, kwargs, 0, "x")
        cap.calls["merger"] = cap.calls.get("merger", 0) + 1

    def on_merger_out(_m: nn.Module, _args: tuple, out: Tensor) -> None:
        cap.merger_output = out

    try:
        if attention:
            handles.append(visual.blocks[-1].attn.register_forward_pre_hook(on_attn, with_kwargs=True))
        if merger:
            handles.append(visual.merger.register_forward_pre_hook(on_merger_in, with_kwargs=True))
            handles.append(visual.merger.register_forward_hook(on_merger_out))
        yield cap
    finally:
        for h in handles:
            h.remove()


def attention_received_chunks(q: Tensor, k: Tensor, cu_seqlens: Tensor) -> Tensor:
    """Pseudo-[CLS] score ``(N,)`` per token: within each chunk ``[cu[i], cu[i+1])``, the column mean over the
    chunk's queries of the per-head softmax ``softmax(q kᵀ · d^-1/2)``, averaged over heads. ``q``, ``k``:
    ``(N, H, d)`` (after RoPE). Computed in float32, a block of query rows at a time."""
    n, heads, d = q.shape
    scale = d**-0.5
    out = torch.zeros(n, dtype=torch.float32, device=q.device)
    bounds = cu_seqlens.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e <= s:
            continue
        qc = q[s:e].float().transpose(0, 1)  # (H, L, d)
        kc = k[s:e].float().transpose(0, 1)
        length = e - s
        rows = max(1, _BLOCK_ELEMENTS // (length * heads))
        acc = torch.zeros(length, dtype=torch.float32, device=q.device)
        for r in range(0, length, rows):
            attn = ((qc[:, r : r + rows] @ kc.transpose(1, 2)) * scale).softmax(-1)  # (H, rows, L)
            acc += attn.sum(dim=(0, 1))
        out[s:e] = acc / (length * heads)
    return out


class Qwen2VLAdapter(Adapter):
    model_classes = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")
    containers = {"image": "list", "video": "list"}
    positions = "mrope"
    encoder_keys = ("pixel_values", "pixel_values_videos", "image_grid_thw", "video_grid_thw", "second_per_grid_ts")
    has_cls = False
    attention_signals = True  # pseudo-[CLS] "attention received" of the last vision block (see module doc)

    @property
    def visual(self) -> nn.Module:
        return self.inner.visual

    @property
    def merge_unit(self) -> int:
        return int(self.config.vision_config.spatial_merge_size) ** 2

    def check_inputs(self, inputs: Mapping[str, Any]) -> None:
        super().check_inputs(inputs)
        has_visual = inputs.get("pixel_values") is not None or inputs.get("pixel_values_videos") is not None
        if has_visual and inputs.get("mm_token_type_ids") is None:
            raise ValueError(
                f"{type(self.model).__name__} needs mm_token_type_ids (1 = image, 2 = video placeholders) to build its "
                "3-D positions; the stock generate() silently falls back to 1-D positions without them. Pass the "
                "processor's full output."
            )
        for pix, grid in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw")):
            if inputs.get(pix) is not None and inputs.get(grid) is None:
                raise ValueError(f"{type(self.model).__name__}: {pix} given without {grid}")
            thw = inputs.get(grid)
            if isinstance(thw, Tensor) and thw.numel() and bool((thw <= 0).any()):
                what = "a video of 0 frames" if grid == "video_grid_thw" and bool((thw[:, 0] <= 0).any()) else "an empty grid"
                raise ValueError(f"{type(self.model).__name__}: {grid} = {thw.tolist()} holds {what}; each (t, h, w) must be >= 1")

    # -- the tower's token order ---------------------------------------------------------------------------

    def unpermute_index(self, grid_thw: Tensor) -> Tensor | None:
        """For Qwen2.5-VL, ``argsort(window_index)``: LLM-token order ← tower order of the merged tokens (the
        stock tower's own restoration); None for Qwen2-VL (no permutation)."""
        visual = self.visual
        if not hasattr(visual, "fullatt_block_indexes"):
            return None
        helper = getattr(sys.modules[type(visual).__module__], "get_vision_window_index")
        window_index, _ = helper(
            grid_thw,
            spatial_merge_size=visual.spatial_merge_size,
            window_size=visual.window_size,
            patch_size=visual.patch_size,
        )
        return torch.argsort(window_index)

    def _to_llm_order(self, x: Tensor, rev: Tensor | None) -> Tensor:
        return x if rev is None else x[rev.to(x.device)]

    # -- signals -------------------------------------------------------------------------------------------

    def patch_signals(self, cap: TowerCapture) -> tuple[Tensor, Tensor]:
        """Per patch, in tower order: ``(cls_attn (N,), keys (N, H, d))`` of the last block (float32)."""
        if cap.attn_input is None or cap.cu_seqlens is None or cap.position_embeddings is None:
            raise RuntimeError("the hook on the last vision block did not fire during the tower forward")
        attn = self.visual.blocks[-1].attn
        module = sys.modules[type(attn).__module__]
        rope = getattr(module, "apply_rotary_pos_emb_vision")
        hidden = cap.attn_input
        n = hidden.shape[0]
        q, k, _ = attn.qkv(hidden).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = cap.position_embeddings
        q, k = rope(q, k, cos, sin)
        return attention_received_chunks(q, k, cap.cu_seqlens), k.float()

    def token_signals(self, cap: TowerCapture, rev: Tensor | None, style: str) -> dict[str, Tensor]:
        """Per LLM token, in LLM order: ``cls_attn`` (sum of the 2×2 group's scores) and ``keys`` (mean of
        its keys; all heads concatenated for ``"full_width"``, averaged over heads for ``"head_mean"``)."""
        score, keys = self.patch_signals(cap)
        u = self.merge_unit
        n, heads, d = keys.shape
        if n % u:
            raise RuntimeError(f"{n} patches do not form whole {u}-patch merge groups")
        cls_attn = score.view(-1, u).sum(-1)
        keys = keys.view(-1, u, heads, d).mean(1)  # (n/u, H, d)
        keys = keys.flatten(1) if style == "full_width" else keys.mean(1)
        return {"cls_attn": self._to_llm_order(cls_attn, rev), "keys": self._to_llm_order(keys, rev)}

    def pre_features(self, cap: TowerCapture, rev: Tensor | None) -> Tensor:
        """``ln_q(x).view(-1, 4C)`` of the merger input ``x``, in LLM-token order."""
        if cap.merger_input is None:
            raise RuntimeError("the hook on the vision merger did not fire during the tower forward")
        merger = self.visual.merger
        return self._to_llm_order(merger.ln_q(cap.merger_input).view(-1, merger.hidden_size), rev)

    # -- encode / project ----------------------------------------------------------------------------------

    def _features(self, modality: str):
        """The stock feature function and the grid key of ``modality``."""
        if modality == "image":
            return self.inner.get_image_features, "image_grid_thw"
        return self.inner.get_video_features, "video_grid_thw"

    def encode_stock(self, modality: str, inputs: Mapping[str, Any]) -> list[VisualItem]:
        fn, grid_key = self._features(modality)
        grids = inputs[grid_key]
        out = fn(self.pixels(inputs, modality), grids, return_dict=True).pooler_output
        merge = self.config.vision_config.spatial_merge_size
        return [
            VisualItem(modality, tokens, frames=int(t), grid=(h // merge, w // merge))
            for tokens, (t, h, w) in zip(out, grids.tolist())
        ]

    def encode_hooked(
        self, modality: str, inputs: Mapping[str, Any], *, need_pre: bool, signals: SignalRequest | None
    ) -> list[VisualItem]:
        fn, grid_key = self._features(modality)
        grids = inputs[grid_key]
        merge = self.config.vision_config.spatial_merge_size
        with capture_tower(self.visual, attention=signals is not None, merger=True) as cap:
            out = fn(self.pixels(inputs, modality), grids, return_dict=True).pooler_output
        if cap.calls.get("merger") != 1 or (signals is not None and cap.calls.get("attn") != 1):
            raise RuntimeError(f"expected one vision-tower call per modality, the hooks saw {cap.calls}")
        rev = self.unpermute_index(grids)
        stock = torch.cat(list(out))
        if cap.merger_output is None or not torch.equal(self._to_llm_order(cap.merger_output, rev), stock):
            raise RuntimeError(
                f"{self.name}: the merger output does not match the stock tokens in the un-permuted order; the vision "
                "tower's token order is not the one slimvlm expects"
            )
        pre = self.pre_features(cap, rev) if need_pre else None
        sig = self.token_signals(cap, rev, signals.style) if signals is not None else {}
        items: list[VisualItem] = []
        start = 0
        for tokens, (t, h, w) in zip(out, grids.tolist()):
            span = slice(start, start + tokens.shape[0])
            start = span.stop
            items.append(
                VisualItem(
                    modality, tokens, pre=None if pre is None else pre[span],
                    signals={name: x[span] for name, x in sig.items()}, frames=int(t), grid=(h // merge, w // merge),
                )
            )
        return items

    def project(self, item: VisualItem, pre: Tensor) -> Tensor:
        """``merger.mlp`` on reduced ``ln_q``-normalised 2×2 groups ``(m, 4C)`` → ``(m, D)``."""
        mlp = self.visual.merger.mlp
        ref = next(mlp.parameters())
        return mlp(pre.to(device=ref.device, dtype=ref.dtype))

    def mrope_positions(self, inputs: Mapping[str, Any]) -> Tensor:
        """``(3, B, L)`` (t, h, w) positions of the unreduced sequence, from the model's own ``get_rope_index``."""
        kwargs = dict(
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"),
            attention_mask=inputs.get("attention_mask"),
        )
        if inputs.get("second_per_grid_ts") is not None:
            kwargs["second_per_grid_ts"] = inputs["second_per_grid_ts"]
        with torch.no_grad():
            pos, _ = self.inner.get_rope_index(inputs["input_ids"], **kwargs)
        return pos
