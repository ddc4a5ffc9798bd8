"""tucker-attention: Tucker Attention (arXiv 2603.30033) — layers, tensor view, conversions, models, training.

    import tucker_attention as ta
    layer = ta.TuckerAttention(768, 12, ranks=(8, 128, 64))
    y = layer(x, causal=True)
"""

from . import analysis, attention, convert, counting, tensors
from .attention import (
                        GroupedQueryAttention,
                        KVCache,
                        MultiHeadAttention,
                        MultiHeadLatentAttention,
                        TuckerAttention,
                        TuckerFactors,
                        attend,
)

__version__ = "0.1.0"

_LAZY = ("book", "data", "models", "train")       # heavier subpackages, imported on first use


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["GroupedQueryAttention", "KVCache", "MultiHeadAttention", "MultiHeadLatentAttention",
           "TuckerAttention", "TuckerFactors", "analysis", "attend", "attention", "convert", "counting", "tensors",
           "__version__"]
