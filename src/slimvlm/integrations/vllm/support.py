"""What the vLLM bridge can serve: which model families vLLM accepts reduced image tokens for, and which
methods can run in front of vLLM. Imports neither vLLM nor transformers, so the rules are checked before any
weights load.

vLLM takes precomputed image embeddings (``enable_mm_embeds``) and expands one ``<image>`` placeholder per
image to as many positions as the embedding has rows. For the LLaVA families the language model only sees
those rows at consecutive 1-D positions, so any kept count works (positions are renumbered over the shorter
prompt, slimvlm's ``positions="renumber"``). Where vLLM derives positions or token counts from the image
grid (Qwen's M-RoPE), or has no embedding input at all, the bridge refuses instead of sending full tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FamilySupport", "FAMILY_SUPPORT", "check_family", "check_method", "servable_methods"]


@dataclass(frozen=True)
class FamilySupport:
    """One transformers class: the vLLM architecture the bridge registers for it (None: not servable) and why."""

    model_class: str
    vllm_arch: str | None
    note: str


FAMILY_SUPPORT: dict[str, FamilySupport] = {
    s.model_class: s
    for s in (
        FamilySupport(
            "LlavaForConditionalGeneration", "SlimvlmLlavaForConditionalGeneration",
            "images; any kept count per image",
        ),
        FamilySupport(
            "LlavaNextForConditionalGeneration", "SlimvlmLlavaNextForConditionalGeneration",
            "images (anyres, image_newline rows kept); any kept count per image",
        ),
        FamilySupport(
            "LlavaOnevisionForConditionalGeneration", "SlimvlmLlavaOnevisionForConditionalGeneration",
            "images (single and multi-image); any kept count per image. Videos: not served by the bridge",
        ),
        FamilySupport(
            "LlavaNextVideoForConditionalGeneration", None,
            "vLLM 0.32's LLaVA-NeXT-Video takes video pixels only (no image input, no embeddings input)",
        ),
        FamilySupport(
            "VideoLlavaForConditionalGeneration", None,
            "vLLM 0.32 has no Video-LLaVA model",
        ),
        FamilySupport(
            "Qwen2VLForConditionalGeneration", None,
            "vLLM's image_embeds input needs image_grid_thw: it splits embeddings by t*h*w/merge^2 and builds "
            "M-RoPE positions from the full grid, so a reduced token count cannot be expressed",
        ),
        FamilySupport(
            "Qwen2_5_VLForConditionalGeneration", None,
            "as Qwen2-VL: the embeddings path derives counts and M-RoPE positions from image_grid_thw",
        ),
    )
}


def check_family(model_class: str) -> str:
    """The vLLM architecture that serves ``model_class`` with reduced tokens; a ValueError says why not."""
    support = FAMILY_SUPPORT.get(model_class)
    if support is None:
        servable = ", ".join(k for k, v in FAMILY_SUPPORT.items() if v.vllm_arch)
        raise ValueError(f"{model_class} is not a model slimvlm can serve through vLLM; servable: {servable}")
    if support.vllm_arch is None:
        raise ValueError(
            f"{model_class} cannot be served with reduced visual tokens through vLLM: {support.note}. "
            "slimvlm does not fall back to full tokens; use slimvlm.apply(...).generate on transformers instead"
        )
    return support.vllm_arch


def _prunes_inside_llm(method: str) -> bool:
    """Whether ``method`` removes tokens inside the language model. The only place this module reads a method's
    properties (an unknown name raises the registry's ValueError listing the known ones)."""
    from ...methods import get

    return get(method).prunes_in_llm


def servable_methods() -> list[str]:
    """Registered methods that reduce before the LLM, i.e. that vLLM can serve."""
    from ...methods import available

    return [m for m in available() if not _prunes_inside_llm(m)]


def check_method(method: str, options: dict | None = None) -> None:
    """Refuse, with one clear line, a method vLLM cannot run or options the method does not take."""
    from ...methods import available, make_config

    if method not in available():
        raise ValueError(f"unknown method {method!r}; methods vLLM can serve: {', '.join(servable_methods())}")
    if _prunes_inside_llm(method):
        raise ValueError(
            f"{method} prunes visual tokens inside the language model (between decoder layers); vLLM runs its own "
            f"unmodified decoder and cannot run it. Methods that reduce before the LLM: {', '.join(servable_methods())}; "
            "or use slimvlm.apply(...).generate on transformers"
        )
    try:
        make_config(method, **(options or {}))
    except TypeError as err:
        raise ValueError(f"{method}: {err}") from None
