"""The attention family behind one interface: MHA, GQA/MQA, MLA and Tucker attention."""

from .backends import BACKENDS, attend, available_backends
from .base import AttentionLayer
from .cache import KVCache
from .factors import TuckerFactors
from .gqa import GroupedQueryAttention
from .mha import MultiHeadAttention
from .mla import MultiHeadLatentAttention
from .rope import apply_rope, rope_angles, rope_matrix
from .tucker import TuckerAttention

__all__ = ["AttentionLayer", "BACKENDS", "GroupedQueryAttention", "KVCache", "MultiHeadAttention",
           "MultiHeadLatentAttention", "TuckerAttention", "TuckerFactors", "apply_rope", "attend",
           "available_backends", "rope_angles", "rope_matrix"]
