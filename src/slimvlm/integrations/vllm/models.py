"""vLLM model classes that take image embeddings with a different token count per image.

vLLM 0.32 declares the image-embedding input of LLaVA, LLaVA-NeXT and LLaVA-OneVision as
``TensorShape("bn", "ifs", "hs")``: the feature size ``ifs`` must be equal for all images of one engine step.
Two requests whose images were reduced to different counts then fail validation (``data contains inconsistent
shapes``) and the engine dies. Each class below is vLLM's own model with that one dimension declared dynamic
(``dynamic_dims={"ifs"}``); everything else (weights, processor, forward) is inherited.

Upstream change this stands for: in ``vllm/model_executor/models/{llava,llava_next,llava_onevision}.py``
declare ``data: Annotated[torch.Tensor | list[torch.Tensor], TensorShape("bn", "ifs", "hs",
dynamic_dims={"ifs"})]`` in ``*ImageEmbeddingInputs`` (paligemma has the same fixed shape). The model code
already handles a list of ``(ifs_i, hs)`` tensors: ``_process_image_input`` returns it unchanged.

The classes are registered under their own architecture names (``Slimvlm...``, see ``plugin.py``) and only
the slimvlm engine selects them (``hf_overrides={"architectures": [...]}``): installing slimvlm changes nothing
for other vLLM users.
"""

from __future__ import annotations

from typing import Annotated

import torch
from vllm.model_executor.models.llava import LlavaForConditionalGeneration, LlavaImageEmbeddingInputs
from vllm.model_executor.models.llava_next import LlavaNextForConditionalGeneration, LlavaNextImageEmbeddingInputs
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageEmbeddingInputs,
)
from vllm.utils.tensor_schema import TensorShape

_VARIABLE = TensorShape("bn", "ifs", "hs", dynamic_dims={"ifs"})


class _VariableCountEmbeds:
    """Mixin: parse ``image_embeds`` into ``_embeds_schema`` (token dim dynamic); pixels go to vLLM's own path."""

    _embeds_schema: type

    def _parse_and_validate_image_input(self, **kwargs: object):
        embeds = kwargs.get("image_embeds")
        if embeds is None or kwargs.get("pixel_values") is not None:
            return super()._parse_and_validate_image_input(**kwargs)
        return self._embeds_schema(type="image_embeds", data=embeds)


class LlavaVariableEmbeds(LlavaImageEmbeddingInputs):
    data: Annotated[torch.Tensor | list[torch.Tensor], _VARIABLE]


class LlavaNextVariableEmbeds(LlavaNextImageEmbeddingInputs):
    data: Annotated[torch.Tensor | list[torch.Tensor], _VARIABLE]


class LlavaOnevisionVariableEmbeds(LlavaOnevisionImageEmbeddingInputs):
    data: Annotated[torch.Tensor | list[torch.Tensor], _VARIABLE]


class SlimvlmLlavaForConditionalGeneration(_VariableCountEmbeds, LlavaForConditionalGeneration):
    _embeds_schema = LlavaVariableEmbeds


class SlimvlmLlavaNextForConditionalGeneration(_VariableCountEmbeds, LlavaNextForConditionalGeneration):
    _embeds_schema = LlavaNextVariableEmbeds


class SlimvlmLlavaOnevisionForConditionalGeneration(_VariableCountEmbeds, LlavaOnevisionForConditionalGeneration):
    _embeds_schema = LlavaOnevisionVariableEmbeds
