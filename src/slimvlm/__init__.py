"""slimvlm: training-free visual-token reduction for Hugging Face transformers VLMs.

``slimvlm.methods`` holds the methods as pure tensor functions (torch only). ``slimvlm.apply`` /
``slimvlm.prepare`` plug them into stock transformers 5 models (imported lazily: transformers loads on first use).
"""

from typing import Any

from .methods import Reduction, available, reduce

__version__ = "0.1.0"

_LAZY = {"apply": "pipeline", "prepare": "pipeline", "SlimVLM": "pipeline", "supported_models": "models"}


def list_methods() -> list[str]:
    """Names of all registered token-reduction methods."""
    return available()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'slimvlm' has no attribute {name!r}")


__all__ = ["Reduction", "reduce", "list_methods", "apply", "prepare", "SlimVLM", "supported_models", "__version__"]
