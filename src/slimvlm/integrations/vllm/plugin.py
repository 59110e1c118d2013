"""The vLLM plugin (entry point ``vllm.general_plugins`` → :func:`register`): vLLM calls it in every process
it starts (front end and engine core). It registers the variable-token-count model classes of ``models.py``
under their own architecture names, lazily (``"module:Class"``), so nothing is imported until a slimvlm engine
asks for one of them."""

from __future__ import annotations

from .support import FAMILY_SUPPORT

__all__ = ["register"]


def register() -> None:
    """Register every ``Slimvlm*`` architecture of :data:`~slimvlm.integrations.vllm.support.FAMILY_SUPPORT`."""
    from vllm import ModelRegistry

    for support in FAMILY_SUPPORT.values():
        if support.vllm_arch and support.vllm_arch not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(support.vllm_arch, f"{__package__}.models:{support.vllm_arch}")
