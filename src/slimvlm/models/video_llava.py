"""Video-LLaVA (``VideoLlavaForConditionalGeneration``): two CLIP towers (``image_tower``, ``video_tower``)
sharing one projector.

- Images are LLaVA-1.5 images: ``hidden_states[vision_feature_layer]`` without [CLS] (strategy
  ``"default"``), one square grid per image, no protected tokens.
- Videos: the stock ``get_video_features`` keeps every frame's [CLS] as a visual token (no select strategy):
  a video is ``F × (1 + p)`` tokens, frame by frame with [CLS] first. Reduction is per frame (``frames = F``)
  over the ``p`` patches; each frame's [CLS] token is **protected**: kept unchanged at its place (first in its
  frame), so the LLM still gets one global token per frame, as in the stock model. PruMerge / VisionZip score
  the patches with *that frame's* [CLS] attention; VisionZip gets no ``cls_feature`` for videos (the [CLS]
  is already kept, prepending it again would duplicate it).
- Both containers are ``"flat"``: the stock forward ``.flatten(0, 1)``s image and video features, so the
  reduced tokens go in as ``(Σm, 1, D)``.

``pixel_values_images`` (deprecated in transformers 5.23) is accepted as ``pixel_values``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from .base import Adapter, SignalRequest, VisualItem, clip_like_item

__all__ = ["VideoLlavaAdapter"]


class VideoLlavaAdapter(Adapter):
    model_classes = ("VideoLlavaForConditionalGeneration",)
    containers = {"image": "flat", "video": "flat"}
    encoder_keys = ("pixel_values", "pixel_values_images", "pixel_values_videos")
    has_cls = True

    def pixels(self, inputs: Mapping[str, Any], modality: str) -> Any:
        if modality == "image":
            pv = inputs.get("pixel_values")
            return inputs.get("pixel_values_images") if pv is None else pv
        return super().pixels(inputs, modality)

    def check_inputs(self, inputs: Mapping[str, Any]) -> None:
        super().check_inputs(inputs)
        name = self.name
        if inputs.get("pixel_values") is not None and inputs.get("pixel_values_images") is not None:
            raise ValueError(f"{name}: pass pixel_values or the deprecated pixel_values_images, not both")
        pv = self.pixels(inputs, "image")
        if pv is not None and (not isinstance(pv, Tensor) or pv.dim() != 4):
            raise ValueError(f"{name}: pixel_values must have shape (images, 3, H, W), got {getattr(pv, 'shape', pv)}")
        if inputs.get("pixel_values_videos") is not None:
            self.check_video_pixels(inputs["pixel_values_videos"])

    @property
    def patches_per_frame(self) -> int:
        vc = self.config.vision_config
        return (vc.image_size // vc.patch_size) ** 2

    def encode_stock(self, modality: str, inputs: Mapping[str, Any]) -> list[VisualItem]:
        inner = self.inner
        if modality == "image":
            out = inner.get_image_features(pixel_values=self.pixels(inputs, "image"), **self.stock_kwargs(inputs), return_dict=True)
            return [clip_like_item("image", t) for t in out.pooler_output]
        pvv = inputs["pixel_values_videos"]
        v, f = pvv.shape[:2]
        kw = {"vision_feature_layer": inputs["vision_feature_layer"]} if inputs.get("vision_feature_layer") is not None else {}
        per_frame = inner.get_video_features(pixel_values_videos=pvv, **kw, return_dict=True).pooler_output  # (V·F, [1 +] p, D)
        has_cls = per_frame.shape[1] == self.patches_per_frame + 1
        tokens = per_frame.reshape(v, f * per_frame.shape[1], -1)
        return [self._video_item(tokens[i], f, has_cls) for i in range(v)]

    def encode_hooked(
        self, modality: str, inputs: Mapping[str, Any], *, need_pre: bool, signals: SignalRequest | None
    ) -> list[VisualItem]:
        inner = self.inner
        if modality == "image":
            return self.clip_images(inner.image_tower, self.pixels(inputs, "image"), inputs, signals)
        sig, v, f = self.frame_signals(inner.video_tower, inputs, signals)
        feats = sig.features  # (V·F, p, C) patches
        full = torch.cat([sig.cls_feature[:, None], feats], 1) if sig.has_cls else feats
        per_frame = inner.multi_modal_projector(full)  # as the stock model: [CLS] kept
        t = per_frame.shape[1]
        tokens = per_frame.reshape(v, f * t, -1)
        pre = full.reshape(v, f * t, -1)
        d = sig.as_dict(style=signals.style) if signals is not None else {}
        items = []
        for i in range(v):
            item = self._video_item(tokens[i], f, sig.has_cls, pre[i])
            for name in ("cls_attn", "keys"):
                x = d.get(name)
                if x is None:
                    continue
                x = x[i * f : (i + 1) * f]  # (F, p[, Ck])
                if sig.has_cls:  # a zero signal in each frame's [CLS] slot (protected, never scored)
                    x = torch.cat([x.new_zeros(f, 1, *x.shape[2:]), x], 1)
                item.signals[name] = x.flatten(0, 1)
            items.append(item)
        return items

    def _video_item(self, tokens: Tensor, frames: int, has_cls: bool, pre: Tensor | None = None) -> VisualItem:
        t = tokens.shape[0] // frames
        protected = None
        if has_cls:
            protected = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
            protected[::t] = True  # each frame's [CLS], first in its frame
        side = int(round((t - int(has_cls)) ** 0.5))
        grid = (side, side) if side * side == t - int(has_cls) else None
        return VisualItem("video", tokens, pre=pre, protected=protected, frames=frames, grid=grid)
