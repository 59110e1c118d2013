"""LLaVA-1.5 (``LlavaForConditionalGeneration``): one CLIP (or SigLIP) tower, one MLP projector, one run of
``n`` placeholders per image (576 for CLIP-L/14-336).

Features are ``hidden_states[vision_feature_layer]`` with [CLS] dropped (strategy ``"default"``); PruMerge's
signals come from the last layer's q/k over those features (algorithms.md §1.2), VisionZip's from layer -2.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from torch import Tensor

from .base import Adapter, SignalRequest, VisualItem, per_token_signals


class LlavaAdapter(Adapter):
    model_classes = ("LlavaForConditionalGeneration",)
    containers = {"image": "list"}
    encoder_keys = ("pixel_values", "image_sizes")

    @property
    def feature_layer(self) -> int:
        layer = self.config.vision_feature_layer
        if not isinstance(layer, int):
            raise ValueError(
                f"vision_feature_layer={layer!r}: slimvlm reduces one selected layer; multi-layer features are not supported"
            )
        return layer

    def encode(self, inputs: Mapping[str, Any], *, need_pre: bool, signals: SignalRequest | None) -> list[VisualItem]:
        pixel_values = inputs.get("pixel_values")
        if pixel_values is None:
            return []
        inner = self.inner
        if not need_pre and signals is None:
            out = inner.get_image_features(pixel_values=pixel_values, image_sizes=inputs.get("image_sizes"), return_dict=True)
            return [self._item(t) for t in out.pooler_output]
        strategy = self.config.vision_feature_select_strategy
        sig = self.tower_signals(inner.vision_tower, pixel_values, self.feature_layer, signals)
        if strategy == "full" and sig.has_cls:
            raise ValueError("vision_feature_select_strategy='full' keeps [CLS] as a visual token; not supported for reduction")
        pre = sig.features  # [CLS] already removed by capture_signals
        tokens = inner.multi_modal_projector(pre)
        items = []
        for b in range(pre.shape[0]):
            item = self._item(tokens[b], pre[b])
            if signals is not None:
                item.signals = per_token_signals(sig, signals.style, b)
            items.append(item)
        return items

    def _item(self, tokens: Tensor, pre: Tensor | None = None) -> VisualItem:
        n = tokens.shape[0]
        side = math.isqrt(n)
        return VisualItem("image", tokens, pre=pre, grid=(side, side) if side * side == n else None)

    def project(self, item: VisualItem, pre: Tensor) -> Tensor:
        return self.inner.multi_modal_projector(pre)
