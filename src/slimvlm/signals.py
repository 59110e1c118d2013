"""Capture what the reduction methods need from a transformers-5 vision tower.

PruMerge's approach (docs/methods.md, "Signals"): *temporary* forward hooks on ``q_proj`` /
``k_proj`` of one encoder layer record the raw projections, and the attention is recomputed outside the
encoder. This works whatever attention implementation the tower uses (``"sdpa"`` returns no attention weights,
``"eager"`` does), costs one ordinary forward pass, and leaves the tower untouched: the hooks are removed
afterwards, also when the forward raises.

Supported towers: ``CLIPVisionModel`` (``encoder.layers[i].self_attn``), ``SiglipVisionModel`` (same layout, no
[CLS] token) and ``Dinov2Model`` (``encoder.layer[i].attention``). A wrapper with a ``.vision_model``
attribute holding one of these (``CLIPVisionModelWithProjection``, ``CLIPModel``, ``SiglipModel``) is unwrapped.

Defaults follow PruMerge: features = ``hidden_states[-2]`` (patches), scores from the *last* layer's q/k, which
that layer computes from ``layer_norm1(hidden_states[-2])``. VisionZip uses the attention and keys of
``layers[-2]`` with features ``hidden_states[-2]``: ``capture_signals(..., score_layer=-2)``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

import torch
from torch import Tensor, nn

from .methods.common import attention_received, cls_attention_from_qk, head_mean_keys

__all__ = [
    "SUPPORTED_TOWERS",
    "TowerSpec",
    "QKRecord",
    "VisionSignals",
    "tower_spec",
    "record_qk",
    "capture_signals",
]

#: Class names of the towers :func:`tower_spec` understands.
SUPPORTED_TOWERS = ("CLIPVisionModel", "SiglipVisionModel", "Dinov2Model")

SignalStyle = Literal["full_width", "head_mean", "qk"]


def _tower_classes() -> dict[str, type]:
    from transformers import CLIPVisionModel, Dinov2Model, SiglipVisionModel

    return {"CLIPVisionModel": CLIPVisionModel, "SiglipVisionModel": SiglipVisionModel, "Dinov2Model": Dinov2Model}


@dataclass(frozen=True)
class TowerSpec:
    """Where the encoder layers and their q/k projections live in a supported tower.

    Attributes:
        model: the module to run (the tower itself, or its unwrapped ``.vision_model``).
        family: ``"clip"``, ``"siglip"`` or ``"dinov2"``.
        layers: the encoder layer list.
        num_heads: attention heads per layer.
        patch_size: patch side in pixels.
        num_channels: expected input channels.
        image_size: the configured input side (CLIP/SigLIP need it unless ``interpolate_pos_encoding=True``).
        has_cls: whether token 0 is a [CLS] token.
    """

    model: nn.Module
    family: str
    layers: nn.ModuleList
    num_heads: int
    patch_size: int
    num_channels: int
    image_size: int
    has_cls: bool

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer_index(self, layer: int) -> int:
        """Normalise a (possibly negative) encoder layer index, with a clear error when out of range."""
        n = self.num_layers
        if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
            raise ValueError(f"score layer {layer!r} is out of range for a tower with {n} encoder layers ([-{n}, {n - 1}])")
        return layer % n

    def attention(self, layer: int) -> nn.Module:
        """The self-attention module of encoder layer ``layer``."""
        block = self.layers[self.layer_index(layer)]
        return block.attention if self.family == "dinov2" else block.self_attn

    def qk_modules(self, layer: int) -> tuple[nn.Module, nn.Module]:
        """``(q_proj, k_proj)`` of encoder layer ``layer``."""
        attn = self.attention(layer)
        return attn.q_proj, attn.k_proj


def tower_spec(tower: nn.Module) -> TowerSpec:
    """Describe a supported vision tower; ``ValueError`` naming the supported classes otherwise."""
    classes = _tower_classes()
    model = tower
    if not isinstance(model, tuple(classes.values())) and isinstance(getattr(model, "vision_model", None), nn.Module):
        model = model.vision_model
    if isinstance(model, classes["CLIPVisionModel"]):
        family, layers, has_cls = "clip", model.encoder.layers, True
    elif isinstance(model, classes["SiglipVisionModel"]):
        family, layers, has_cls = "siglip", model.encoder.layers, False
    elif isinstance(model, classes["Dinov2Model"]):
        family, layers, has_cls = "dinov2", model.encoder.layer, True
    else:
        raise ValueError(
            f"unsupported vision tower {type(tower).__name__}; supported: {', '.join(SUPPORTED_TOWERS)} "
            "(or a model whose .vision_model is one of them)"
        )
    cfg = model.config
    return TowerSpec(
        model=model,
        family=family,
        layers=layers,
        num_heads=int(cfg.num_attention_heads),
        patch_size=int(cfg.patch_size),
        num_channels=int(getattr(cfg, "num_channels", 3)),
        image_size=int(cfg.image_size),
        has_cls=has_cls,
    )


@dataclass
class QKRecord:
    """Outputs of ``q_proj`` / ``k_proj`` recorded by :func:`record_qk` (``None`` until the layer runs)."""

    q: Tensor | None = None
    k: Tensor | None = None
    calls: int = 0


@contextmanager
def record_qk(tower: nn.Module, layer: int = -1) -> Iterator[QKRecord]:
    """Temporarily hook ``q_proj``/``k_proj`` of encoder layer ``layer``; yields a :class:`QKRecord`.

    Use it around your own forward call (e.g. a VLM's ``get_image_features``). The hooks are removed on exit,
    also on exceptions. If the tower runs several times inside the block, the last call wins.
    """
    spec = tower_spec(tower)
    q_proj, k_proj = spec.qk_modules(layer)
    rec = QKRecord()

    def on_q(_m: nn.Module, _i: Any, out: Tensor) -> None:
        rec.q = out
        rec.calls += 1

    def on_k(_m: nn.Module, _i: Any, out: Tensor) -> None:
        rec.k = out

    handles = [q_proj.register_forward_hook(on_q), k_proj.register_forward_hook(on_k)]
    try:
        yield rec
    finally:
        for h in handles:
            h.remove()


@dataclass(frozen=True)
class VisionSignals:
    """Everything the reduction methods read from one forward pass of the tower.

    Attributes:
        features: ``(B, N, C)`` patch features of ``hidden_states[feature_layer]`` ([CLS] removed).
        cls_feature: ``(B, C)`` [CLS] feature of the same hidden state, or None (no [CLS]).
        q, k: ``(B, T, C)`` raw (unscaled, with bias) ``q_proj``/``k_proj`` outputs of the scoring layer;
            ``T = N + 1`` with [CLS] first, or ``T = N`` without [CLS].
        cls_attn: ``(B, N)`` PruMerge form ``softmax(q kᵀ · C^-1/2)[CLS, patches]`` (one C-wide head); for towers
            without [CLS] the pseudo-[CLS] "attention received" (column mean of the head-mean attention).
        cls_attn_head_mean: ``(B, N)`` the model's per-head softmax [CLS]→patch attention averaged over heads;
            None without [CLS].
        keys: ``(B, N, C)`` ``k`` without [CLS].
        head_mean_keys: ``(B, N, C/H)`` keys averaged over heads (ToMe / VisionZip metric).
        grid: ``(rows, cols)`` patch layout in raster order.
        has_cls: whether the tower has a [CLS] token.
        num_heads: heads of the scoring layer.
        feature_layer: index into ``hidden_states`` the features come from (as given).
        score_layer: encoder layer whose q/k were recorded (as given).
        last_hidden_state: the tower's ordinary ``last_hidden_state`` output.
    """

    features: Tensor
    cls_feature: Tensor | None
    q: Tensor
    k: Tensor
    cls_attn: Tensor
    cls_attn_head_mean: Tensor | None
    keys: Tensor
    head_mean_keys: Tensor
    grid: tuple[int, int]
    has_cls: bool
    num_heads: int
    feature_layer: int
    score_layer: int
    last_hidden_state: Tensor = field(repr=False)

    def as_dict(self, style: SignalStyle = "full_width") -> dict[str, Any]:
        """Signals under the names of ``slimvlm.methods.reduce(..., signals=...)``.

        - ``"full_width"`` (default): ``cls_attn`` (PruMerge's one-head form), ``keys`` (full-width k), ``cls_feature``,
          ``grid``.
        - ``"head_mean"``: ``cls_attn`` = per-head mean form (pseudo-[CLS] without [CLS]), ``keys`` = head-mean keys
          (VisionZip's),
          ``cls_feature``, ``grid``.
        - ``"qk"``: the raw ``q``/``k`` ([CLS] first; PruMerge derives its signals itself), ``cls_feature``, ``grid``.

        ``q``/``k`` and ``cls_attn``/``keys`` are never given together: PruMerge refuses both at once.
        """
        base = {"cls_feature": self.cls_feature, "grid": self.grid}
        if style == "full_width":
            return {"cls_attn": self.cls_attn, "keys": self.keys, **base}
        if style == "head_mean":
            attn = self.cls_attn_head_mean if self.cls_attn_head_mean is not None else self.cls_attn
            return {"cls_attn": attn, "keys": self.head_mean_keys, **base}
        if style == "qk":
            if not self.has_cls:
                raise ValueError("style='qk' needs a tower with a [CLS] token (q/k are (B, N+1, C), [CLS] first)")
            return {"q": self.q, "k": self.k, **base}
        raise ValueError(f"unknown style {style!r}; choose 'full_width', 'head_mean' or 'qk'")


def _check_pixels(spec: TowerSpec, pixel_values: Any, forward_kwargs: dict[str, Any]) -> Tensor:
    if not isinstance(pixel_values, Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor of shape (B, 3, H, W), got {type(pixel_values).__name__}")
    if pixel_values.dim() == 3:
        raise ValueError(
            f"pixel_values must have shape (B, C, H, W), got {tuple(pixel_values.shape)}; add a batch dimension "
            "with pixel_values[None]"
        )
    if pixel_values.dim() != 4:
        raise ValueError(f"pixel_values must have shape (B, C, H, W), got {tuple(pixel_values.shape)}")
    b, c, h, w = pixel_values.shape
    if b == 0:
        raise ValueError("pixel_values has an empty batch (B = 0)")
    if c != spec.num_channels:
        raise ValueError(
            f"pixel_values has {c} channels, the tower expects {spec.num_channels} (shape (B, C, H, W), channels first)"
        )
    if not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values must be a floating tensor (normalised pixels), got {pixel_values.dtype}")
    p = spec.patch_size
    if h < p or w < p:
        raise ValueError(f"image {h}x{w} is smaller than one {p}x{p} patch")
    if spec.family in ("clip", "siglip") and not forward_kwargs.get("interpolate_pos_encoding", False):
        if (h, w) != (spec.image_size, spec.image_size):
            raise ValueError(
                f"image {h}x{w} differs from the tower's {spec.image_size}x{spec.image_size}; resize it or pass "
                "interpolate_pos_encoding=True"
            )
    ref = next(spec.model.parameters(), None)
    if ref is not None:
        pixel_values = pixel_values.to(device=ref.device, dtype=ref.dtype)
    return pixel_values


def capture_signals(
    tower: nn.Module,
    pixel_values: Tensor,
    *,
    feature_layer: int = -2,
    score_layer: int = -1,
    **forward_kwargs: Any,
) -> VisionSignals:
    """Run ``tower`` once on ``pixel_values`` ``(B, C, H, W)`` and capture :class:`VisionSignals`.

    Args:
        tower: a supported vision tower (see :data:`SUPPORTED_TOWERS`); its attention implementation does not
            matter. Put it in ``eval()`` mode yourself (dropout would make the signals random).
        pixel_values: preprocessed images; moved to the tower's device and dtype.
        feature_layer: index into ``hidden_states`` (``num_layers + 1`` entries, embeddings first) of the
            features to reduce. PruMerge / LLaVA: -2.
        score_layer: encoder layer whose ``q_proj``/``k_proj`` give the attention and keys. PruMerge: -1 (its
            q/k are computed from ``hidden_states[-2]``); VisionZip: -2.
        forward_kwargs: passed to the tower (e.g. ``interpolate_pos_encoding=True`` for CLIP/SigLIP).

    Runs under ``torch.no_grad()``; the hooks are removed afterwards, also on errors.
    """
    spec = tower_spec(tower)
    spec.layer_index(score_layer)  # validate before running
    n_hidden = spec.num_layers + 1
    if isinstance(feature_layer, bool) or not isinstance(feature_layer, int) or not -n_hidden <= feature_layer < n_hidden:
        raise ValueError(
            f"feature_layer {feature_layer!r} is out of range: hidden_states has {n_hidden} entries "
            f"([-{n_hidden}, {n_hidden - 1}])"
        )
    for reserved in ("output_hidden_states", "output_attentions", "return_dict"):
        if reserved in forward_kwargs:
            raise ValueError(f"capture_signals sets {reserved} itself; do not pass it")
    pixel_values = _check_pixels(spec, pixel_values, forward_kwargs)

    with torch.no_grad(), record_qk(spec.model, score_layer) as rec:
        out = spec.model(pixel_values, output_hidden_states=True, **forward_kwargs)
    if rec.q is None or rec.k is None:
        raise RuntimeError(f"the q/k hooks of layer {score_layer} did not fire during the forward pass")
    hidden = out.hidden_states
    if hidden is None or len(hidden) != n_hidden:
        raise RuntimeError(f"expected {n_hidden} hidden states from the tower, got {0 if hidden is None else len(hidden)}")

    h, w = pixel_values.shape[-2:]
    grid = (h // spec.patch_size, w // spec.patch_size)
    n = grid[0] * grid[1]
    selected = hidden[feature_layer]
    t = n + int(spec.has_cls)
    if selected.shape[1] != t or rec.q.shape[1] != t:
        raise RuntimeError(
            f"expected {t} tokens for a {grid[0]}x{grid[1]} patch grid, got {selected.shape[1]} hidden tokens and "
            f"{rec.q.shape[1]} q tokens (register tokens are not supported)"
        )
    q, k = rec.q, rec.k
    with torch.no_grad():
        if spec.has_cls:
            features, cls_feature = selected[:, 1:], selected[:, 0]
            keys = k[:, 1:]
            cls_attn = cls_attention_from_qk(q, k, form="prumerge")
            cls_attn_head_mean = cls_attention_from_qk(q, k, form="head_mean", num_heads=spec.num_heads)
        else:
            features, cls_feature, keys = selected, None, k
            cls_attn = attention_received(q, k, spec.num_heads)
            cls_attn_head_mean = None
        hm_keys = head_mean_keys(keys, spec.num_heads)
    return VisionSignals(
        features=features,
        cls_feature=cls_feature,
        q=q,
        k=k,
        cls_attn=cls_attn,
        cls_attn_head_mean=cls_attn_head_mean,
        keys=keys,
        head_mean_keys=hm_keys,
        grid=grid,
        has_cls=spec.has_cls,
        num_heads=spec.num_heads,
        feature_layer=feature_layer,
        score_layer=score_layer,
        last_hidden_state=out.last_hidden_state,
    )
