"""LLaVA-NeXT-Video (``LlavaNextVideoForConditionalGeneration``): LLaVA-NeXT for images (the anyres code of
:mod:`.llava_next`, unchanged) plus videos through a ``vision_resampler``.

Videos: every frame's patch features (``hidden_states[vision_feature_layer]``, [CLS] dropped by strategy
``"default"``) go through ``vision_resampler`` (2-D pooling with ``spatial_pool_stride``, before the
projector) and the projector; no newline. One item per video = ``F`` frames of ``(h/s)·(w/s)`` tokens,
reduced per frame (``frames = F``), nothing protected.

Pre-projector methods reduce the *resampled* pre-projector features (what the projector really sees), so
``project(pre)`` reproduces the stock tokens. Their per-patch signals ([CLS] attention, keys) are mapped onto
the resampled tokens by average pooling with the same stride (attention mass kept: a pooled token gets the
[CLS] attention of the patches it covers); for ``spatial_pool_mode="max"`` / ``"conv"`` that averaging is
an approximation of what the resampler does to the features.

The container is ``"list_flat"``: the stock forward ``.flatten(0, 1)``s each item of the video list, so each
video's reduced tokens go in as ``(m_i, 1, D)``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch.nn.functional as F
from torch import Tensor

from .base import SignalRequest, VisualItem, resample_signals
from .llava_next import LlavaNextAdapter

__all__ = ["LlavaNextVideoAdapter"]


class LlavaNextVideoAdapter(LlavaNextAdapter):
    model_classes = ("LlavaNextVideoForConditionalGeneration",)
    containers = {"image": "list", "video": "list_flat"}
    encoder_keys = ("pixel_values", "image_sizes", "pixel_values_videos")
    has_cls = True

    def check_inputs(self, inputs: Mapping[str, Any]) -> None:
        super().check_inputs(inputs)
        if inputs.get("pixel_values_videos") is not None:
            self.check_video_pixels(inputs["pixel_values_videos"])

    @property
    def stride(self) -> int:
        return int(self.config.spatial_pool_stride)

    def pooled_grid(self) -> tuple[int, int]:
        side = self.tile_side // self.stride
        return side, side

    def _pool(self, maps: Tensor) -> Tensor:
        return F.avg_pool2d(maps, kernel_size=self.stride, stride=self.stride)

    def encode_stock(self, modality: str, inputs: Mapping[str, Any]) -> list[VisualItem]:
        if modality == "image":
            return super().encode_stock(modality, inputs)
        pvv = inputs["pixel_values_videos"]
        f = pvv.shape[1]
        out = self.inner.get_video_features(pixel_values_videos=pvv, **self.stock_kwargs(inputs), return_dict=True)
        tokens = out.pooler_output  # (V, F·m, D)
        return [VisualItem("video", t, frames=f, grid=self._grid(t, f, self.pooled_grid())) for t in tokens]

    def encode_hooked(
        self, modality: str, inputs: Mapping[str, Any], *, need_pre: bool, signals: SignalRequest | None
    ) -> list[VisualItem]:
        if modality == "image":
            return super().encode_hooked(modality, inputs, need_pre=need_pre, signals=signals)
        inner = self.inner
        grid = self.pooled_grid()
        sig, v, f = self.frame_signals(inner.vision_tower, inputs, signals)
        self.check_strategy(inputs, sig.has_cls)
        pre = inner.vision_resampler(sig.features)  # (V·F, m, C'), before the projector as in the stock model
        m = pre.shape[1]
        tokens = inner.multi_modal_projector(pre).unflatten(0, (v, f)).flatten(1, 2)
        pre = pre.unflatten(0, (v, f)).flatten(1, 2)
        d = sig.as_dict(style=signals.style) if signals is not None else {}
        frame_sig = resample_signals(d, sig.grid, self._pool)
        items = []
        for i in range(v):
            item_sig = {name: x[i * f : (i + 1) * f].flatten(0, 1) for name, x in frame_sig.items()}
            for name, x in item_sig.items():
                if x.shape[0] != f * m:  # pragma: no cover - guards the signal pooling
                    raise RuntimeError(f"{name}: pooled to {x.shape[0]} tokens, the resampler gives {f * m}")
            items.append(
                VisualItem("video", tokens[i], pre=pre[i], signals=item_sig, frames=f, grid=self._grid(tokens[i], f, grid))
            )
        return items

    @staticmethod
    def _grid(tokens: Tensor, frames: int, grid: tuple[int, int]) -> tuple[int, int] | None:
        return grid if grid[0] * grid[1] * frames == tokens.shape[0] else None
