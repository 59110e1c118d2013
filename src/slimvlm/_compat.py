"""Differences between the transformers 5.x releases slimvlm supports.

transformers 5.24 renamed the key/value cache from ``past_key_values`` to ``cache``: in the keyword arguments a
decoder layer receives, in model outputs (the old attribute stays as a deprecated alias) and in ``forward``'s
arguments (the old name is renamed with a warning). These helpers read and pass it under either name."""

from __future__ import annotations

import inspect
from typing import Any, Mapping

__all__ = ["cache_from_kwargs", "cache_from_output", "cache_kwarg"]


def cache_from_kwargs(kwargs: Mapping[str, Any]) -> Any:
    """The cache among a layer's or a model's keyword arguments (``cache`` from 5.24 on, else
    ``past_key_values``), or None."""
    cache = kwargs.get("cache")
    return cache if cache is not None else kwargs.get("past_key_values")


def cache_from_output(output: Mapping[str, Any]) -> Any:
    """The cache a model's forward returned (a ``ModelOutput``: ``cache`` from 5.24 on, else ``past_key_values``),
    or None."""
    cache = output.get("cache")
    return cache if cache is not None else output.get("past_key_values")


def cache_kwarg(model) -> str:
    """The name ``model.forward`` takes the cache under: ``"cache"`` from transformers 5.24 on, else
    ``"past_key_values"``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
