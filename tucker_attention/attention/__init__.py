"""The attention family behind one interface: MHA, GQA/MQA, MLA and Tucker attention.

``METHODS`` (``registry.py``) holds one spec per method; ``build(method, d_model, n_heads, **sizes)`` makes
its layer.
"""

from .backends import BACKENDS, attend, available_backends
from .base import AttentionLayer
from .cache import KVCache
from .factors import TuckerFactors
from .gqa import GroupedQueryAttention
from .mha import MultiHeadAttention
from .mla import MultiHeadLatentAttention
from .registry import METHODS, MethodSpec, build, method_names, spec
from .rope import apply_rope, rope_angles, rope_matrix
from .tucker import TuckerAttention

__all__ = ["AttentionLayer", "BACKENDS", "GroupedQueryAttention", "KVCache", "METHODS", "MethodSpec",
           "MultiHeadAttention", "MultiHeadLatentAttention", "TuckerAttention", "TuckerFactors", "apply_rope",
           "attend", "available_backends", "build", "fused_tucker_attention", "method_names", "rope_angles",
           "rope_matrix", "spec"]


def __getattr__(name: str):
    """``fused_tucker_attention`` is imported on first use: importing the package must not import triton."""
    if name == "fused_tucker_attention":
        from .fused import fused_tucker_attention

        return fused_tucker_attention
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
