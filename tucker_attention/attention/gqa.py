"""Grouped-query attention (GQA); ``n_kv_heads=1`` is multi-query attention (MQA).

Query head ``i`` uses key/value group ``g(i) = floor(i * n_kv / n_H)`` (contiguous groups, as SDPA's
``enable_gqa`` and flash-attn assume). Its exact Tucker form is paper §4, Theorem B.3.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_divisible, check_int
from .base import AttentionLayer
from .factors import TuckerFactors, fold_biases


def selection_core(n_heads: int, head_dim: int, n_kv_heads: int, *, dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
    """The core ``𝒞[i] = E_i F_{g(i)}^T`` of Theorem B.3: (n_heads, n_heads*head_dim, n_kv_heads*head_dim).

    ``E_i`` selects head i's columns of a d-wide stack, ``F_g`` group g's columns of an n_kv*d_H stack.
    """
    core = torch.zeros(n_heads, n_heads * head_dim, n_kv_heads * head_dim, dtype=dtype, device=device)
    eye = torch.eye(head_dim, dtype=dtype, device=device)
    for i in range(n_heads):
        g = i * n_kv_heads // n_heads
        core[i, i * head_dim:(i + 1) * head_dim, g * head_dim:(g + 1) * head_dim] = eye
    return core


class GroupedQueryAttention(AttentionLayer):
    """GQA: ``n_heads`` query heads share ``n_kv_heads`` key/value heads.

    Weights (nn.Linear, ``x @ weight.T``): ``q_proj`` = W^Q (d→d), ``k_proj`` = W^K (d→n_kv d_H),
    ``v_proj`` = W^V (d→n_kv d_H), ``o_proj`` = W^O (d→d). Parameters: ``2d² + 2 n_kv d_H d``.
    KV cache per token: ``2 n_kv d_H``. ``rope=True`` rotates each head's queries and keys (head-dim RoPE).
    ``bias=True`` gives all four projections a bias (for peers' layers such as GPT-2, ViT and
    ``nn.MultiheadAttention``; + ``2d + 2 n_kv d_H`` parameters); the default has none.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, *, rope: bool = False, bias: bool = False,
                 **kwargs) -> None:
        super().__init__(d_model, n_heads, **kwargs)
        self.n_kv_heads = check_int("n_kv_heads", n_kv_heads, high=n_heads, high_name="n_heads")
        check_divisible("n_heads", n_heads, "n_kv_heads", n_kv_heads)
        if not isinstance(rope, bool):
            raise TypeError(f"rope must be a bool for {type(self).__name__}, got rope={rope!r}")
        if rope and self.head_dim % 2:
            raise ValueError(f"head size d_model/n_heads={self.head_dim} must be even for RoPE (rope=True)")
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be a bool, got bias={bias!r}")
        self.rope = rope
        self.bias = bias
        kv_dim = n_kv_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, kv_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, kv_dim, bias=bias)
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)

    @property
    def has_rope(self) -> bool:
        return self.rope

    def _initialize(self, std: float, out_std: float) -> None:
        """W^Q, W^K, W^V ~ N(0, std²), W^O ~ N(0, out_std²), biases 0 (``AttentionLayer.initialize``)."""
        for lin, s in ((self.q_proj, std), (self.k_proj, std), (self.v_proj, std), (self.o_proj, out_std)):
            nn.init.normal_(lin.weight, std=s)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def cache_spec(self) -> dict[str, tuple[int, int]]:
        return {"k": (self.n_kv_heads, self.head_dim), "v": (self.n_kv_heads, self.head_dim)}

    def _heads(self, t: torch.Tensor, h: int) -> torch.Tensor:
        B, N, _ = t.shape
        return t.view(B, N, h, self.head_dim).transpose(1, 2)          # (B, h, N, d_H)

    def _project(self, x, positions):
        q = self._heads(self.q_proj(x), self.n_heads)                  # (B, H, N, d_H)
        k = self._heads(self.k_proj(x), self.n_kv_heads)               # (B, Hkv, N, d_H)
        v = self._heads(self.v_proj(x), self.n_kv_heads)               # (B, Hkv, N, d_H)
        if self.rope:
            q, k = self._rope(q, positions), self._rope(k, positions)  # cache holds rotated keys
        return q, {"k": k, "v": v}

    def _keys_values(self, entries, positions):
        return entries["k"], entries["v"]

    def output(self, o):
        B, H, N, D = o.shape
        return self.o_proj(o.transpose(1, 2).reshape(B, N, H * D))    # (B, N, d)

    def tucker_factors(self) -> tuple[TuckerFactors, TuckerFactors]:
        """Theorem B.3: U1 = I, U2 = W^Q, U3 = [W^K_1..W^K_nkv], 𝒞[i] = E_i F_g(i)^T; post-softmax
        Ũ1 = I, Ũ2 = (W^O)^T, Ũ3 = W^V with the same core. Ranks (n_H, d, n_kv d_H)."""
        if self.rope:
            raise ValueError("a layer with RoPE has no position-independent attention tensors (rope=True); "
                             "use a RoPE-free layer")
        Wq, Wk = self.q_proj.weight.T, self.k_proj.weight.T            # (d, d), (d, n_kv d_H)
        Wv, Wo = self.v_proj.weight.T, self.o_proj.weight.T            # (d, n_kv d_H), W^O: (d, d)
        core = selection_core(self.n_heads, self.head_dim, self.n_kv_heads, dtype=Wq.dtype, device=Wq.device)
        eye = torch.eye(self.n_heads, dtype=Wq.dtype, device=Wq.device)
        return TuckerFactors(core, eye, Wq, Wk), TuckerFactors(core, eye, Wo.T, Wv)

    def tucker_biases(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """With ``bias=True``: ``q_bias_i = b^Q G_i`` (b^Q_i placed in group g(i)'s block of the n_kv d_H key
        space), ``out_bias = b^V-through-W^O + b^O``; the key bias cancels in the softmax (``fold_biases``)."""
        if not self.bias:
            return None
        pre, post = self.tucker_factors()
        return fold_biases(pre, post, query_bias=self.q_proj.bias, value_bias=self.v_proj.bias,
                           out_bias=self.o_proj.bias)
