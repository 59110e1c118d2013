"""Qwen2-VL and Qwen2.5-VL: a ViT without [CLS] whose PatchMerger turns every 2×2 patch group into one LLM
token; images and videos as ``(t, h, w)`` grids; 3-D M-RoPE positions (transformers5.md §2.3).

Reduction runs on the merged LLM-width tokens, per temporal slice (``t`` frames of ``(h/2)·(w/2)`` tokens).
Kept tokens take their anchor's ``(t, h, w)`` position from ``get_rope_index`` on the unreduced sequence; text
positions do not change. Methods that need [CLS] attention are refused (the tower has no [CLS] and no
pseudo-[CLS] signal is implemented for it yet).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from .base import Adapter, SignalRequest, VisualItem, no_signal_message


class Qwen2VLAdapter(Adapter):
    model_classes = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")
    containers = {"image": "list", "video": "list"}
    positions = "mrope"
    encoder_keys = ("pixel_values", "pixel_values_videos", "image_grid_thw", "video_grid_thw", "second_per_grid_ts")
    has_cls = False
    attention_signals = False

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

    def encode(self, inputs: Mapping[str, Any], *, need_pre: bool, signals: SignalRequest | None) -> list[VisualItem]:
        if signals is not None:
            raise ValueError(no_signal_message(self))
        merge = self.config.vision_config.spatial_merge_size
        items: list[VisualItem] = []
        for modality, pix, grid_key, fn in (
            ("image", "pixel_values", "image_grid_thw", self.inner.get_image_features),
            ("video", "pixel_values_videos", "video_grid_thw", self.inner.get_video_features),
        ):
            if inputs.get(pix) is None:
                continue
            grids = inputs[grid_key]
            out = fn(inputs[pix], grids, return_dict=True).pooler_output
            for tokens, (t, h, w) in zip(out, grids.tolist()):
                items.append(VisualItem(modality, tokens, frames=int(t), grid=(h // merge, w // merge)))
        # the stock forward scatters all images first, then all videos (two separate masks)
        return items

    def project(self, item: VisualItem, pre: Tensor) -> Tensor:  # pragma: no cover - no pre-projector path
        raise NotImplementedError("Qwen2-VL reductions run on the merged tokens")

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
