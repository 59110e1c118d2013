"""What every model-family adapter provides to the shared pipeline.

An adapter knows one transformers family: where its vision tower and projector are, which hidden layer feeds
the LLM, whether there is a [CLS] token, how the visual tokens of one image or video are laid out, and how the
LLM consumes them. It *encodes* (pixels → :class:`VisualItem` per image/video, in the order the stock model
scatters them into the placeholder tokens) and *projects* reduced pre-projector features. Everything else —
running the method, rebuilding ``input_ids`` / masks / positions, calling the stock ``generate`` — is the
pipeline's (``slimvlm.pipeline``), the same for every family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping

import torch
from torch import Tensor, nn

from ..signals import VisionSignals, capture_signals

__all__ = ["VisualItem", "Adapter", "SignalRequest", "Container", "no_signal_message"]

#: How the stock forward consumes ``mm_encoder_outputs[modality].pooler_output``:
#: ``"list"``: a list of ``(m_i, D)`` (``torch.cat(..., 0)``); ``"flat"``: a tensor it ``.flatten(0, 1)``s,
#: given as ``(Σm, 1, D)``; ``"list_flat"``: a list whose items it ``.flatten(0, 1)``s, given as ``(m_i, 1, D)``.
Container = Literal["list", "flat", "list_flat"]


@dataclass(frozen=True)
class SignalRequest:
    """What the method needs from the vision tower: ``score_layer`` (encoder layer of the q/k) and the
    ``style`` of :meth:`VisionSignals.as_dict` (``"prumerge"`` or ``"visionzip"``)."""

    score_layer: int = -1
    style: str = "prumerge"


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
        extra: adapter-private data (e.g. which projector to use).
    """

    modality: str
    tokens: Tensor
    pre: Tensor | None = None
    signals: dict[str, Any] = field(default_factory=dict)
    protected: Tensor | None = None
    frames: int = 1
    grid: tuple[int, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[0]


class Adapter:
    """Base class of the per-family adapters. Subclasses set the class attributes and implement
    :meth:`encode` and :meth:`project`."""

    #: transformers class names this adapter handles.
    model_classes: ClassVar[tuple[str, ...]] = ()
    #: how the stock forward consumes each modality's pooler_output.
    containers: ClassVar[Mapping[str, Container]] = {"image": "list"}
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
            raise ValueError(f"{type(self.model).__name__}: input_ids are required (pass the processor's outputs)")

    def encode(
        self, inputs: Mapping[str, Any], *, need_pre: bool, signals: SignalRequest | None
    ) -> list[VisualItem]:
        """Encode every image / video of the batch, in the order the stock model scatters them."""
        raise NotImplementedError

    def project(self, item: VisualItem, pre: Tensor) -> Tensor:
        """Map reduced pre-projector features ``(m, C)`` to LLM width ``(m, D)``."""
        raise NotImplementedError

    # -- helpers shared by the CLIP/SigLIP-based families -----------------------------------------------

    def tower_signals(
        self, tower: nn.Module, pixel_values: Tensor, feature_layer: int, signals: SignalRequest | None
    ) -> VisionSignals:
        """One tower forward giving the features of ``feature_layer`` and, if asked, the q/k signals."""
        return capture_signals(
            tower, pixel_values, feature_layer=feature_layer, score_layer=signals.score_layer if signals else -1
        )


def no_signal_message(adapter: Adapter) -> str:
    """The error for a method that needs attention signals on a tower that gives none."""
    return (
        f"{type(adapter.model).__name__}'s vision tower has no [CLS] token and slimvlm has no attention signal for it "
        "yet; use a method that needs none (tome, aim-merge, spatial, pool, random, sequential)"
    )


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


def stack_signals(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate per-frame / per-tile signal dicts along the token axis (cls_feature stacks per frame)."""
    out: dict[str, Any] = {}
    for name in ("cls_attn", "keys"):
        if parts and all(name in p for p in parts):
            out[name] = torch.cat([p[name] for p in parts], 0)
    if parts and all("cls_feature" in p for p in parts):
        out["cls_feature"] = torch.stack([p["cls_feature"] for p in parts], 0)
    return out
