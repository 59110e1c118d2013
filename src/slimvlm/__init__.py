"""slimvlm: training-free visual-token reduction for Hugging Face transformers VLMs."""

from .methods import Reduction, available, reduce

__version__ = "0.1.0"


def list_methods() -> list[str]:
    """Names of all registered token-reduction methods."""
    return available()


__all__ = ["Reduction", "reduce", "list_methods", "__version__"]
