"""slimvlm in front of vLLM: the vision tower, projector and reduction method run in torch, vLLM serves the
language model on the reduced image tokens.

- :class:`Engine` / :class:`Request` (``engine.py``): offline batched generation, like ``vllm.LLM``.
- ``slimvlm serve`` (``server.py``): an OpenAI-compatible chat-completions endpoint.
- ``plugin.py`` / ``models.py``: the vLLM plugin that lets images with different kept counts share an engine
  step (entry point ``vllm.general_plugins``).
- ``support.py``: which families and methods vLLM can serve (imports neither vLLM nor transformers).

Needs vLLM (``pip install "slimvlm[serve]"``, or ``[serve-cpu]`` for vLLM's CPU build); ``import slimvlm``
never imports this package.
"""

from typing import Any

from .support import FAMILY_SUPPORT, check_family, check_method, servable_methods

_LAZY = {"Engine": "engine", "Request": "engine", "ImageReducer": "engine", "load_image": "engine"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        try:
            module = importlib.import_module(f".{_LAZY[name]}", __name__)
        except ImportError as err:
            if err.name and err.name.split(".")[0] == "vllm":
                raise ImportError(
                    'slimvlm\'s vLLM bridge needs vLLM: pip install "slimvlm[serve]" (or "slimvlm[serve-cpu]")'
                ) from err
            raise
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Engine", "Request", "ImageReducer", "load_image", "FAMILY_SUPPORT", "check_family", "check_method",
           "servable_methods"]
