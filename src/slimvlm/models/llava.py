"""LLaVA-1.5 (``LlavaForConditionalGeneration``): one CLIP (or SigLIP) tower, one MLP projector, one run of
``n`` placeholders per image (576 for CLIP-L/14-336).

Features are ``hidden_states[vision_feature_layer]`` with [CLS] dropped (strategy ``"default"``); the tower
signals come from the layer the method declares (PruMerge: the last layer's q/k over those features;
VisionZip: layer -2).
"""

from __future__ import annotations

from typing import Any, Mapping

from .base import Adapter, SignalRequest, VisualItem, clip_like_item


class LlavaAdapter(Adapter):
    model_classes = ("LlavaForConditionalGeneration",)
    containers = {"image": "list"}
    encoder_keys = ("pixel_values", "image_sizes")

    def encode_stock(self, modality: str, inputs: Mapping[str, Any]) -> list[VisualItem]:
        out = self.inner.get_image_features(
            pixel_values=inputs["pixel_values"], image_sizes=inputs.get("image_sizes"), **self.stock_kwargs(inputs),
            return_dict=True,
        )
        return [clip_like_item("image", t) for t in out.pooler_output]

    def encode_hooked(
        self, modality: str, inputs: Mapping[str, Any], *, need_pre: bool, signals: SignalRequest | None
    ) -> list[VisualItem]:
        return self.clip_images(self.inner.vision_tower, inputs["pixel_values"], inputs, signals)
