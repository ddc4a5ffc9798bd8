"""Multi-head attention (MHA): GQA with one key/value head per query head.

Exact Tucker form (paper §4, Theorem B.2): ``U1 = I``, ``U2 = W^Q``, ``U3 = W^K``, ``𝒞[i] = E_i E_i^T``;
post-softmax ``Ũ1 = I``, ``Ũ2 = (W^O)^T``, ``Ũ3 = W^V`` with the same core — the special case
``n_kv_heads = n_heads`` of Theorem B.3, which ``GroupedQueryAttention.tucker_factors`` builds.
"""

from __future__ import annotations

from .gqa import GroupedQueryAttention


class MultiHeadAttention(GroupedQueryAttention):
    """Standard MHA (no biases by default). Parameters ``4d²``; KV cache per token ``2d``.

    Weights: ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (all d→d). ``rope=True``: head-dim RoPE.
    ``bias=True``: biases on all four projections (+ ``4d`` parameters), as in GPT-2 / ViT.
    """

    def __init__(self, d_model: int, n_heads: int, *, rope: bool = False, bias: bool = False, **kwargs) -> None:
        super().__init__(d_model, n_heads, n_heads, rope=rope, bias=bias, **kwargs)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, rope={self.rope}, bias={self.bias}"
