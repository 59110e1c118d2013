"""One adapter per transformers model family; :func:`adapter_for` picks it by the model's class."""

from __future__ import annotations

from torch import nn

from .base import Adapter, SignalRequest, VisualItem
from .llava import LlavaAdapter
from .llava_next import LlavaNextAdapter
from .llava_next_video import LlavaNextVideoAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .qwen2_vl import Qwen2VLAdapter
from .video_llava import VideoLlavaAdapter

ADAPTERS: tuple[type[Adapter], ...] = (
    LlavaAdapter,
    LlavaNextAdapter,
    LlavaOnevisionAdapter,
    VideoLlavaAdapter,
    LlavaNextVideoAdapter,
    Qwen2VLAdapter,
)


def supported_models() -> list[str]:
    """Class names of the supported models."""
    return [name for a in ADAPTERS for name in a.model_classes]


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for ``model``'s class; a ValueError names the supported classes otherwise, or the first weight
    left on the meta device (a model built without its weights)."""
    name = type(model).__name__
    for cls in ADAPTERS:
        if name in cls.model_classes:
            on_meta = next((n for n, p in model.named_parameters() if p.is_meta), None)
            if on_meta is not None:
                raise ValueError(
                    f"{name} has weights on the meta device (e.g. {on_meta}): they were never loaded; load the model "
                    "with its weights (from_pretrained, or to_empty() then load_state_dict) before slimvlm.apply"
                )
            return cls(model)
    raise ValueError(f"unsupported model class {name}; slimvlm supports: {', '.join(supported_models())}")


__all__ = ["Adapter", "SignalRequest", "VisualItem", "adapter_for", "supported_models", "ADAPTERS"]
