"""What every model-family adapter provides to the shared pipeline.

An adapter knows one transformers family: where its vision tower and projector are, which hidden layer feeds
the LLM, whether there is a [CLS] token, how the visual tokens of one image or video are laid out, and how the
LLM consumes them. It *encodes* (pixels → :class:`VisualItem` per image/video, in the order the stock model
scatters them into the placeholder tokens) and *projects* reduced pre-projector features. Everything else —
running the method, rebuilding ``input_ids`` / masks / positions, calling the stock ``generate`` — is the
pipeline's (``slimvlm.pipeline``), the same for every family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping

from torch import Tensor, nn

from ..methods import SignalRequest, available, get
from ..signals import VisionSignals, capture_signals

__all__ = [
    "VisualItem", "Adapter", "SignalRequest", "Container", "no_signal_message", "square_grid", "clip_like_item",
    "per_token_signals", "resample_signals",
]

#: How the stock forward consumes ``mm_encoder_outputs[modality].pooler_output``:
#: ``"list"``: a list of ``(m_i, D)`` (``torch.cat(..., 0)``); ``"flat"``: a tensor it ``.flatten(0, 1)``s,
#: given as ``(Σm, 1, D)``; ``"list_flat"``: a list whose items it ``.flatten(0, 1)``s, given as ``(m_i, 1, D)``.
Container = Literal["list", "flat", "list_flat"]


@dataclass
class VisualItem:
    """The visual tokens of one image or one video, as the stock model would inject them.

    Attributes:
        modality: ``"image"`` or ``"video"``.
        tokens: ``(n, D)`` LLM-width tokens, bit-identical to the stock ``get_*_features`` output.
        pre: ``(n, C)`` the pre-projector features of the same tokens (``None`` if not requested or not
            available); ``project(pre)`` must give ``tokens`` for the non-protected tokens.
        signals: per-token signals aligned with ``tokens`` (``cls_attn`` ``(n,)``, ``keys`` ``(n, Ck)``) plus
            ``cls_feature`` ``(C,)`` where the tower has one (one per frame: ``(frames, C)``).
        protected: ``(n,)`` bool, tokens kept unchanged at their place (LLaVA-NeXT's ``image_newline``).
        frames: the non-protected tokens form ``frames`` equal groups reduced independently (per frame).
        grid: raster layout ``(rows, cols)`` of one frame's non-protected tokens, where regular.
        projected: ``pre`` holds LLM-width tokens (there is no pre-projector feature for them, e.g. tokens pooled
            after the projector): pre-projector methods reduce them as they are and nothing is projected.
    """

    modality: str
    tokens: Tensor
    pre: Tensor | None = None
    signals: dict[str, Any] = field(default_factory=dict)
    protected: Tensor | None = None
    frames: int = 1
    grid: tuple[int, int] | None = None
    projected: bool = False

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[0]


class Adapter:
    """Base class of the per-family adapters. Subclasses set the class attributes and implement
    :meth:`encode_stock`, :meth:`encode_hooked` and :meth:`project` (and :meth:`mrope_positions` for M-RoPE)."""

    #: transformers class names this adapter handles.
    model_classes: ClassVar[tuple[str, ...]] = ()
    #: the modalities, in the order the stock forward scatters them, and how it consumes each one's pooler_output.
    containers: ClassVar[Mapping[str, Container]] = {"image": "list"}
    #: the input key holding each modality's pixels.
    pixel_keys: ClassVar[Mapping[str, str]] = {"image": "pixel_values", "video": "pixel_values_videos"}
    #: ``"1d"``: positions follow the attention mask (LLaVA); ``"mrope"``: 3-D positions (Qwen2-VL).
    positions: ClassVar[str] = "1d"
    #: input keys that only carry pixels / layout for the encoder; dropped once features are injected.
    encoder_keys: ClassVar[tuple[str, ...]] = ("pixel_values", "image_sizes")
    #: whether the vision tower gives a [CLS] token.
    has_cls: ClassVar[bool] = True
    #: whether the adapter can give per-token attention signals (``cls_attn`` / ``keys``): from [CLS], or a
    #: pseudo-[CLS] for towers without one. Methods that need them are refused up front when it cannot.
    attention_signals: ClassVar[bool] = True

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    @property
    def name(self) -> str:
        """The model's class name, for messages."""
        return type(self.model).__name__

    @property
    def inner(self) -> nn.Module:
        """The ``*Model`` inside ``*ForConditionalGeneration``."""
        return self.model.model

    def placeholder_ids(self) -> dict[str, int]:
        """Token id of each modality's placeholder."""
        ids = {"image": self.config.image_token_id}
        if "video" in self.containers:
            ids["video"] = self.config.video_token_id
        return ids

    def check_inputs(self, inputs: Mapping[str, Any]) -> None:
        """Raise a clear error when the processor outputs miss what this family needs."""
        if "input_ids" not in inputs or inputs["input_ids"] is None:
            raise ValueError(f"{self.name}: input_ids are required (pass the processor's outputs)")

    # -- encoding ------------------------------------------------------------------------------------------

    def pixels(self, inputs: Mapping[str, Any], modality: str) -> Any:
        """The pixels of ``modality`` in ``inputs`` (None: none given)."""
        return inputs.get(self.pixel_keys[modality])

    def encode(self, inputs: Mapping[str, Any], *, need_pre: bool, signals: SignalRequest | None) -> list[VisualItem]:
        """Encode every image / video of the batch, in the order the stock model scatters them: each modality
        through the stock ``get_*_features`` when only the LLM-width tokens are needed, else through the hooked
        tower path that also gives pre-projector features and the tower signals."""
        items: list[VisualItem] = []
        for modality in self.containers:
            if self.pixels(inputs, modality) is None:
                continue
            if need_pre or signals is not None:
                items += self.encode_hooked(modality, inputs, need_pre=need_pre, signals=signals)
            else:
                items += self.encode_stock(modality, inputs)
        return items

    def encode_stock(self, modality: str, inputs: Mapping[str, Any]) -> list[VisualItem]:
        """The items of ``modality`` from the stock feature function (tokens bit-identical to the stock model)."""
        raise NotImplementedError

    def encode_hooked(
        self, modality: str, inputs: Mapping[str, Any], *, need_pre: bool, signals: SignalRequest | None
    ) -> list[VisualItem]:
        """The items of ``modality`` with pre-projector features and (if asked) the tower signals."""
        raise NotImplementedError

    def project(self, item: VisualItem, pre: Tensor) -> Tensor:
        """Map reduced pre-projector features ``(m, C)`` to LLM width ``(m, D)`` (an item whose ``pre`` is
        already ``projected`` is returned as it is)."""
        return pre if item.projected else self.inner.multi_modal_projector(pre)

    def mrope_positions(self, inputs: Mapping[str, Any]) -> Tensor:
        """``(3, B, L)`` (t, h, w) positions of the unreduced sequence; only for ``positions == "mrope"``."""
        raise NotImplementedError(f"{self.name} uses 1-D positions")

    # -- helpers shared by the CLIP/SigLIP-based families -----------------------------------------------

    def tower_signals(
        self, tower: nn.Module, pixel_values: Tensor, feature_layer: int, signals: SignalRequest | None
    ) -> VisionSignals:
        """One tower forward giving the features of ``feature_layer`` and, if asked, the q/k signals."""
        return capture_signals(
            tower, pixel_values, feature_layer=feature_layer, score_layer=signals.score_layer if signals else -1
        )

    def clip_images(
        self, tower: nn.Module, pixel_values: Tensor, inputs: Mapping[str, Any], signals: SignalRequest | None
    ) -> list[VisualItem]:
        """LLaVA-1.5-style images through the hooked tower: per image one square grid of patches ([CLS] dropped),
        projected, with its pre-projector features and (if asked) its tower signals."""
        sig = self.tower_signals(tower, pixel_values, self.single_layer(inputs), signals)
        self.check_strategy(inputs, sig.has_cls)
        tokens = self.inner.multi_modal_projector(sig.features)
        items = [clip_like_item("image", t, pre) for t, pre in zip(tokens, sig.features)]
        for b, item in enumerate(items):
            if signals is not None:
                item.signals = per_token_signals(sig, signals.style, b)
        return items

    def frame_signals(
        self, tower: nn.Module, inputs: Mapping[str, Any], signals: SignalRequest | None
    ) -> tuple[VisionSignals, int, int]:
        """One hooked tower pass over every frame of every video: ``(signals, videos, frames per video)``."""
        pvv = inputs["pixel_values_videos"]
        v, f = pvv.shape[:2]
        frames = pvv.reshape(v * f, *pvv.shape[2:])
        return self.tower_signals(tower, frames, self.single_layer(inputs), signals), v, f

    def feature_layer(self, inputs: Mapping[str, Any]) -> Any:
        """``vision_feature_layer`` of this call (inputs override the config, as in the stock forward)."""
        layer = inputs.get("vision_feature_layer")
        return self.config.vision_feature_layer if layer is None else layer

    def single_layer(self, inputs: Mapping[str, Any]) -> int:
        """The one feature layer pre-projector methods reduce; a clear error for multi-layer features."""
        layer = self.feature_layer(inputs)
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ValueError(
                f"{self.name}: vision_feature_layer={layer!r}; slimvlm reduces pre-projector features of one selected "
                "layer only (multi-layer features are not supported for pre-projector methods)"
            )
        return layer

    def select_strategy(self, inputs: Mapping[str, Any]) -> str:
        """``vision_feature_select_strategy`` of this call (inputs override the config)."""
        strategy = inputs.get("vision_feature_select_strategy")
        return self.config.vision_feature_select_strategy if strategy is None else strategy

    def check_strategy(self, inputs: Mapping[str, Any], has_cls: bool) -> None:
        """Pre-projector features come with [CLS] removed; the stock strategy must agree."""
        strategy = self.select_strategy(inputs)
        if strategy == "full" and has_cls:
            raise ValueError(
                f"{self.name}: vision_feature_select_strategy='full' keeps [CLS] as a visual token; pre-projector "
                "reduction is not supported for it"
            )
        if strategy == "default" and not has_cls:
            raise ValueError(
                f"{self.name}: vision_feature_select_strategy='default' drops the first patch of a tower without "
                "[CLS]; pre-projector reduction is not supported for it"
            )

    def stock_kwargs(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Per-call overrides of the feature layer / strategy for the stock ``get_*_features`` (if given)."""
        return {k: inputs[k] for k in ("vision_feature_layer", "vision_feature_select_strategy") if inputs.get(k) is not None}

    def check_video_pixels(self, pixel_values_videos: Any) -> None:
        """Videos come as ``(videos, frames, 3, H, W)``, at least one frame each, frames of the tower's size (the
        video towers take no other: no anyres tiling, no position interpolation)."""
        if not isinstance(pixel_values_videos, Tensor) or pixel_values_videos.dim() != 5:
            shape = tuple(pixel_values_videos.shape) if isinstance(pixel_values_videos, Tensor) else type(pixel_values_videos)
            raise ValueError(f"{self.name}: pixel_values_videos must have shape (videos, frames, 3, H, W), got {shape}")
        _, frames, _, h, w = pixel_values_videos.shape
        if frames == 0:
            raise ValueError(f"{self.name}: pixel_values_videos holds videos of 0 frames; a video needs at least one")
        side = getattr(self.config.vision_config, "image_size", None)
        if side is not None and (h, w) != (side, side):
            raise ValueError(
                f"{self.name}: video frames {h}x{w} differ from the tower's {side}x{side}; resize them (the model's "
                "video processor does)"
            )


def no_signal_message(adapter: Adapter) -> str:
    """The error for a method that needs attention signals on a tower that gives none."""
    signal_free = ", ".join(name for name in available() if get(name).signals is None)
    return (
        f"{adapter.name}'s vision tower has no [CLS] token and slimvlm has no attention signal for it yet; use a method "
        f"that needs none ({signal_free})"
    )


def square_grid(n: int) -> tuple[int, int] | None:
    """``(side, side)`` when ``n`` is a square, else None."""
    side = math.isqrt(n)
    return (side, side) if side * side == n else None


def clip_like_item(modality: str, tokens: Tensor, pre: Tensor | None = None) -> VisualItem:
    """A LLaVA-1.5 style item (one square grid of patches, no protected tokens)."""
    return VisualItem(modality, tokens, pre=pre, grid=square_grid(tokens.shape[0]))


def per_token_signals(sig: VisionSignals, style: str, b: int) -> dict[str, Any]:
    """The signals of item ``b`` of a tower batch, per token."""
    d = sig.as_dict(style=style)
    out: dict[str, Any] = {}
    for name in ("cls_attn", "keys"):
        if d.get(name) is not None:
            out[name] = d[name][b]
    if d.get("cls_feature") is not None:
        out["cls_feature"] = d["cls_feature"][b]
    return out


def resample_signals(sig: dict[str, Any], grid: tuple[int, int], resample) -> dict[str, Any]:
    """Map per-patch signals ``(B, h·w[, Ck])`` onto tokens resampled by ``resample`` (a function on
    ``(B, ch, h, w)`` maps, the same operator the model applies to the tokens: average pooling or bilinear
    interpolation). ``cls_attn`` is rescaled by ``h·w / (h'·w')`` so that each frame's total attention is kept
    (a pooled token gets the attention mass of the patches it covers); keys are resampled as they are."""
    h, w = grid
    out: dict[str, Any] = {}
    if sig.get("cls_attn") is not None:
        a = sig["cls_attn"].float()
        b = a.shape[0]
        r = resample(a.reshape(b, 1, h, w))
        scale = (h * w) / (r.shape[-2] * r.shape[-1])
        out["cls_attn"] = r.reshape(b, -1) * scale
    if sig.get("keys") is not None:
        k = sig["keys"]
        b, _, ck = k.shape
        maps = k.float().reshape(b, h, w, ck).permute(0, 3, 1, 2)
        out["keys"] = resample(maps).permute(0, 2, 3, 1).reshape(b, -1, ck).to(k.dtype)
    return out
