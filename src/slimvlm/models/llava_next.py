"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): "anyres" images; LLaVA-OneVision and LLaVA-NeXT-Video
extend this adapter.

One image = a base tile (the whole image resized to the tower's input) plus a grid of high-resolution tiles;
all tiles go through the vision tower as one batch (each tile has its own [CLS]) and the projector, then the
model's ``pack_image_features`` builds the sequence the LLM sees: the base tile's ``n`` tokens, then the
high-resolution grid unpadded to the image's aspect ratio, row by row, with ``image_newline`` after every row.

Design (see docs/architecture.md):

- **One item per image** = exactly that packed sequence (bit-identical to the stock ``get_image_features``).
  The ``image_newline`` rows are ``protected``: the pipeline keeps them unchanged at their places and reduces
  the other tokens of the image as one set.
- **Where each packed token comes from** is learnt by running the model's *own* ``pack_image_features`` on an
  index tensor (``tile·n + patch`` as a 1-channel feature, ``image_newline = -1``). That gives the protected
  mask and tells whether the packing is a pure permutation (LLaVA-NeXT always; OneVision unless its
  ``anyres_max_9`` bilinear downscale kicks in, which makes the index non-integer).
- **Pre-projector methods** (PruMerge, PruMerge+, VisionZip) need per-token [CLS] attention, keys and the
  pre-projector features. They come from :func:`~slimvlm.signals.capture_signals` on all tiles at once (one
  tower batch; every tile's patches get the attention of *their own tile's* [CLS]) and are put in packed
  order by the same ``pack_image_features`` (newline rows are zeros and never reach a method). VisionZip's
  ``cls_feature`` is the base tile's [CLS] (the global view): one [CLS] per image, not one per tile.
- **grid**: the packed image has no single raster layout (a square base tile followed by an ``h × w``
  unpadded grid). Its non-newline tokens are described as one ``1 × N`` row, so ``spatial`` samples evenly
  along the packed raster order and ``pool`` averages runs of consecutive packed tokens (a documented
  fallback; a one-tile item — OneVision multi-image — keeps its real square grid).

``vision_feature_layer`` / ``vision_feature_select_strategy`` given with the inputs override the config, as
in the stock forward. Only a single feature layer can be reduced on pre-projector features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from .base import Adapter, SignalRequest, VisualItem

__all__ = ["LlavaNextAdapter", "AnyresLayout"]


@dataclass
class AnyresLayout:
    """Where the packed tokens of one anyres image come from (from the model's own ``pack_image_features`` run
    on an index tensor). ``index``: ``(n,)`` float, ``tile·p + patch`` of each packed token (``-1`` for
    ``image_newline``; non-integer where OneVision interpolated); ``tiles``: tiles of the image; ``exact``:
    whether the packing is a pure permutation of the tile tokens."""

    index: Tensor
    tiles: int
    exact: bool

    @property
    def protected(self) -> Tensor:
        return self.index < 0

    @property
    def num_tokens(self) -> int:
        return self.index.shape[0]


# ------------------------------------------------------------------------------------------- the adapter


class LlavaNextAdapter(Adapter):
    model_classes = ("LlavaNextForConditionalGeneration",)
    containers = {"image": "list"}
    encoder_keys = ("pixel_values", "image_sizes")
    has_cls = True

    # -- inputs ------------------------------------------------------------------------------------------

    def check_inputs(self, inputs: Mapping[str, Any]) -> None:
        super().check_inputs(inputs)
        self.check_image_inputs(inputs)

    def check_image_inputs(self, inputs: Mapping[str, Any]) -> None:
        pv = inputs.get("pixel_values")
        if pv is None:
            return
        name = self.name
        if inputs.get("image_sizes") is None:
            raise ValueError(
                f"{name}: pixel_values given without image_sizes (the (H, W) of every image, needed to unpad the "
                "anyres grid); pass the processor's full output"
            )
        if not isinstance(pv, Tensor) or pv.dim() not in (4, 5):
            raise ValueError(f"{name}: pixel_values must have shape (images, tiles, 3, H, W), got {getattr(pv, 'shape', pv)}")
        sizes = inputs["image_sizes"]
        if pv.dim() == 5 and len(sizes) != pv.shape[0]:
            raise ValueError(f"{name}: {pv.shape[0]} images in pixel_values but {len(sizes)} image_sizes")

    # -- the anyres machinery (shared with OneVision / NeXT-Video) --------------------------------------

    @property
    def patches_per_tile(self) -> int:
        vc = self.config.vision_config
        return (vc.image_size // vc.patch_size) ** 2

    @property
    def tile_side(self) -> int:
        vc = self.config.vision_config
        return vc.image_size // vc.patch_size

    def tile_counts(self, inputs: Mapping[str, Any]) -> list[int]:
        """Tiles of each image, as the stock ``get_image_features`` computes them."""
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        return [
            image_size_to_num_patches(
                image_size=size,
                grid_pinpoints=self.config.image_grid_pinpoints,
                patch_size=self.config.vision_config.image_size,
            )
            for size in inputs["image_sizes"]
        ]

    def image_kwargs(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """kwargs of the stock ``get_image_features`` for these inputs."""
        return dict(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"], **self.stock_kwargs(inputs))

    def pack(self, feats: Sequence[Tensor], image_sizes: Any, newline: Tensor | None, inputs: Mapping[str, Any]) -> list[Tensor]:
        """The model's own ``pack_image_features`` on per-image ``(tiles, p, ch)`` features."""
        packed, _ = self.inner.pack_image_features(
            list(feats), image_sizes, vision_feature_select_strategy=self.select_strategy(inputs), image_newline=newline
        )
        return list(packed)

    def gather_tiles(self, pixel_values: Tensor, counts: list[int]) -> Tensor:
        """All tiles of the batch as one tower batch ``(T, 3, H, W)``, exactly as the stock encoder does."""
        if pixel_values.dim() == 5:
            return torch.cat([pv[:n] for pv, n in zip(pixel_values, counts)], dim=0)
        return pixel_values

    def layouts(self, inputs: Mapping[str, Any], counts: list[int]) -> list[AnyresLayout]:
        """Per image, the source of every packed token (the index trick)."""
        p = self.patches_per_tile
        index = [torch.arange(n * p, dtype=torch.float32).view(n, p, 1) for n in counts]
        packed = self.pack(index, inputs["image_sizes"], torch.tensor([-1.0]), inputs)
        out = []
        for idx, n in zip(packed, counts):
            idx = idx[:, 0].float()
            real = idx[idx >= 0]
            exact = bool((real == real.round()).all())
            out.append(AnyresLayout(idx, n, exact))
        return out

    def item_grid(self, layout: AnyresLayout) -> tuple[int, int]:
        n_free = int((~layout.protected).sum())
        if layout.tiles == 1:
            side = self.tile_side
            if side * side == n_free:
                return side, side
        return 1, n_free

    def encode_stock(self, modality: str, inputs: Mapping[str, Any]) -> list[VisualItem]:
        layouts = self.layouts(inputs, self.tile_counts(inputs))
        tokens = list(self.inner.get_image_features(**self.image_kwargs(inputs), return_dict=True).pooler_output)
        self._check_layouts(tokens, layouts)
        return [
            VisualItem("image", t, protected=lay.protected.to(t.device), grid=self.item_grid(lay))
            for t, lay in zip(tokens, layouts)
        ]

    def encode_hooked(
        self, modality: str, inputs: Mapping[str, Any], *, need_pre: bool, signals: SignalRequest | None
    ) -> list[VisualItem]:
        counts = self.tile_counts(inputs)
        return self._encode_images_pre(inputs, counts, self.layouts(inputs, counts), signals)

    def _check_layouts(self, tokens: list[Tensor], layouts: list[AnyresLayout]) -> None:
        for t, lay in zip(tokens, layouts):
            if t.shape[0] != lay.num_tokens:  # pragma: no cover - guards the index trick
                raise RuntimeError(f"packed index has {lay.num_tokens} tokens but the image has {t.shape[0]}")

    def _encode_images_pre(
        self,
        inputs: Mapping[str, Any],
        counts: list[int],
        layouts: list[AnyresLayout],
        signals: SignalRequest | None,
    ) -> list[VisualItem]:
        inner = self.inner
        tiles = self.gather_tiles(inputs["pixel_values"], counts)
        sig = self.tower_signals(inner.vision_tower, tiles, self.single_layer(inputs), signals)
        self.check_strategy(inputs, sig.has_cls)
        feats = sig.features  # (T, p, C), [CLS] removed
        proj = inner.multi_modal_projector(feats)
        sizes = inputs["image_sizes"]
        tokens = self.pack(proj.split(counts), sizes, inner.image_newline, inputs)
        self._check_layouts(tokens, layouts)
        d = sig.as_dict(style=signals.style) if signals is not None else {}
        items: list[VisualItem] = []
        start = 0
        for i, (tok, lay, n) in enumerate(zip(tokens, layouts, counts)):

            def one(x: Tensor) -> Tensor:
                """Per-tile ``(T, p, ch)`` values of this image in packed order (zeros at the newlines)."""
                return self.pack([x[start : start + n]], sizes[i : i + 1], x.new_zeros(x.shape[-1]), inputs)[0]

            item_sig: dict[str, Any] = {}
            if d.get("cls_attn") is not None:
                attn = one(d["cls_attn"].float()[..., None])[:, 0]
                if not lay.exact:
                    attn = attn * self._area_scale(lay, sizes[i]).to(attn.device)
                item_sig["cls_attn"] = attn
            if d.get("keys") is not None:
                item_sig["keys"] = one(d["keys"])
            if d.get("cls_feature") is not None:
                item_sig["cls_feature"] = d["cls_feature"][start]  # the base tile's [CLS]: the global view
            # interpolated tokens have no pre-projector feature: reduce the LLM-width tokens themselves
            items.append(
                VisualItem(
                    "image", tok, pre=one(feats) if lay.exact else tok, signals=item_sig,
                    protected=lay.protected.to(tok.device), grid=self.item_grid(lay), projected=not lay.exact,
                )
            )
            start += n
        return items

    def _area_scale(self, layout: AnyresLayout, image_size: Any) -> Tensor:
        """Per packed token, the number of patches it stands for (1, or the downscale ratio² for OneVision's
        interpolated high-resolution grid), so that resampled [CLS] attention keeps its mass."""
        from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

        p = self.patches_per_tile
        side = self.tile_side
        gh, gw = get_anyres_image_grid_shape(image_size, self.config.image_grid_pinpoints, self.config.vision_config.image_size)
        _, h, w = unpad_image(torch.empty(0, gh * side, gw * side), torch.as_tensor(image_size)).shape
        high = layout.index >= p  # interpolating indices of high-resolution tiles never drops below p
        n_high = int(high.sum())
        scale = torch.ones_like(layout.index)
        if n_high:
            scale[high] = (h * w) / n_high
        return scale
