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

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import SignalRequest, VisualItem
from .llava_next import (
    LlavaNextAdapter,
    check_strategy,
    check_video_pixels,
    resample_signals,
    select_strategy,
    single_layer,
    stock_kwargs,
)

__all__ = ["LlavaNextVideoAdapter"]


class LlavaNextVideoAdapter(LlavaNextAdapter):
    model_classes = ("LlavaNextVideoForConditionalGeneration",)
    containers = {"image": "list", "video": "list_flat"}
    encoder_keys = ("pixel_values", "image_sizes", "pixel_values_videos")
    has_cls = True

    def check_inputs(self, inputs: Mapping[str, Any]) -> None:
        super().check_inputs(inputs)
        if inputs.get("pixel_values_videos") is not None:
            check_video_pixels(type(self.model).__name__, inputs["pixel_values_videos"])

    @property
    def stride(self) -> int:
        return int(self.config.spatial_pool_stride)

    def pooled_grid(self) -> tuple[int, int]:
        side = self.tile_side // self.stride
        return side, side

    def _pool(self, maps: Tensor) -> Tensor:
        return F.avg_pool2d(maps, kernel_size=self.stride, stride=self.stride)

    def encode_videos(
        self, inputs: Mapping[str, Any], *, need_pre: bool, signals: SignalRequest | None
    ) -> list[VisualItem]:
        pvv = inputs.get("pixel_values_videos")
        if pvv is None:
            return []
        inner = self.inner
        v, f = pvv.shape[:2]
        grid = self.pooled_grid()
        if not need_pre and signals is None:
            out = inner.get_video_features(pixel_values_videos=pvv, **stock_kwargs(self, inputs), return_dict=True)
            tokens = out.pooler_output  # (V, F·m, D)
            return [VisualItem("video", tokens[i], frames=f, grid=self._grid(tokens[i], f, grid)) for i in range(v)]
        frames = pvv.reshape(v * f, *pvv.shape[2:])
        sig = self.tower_signals(inner.vision_tower, frames, single_layer(self, inputs), signals)
        check_strategy(self, select_strategy(self, inputs), sig.has_cls)
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

    def encode(self, inputs: Mapping[str, Any], *, need_pre: bool, signals: SignalRequest | None) -> list[VisualItem]:
        return self.encode_images(inputs, need_pre=need_pre, signals=signals) + self.encode_videos(
            inputs, need_pre=need_pre, signals=signals
        )

    def project(self, item: VisualItem, pre: Tensor) -> Tensor:
        return self.inner.multi_modal_projector(pre)
