"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): SigLIP tower (no [CLS]), anyres images like
LLaVA-NeXT, and videos as per-frame 2× bilinearly pooled tokens followed by one ``image_newline``.

Images (shared with :mod:`.llava_next`):

- one item per image = the packed sequence of the stock ``get_image_features``; ``image_newline`` rows are
  protected. ``batch_num_images`` is respected: a prompt with several images gets only the base tile (plus
  one newline) per image, as the stock model and its processor do; it is required when a prompt holds
  more than one image (the stock model would silently encode every tile and the counts would not match).
- ``anyres_max_9``: when the unpadded high-resolution grid exceeds 9 tiles' worth of patches (×1.1), the
  stock packer *bilinearly downscales* the projected grid. The index trick then gives non-integer sources,
  so those tokens have no pre-projector feature. For such an image, pre-projector methods (PruMerge,
  PruMerge+, VisionZip) run on its LLM-width tokens (``pre = tokens``, ``project`` = identity) with the
  signals resampled by the same packer (bilinear; [CLS]-attention mass kept). Images that are not
  downscaled get the exact pre-projector path.

Videos: ``get_video_features`` gives, per video, ``F`` frames of ``ceil(h/2)·ceil(w/2)`` tokens (bilinear
pooling *after* the projector) and one ``image_newline`` at the end (protected). Reduction is per frame
(``frames = F``). Because pooling follows the projector, pre-projector methods run on the pooled LLM-width
tokens (``pre = tokens``), with the per-patch signals pooled by the same bilinear interpolation. The
container is ``"flat"``: the stock forward ``.flatten(0, 1)``s the video features, so the reduced tokens of
all videos go in as ``(Σm, 1, D)``.

No [CLS] (deviation, docs/methods.md, "Signals"): PruMerge / PruMerge+ / VisionZip use the pseudo-[CLS] score
"attention received" (column mean of the head-mean attention of the scoring layer) that
:func:`~slimvlm.signals.capture_signals` gives for SigLIP; VisionZip gets no ``cls_feature``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import SignalRequest, VisualItem, resample_signals
from .llava_next import LlavaNextAdapter

__all__ = ["LlavaOnevisionAdapter"]


def placeholder_runs_per_row(input_ids: Tensor, token_id: int) -> list[int]:
    """Number of separate runs of ``token_id`` in each row."""
    is_ph = input_ids == token_id
    starts = is_ph & ~torch.nn.functional.pad(is_ph, (1, 0))[:, :-1]
    return starts.sum(1).tolist()


class LlavaOnevisionAdapter(LlavaNextAdapter):
    model_classes = ("LlavaOnevisionForConditionalGeneration",)
    containers = {"image": "list", "video": "flat"}
    encoder_keys = ("pixel_values", "image_sizes", "batch_num_images", "pixel_values_videos", "image_sizes_videos")
    has_cls = False

    # -- inputs ------------------------------------------------------------------------------------------

    def check_inputs(self, inputs: Mapping[str, Any]) -> None:
        super().check_inputs(inputs)
        name = self.name
        pv = inputs.get("pixel_values")
        if pv is not None:
            bni = inputs.get("batch_num_images")
            if bni is None:
                runs = placeholder_runs_per_row(inputs["input_ids"], self.config.image_token_id)
                if any(r > 1 for r in runs):
                    raise ValueError(
                        f"{name}: a prompt holds several images but batch_num_images is missing; the stock model then "
                        "encodes every anyres tile instead of the base tile only. Pass the processor's full output "
                        "(batch_num_images = images per prompt)."
                    )
            else:
                total = int(torch.as_tensor(bni).sum())
                if total != len(inputs["image_sizes"]):
                    raise ValueError(
                        f"{name}: batch_num_images sums to {total} but there are {len(inputs['image_sizes'])} images"
                    )
        if inputs.get("pixel_values_videos") is not None:
            self.check_video_pixels(inputs["pixel_values_videos"])

    # -- images: like LLaVA-NeXT, with batch_num_images and anyres_max ------------------------------------

    def _need_patching(self, inputs: Mapping[str, Any]) -> list[bool]:
        bni = inputs.get("batch_num_images")
        if bni is None:
            return [True] * len(inputs["image_sizes"])
        return [int(n) == 1 for n in bni for _ in range(int(n))]

    def tile_counts(self, inputs: Mapping[str, Any]) -> list[int]:
        full = super().tile_counts(inputs)
        return [n if patch else 1 for n, patch in zip(full, self._need_patching(inputs))]

    def image_kwargs(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        kw = super().image_kwargs(inputs)
        kw["batch_num_images"] = inputs.get("batch_num_images")
        return kw

    def pack(self, feats: Sequence[Tensor], image_sizes: Any, newline: Tensor | None, inputs: Mapping[str, Any]) -> list[Tensor]:
        packed, _ = self.inner.pack_image_features(
            list(feats), image_sizes, image_newline=newline, vision_aspect_ratio=self.config.vision_aspect_ratio
        )
        return list(packed)

    # -- videos --------------------------------------------------------------------------------------------

    def pooled_grid(self) -> tuple[int, int]:
        side = self.tile_side
        return math.ceil(side / 2), math.ceil(side / 2)

    def _pool(self, maps: Tensor) -> Tensor:
        """The stock ``apply_pooling`` interpolation on ``(B, ch, h, w)`` maps."""
        return F.interpolate(maps, size=list(self.pooled_grid()), mode="bilinear")

    def encode_stock(self, modality: str, inputs: Mapping[str, Any]) -> list[VisualItem]:
        if modality == "image":
            return super().encode_stock(modality, inputs)
        pvv = inputs["pixel_values_videos"]
        f = pvv.shape[1]
        out = self.inner.get_video_features(pixel_values_videos=pvv, **self.stock_kwargs(inputs), return_dict=True)
        tokens = out.pooler_output  # (V, F·m + 1, D)
        protected = self._video_protected(f).to(tokens.device)
        return [VisualItem("video", t, protected=protected, frames=f, grid=self.pooled_grid()) for t in tokens]

    def _video_protected(self, frames: int) -> Tensor:
        """Per video token: the closing ``image_newline`` is protected."""
        gh, gw = self.pooled_grid()
        protected = torch.zeros(frames * gh * gw + 1, dtype=torch.bool)
        protected[-1] = True
        return protected

    def encode_hooked(
        self, modality: str, inputs: Mapping[str, Any], *, need_pre: bool, signals: SignalRequest | None
    ) -> list[VisualItem]:
        if modality == "image":
            return super().encode_hooked(modality, inputs, need_pre=need_pre, signals=signals)
        inner = self.inner
        gh, gw = self.pooled_grid()
        sig, v, f = self.frame_signals(inner.vision_tower, inputs, signals)
        self.check_strategy(inputs, sig.has_cls)
        proj = inner.multi_modal_projector(sig.features)
        pooled = inner.apply_pooling(proj).reshape(v, f * gh * gw, -1)
        newline = inner.image_newline[None, None, :].repeat(v, 1, 1).to(pooled.device)
        tokens = torch.cat((pooled, newline), dim=1)
        protected = self._video_protected(f).to(tokens.device)
        d = sig.as_dict(style=signals.style) if signals is not None else {}
        frame_sig = resample_signals(d, sig.grid, self._pool)
        items = []
        for i in range(v):
            item_sig: dict[str, Any] = {}
            for name, x in frame_sig.items():
                x = x[i * f : (i + 1) * f].flatten(0, 1)  # (F·m[, Ck])
                item_sig[name] = torch.cat([x, x.new_zeros(1, *x.shape[1:])])  # the newline row
            # pooling follows the projector: the pooled LLM-width tokens are what a pre-projector method reduces
            items.append(
                VisualItem(
                    "video", tokens[i], pre=tokens[i], signals=item_sig, protected=protected, frames=f,
                    grid=(gh, gw), projected=True,
                )
            )
        return items
