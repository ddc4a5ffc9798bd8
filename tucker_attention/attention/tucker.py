"""Tucker Attention (paper §3): both attention tensors in Tucker form, computed as latent MQA.

    𝒲 = 𝒞 ×₁ U₁ ×₂ U₂ ×₃ U₃          (modes head, query, key;   ranks r1, r2, r3)
    𝒲̃ = 𝒞̃ ×₁ Ũ₁ ×₂ Ũ₂ ×₃ Ũ₃          (modes head, output, value; ranks r̃1, r̃2, r̃3)

Forward, with ``G = 𝒞 ×₁ U₁`` (n_H, r2, r3) and ``G̃ = 𝒞̃ ×₁ Ũ₁`` (n_H, r̃2, r̃3), never forming d×d tensors:

    P = X U₂ (N, r2);  Q_i = P G_i (N, r3);  K = X U₃ (N, r3);  V = X Ũ₃ (N, r̃3)   — one K, V for all heads
    O_i = softmax(s Q_i Kᵀ) V;  out = Σ_i O_i G̃_iᵀ Ũ₂ᵀ

which is multi-query attention with head size r3 (any MQA/GQA kernel runs it), s = 1/√d_H.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence

import torch
from torch import nn

from ._checks import check_even, check_ranks
from .base import AttentionLayer
from .cache import KVCache
from .factors import TuckerFactors
from .rope import rope_angles

KERNELS = ("sdpa", "fused")


class TuckerAttention(AttentionLayer):
    """Tucker Attention layer.

    Args:
        d_model, n_heads: model width d and number of heads n_H (s = 1/sqrt(d/n_H)).
        ranks: (r1, r2, r3) of the pre-softmax tensor: head rank r1 <= n_H, query rank r2 <= d, key rank r3 <= d.
        post_ranks: (r̃1, r̃2, r̃3) of the post-softmax tensor (head, output, value); None: same as ``ranks``.
        shared_kv: keys and values share one factor (U3 = Ũ3; needs r3 == r̃3): the cache holds r3 per token.
        rope: latent RoPE in the r3-dimensional key space (r3 even).
        bias: a per-head query offset ``q_bias`` (n_H, r3) in the latent key space, added to Q_i before RoPE,
            and an output bias ``out_bias`` (d,) — what biased MHA layers (GPT-2, ViT) become exactly
            (``factors.fold_biases``: key biases cancel in the softmax, value biases fold into ``out_bias``).
            Zero-initialized; + ``n_H r3 + d`` parameters. Default: no biases.
        kernel: "sdpa" (default): form the queries ``Q_i = P G_i`` and call ``backends.attend``; "fused": the
            Triton kernel of ``fused.py`` forms each query block in registers from ``P`` and ``G_i`` (with RoPE
            and the causal mask in-kernel), so the (B, n_H, N, r3) queries never reach memory. Needs triton
            (``pip install 'tucker-attention[kernels]'``) and CUDA tensors (or ``TRITON_INTERPRET=1`` on CPU);
            no attention dropout in training; ``backend`` is not used by it.

    Parameters (exactly): ``r1 r2 r3 + n_H r1 + d r2 + d r3`` + the same with tildes (``- d r3`` if shared).
    KV cache per token: ``r3 + r̃3`` (``r3`` if shared).
    """

    def __init__(self, d_model: int, n_heads: int, ranks: Sequence[int], post_ranks: Sequence[int] | None = None,
                 *, shared_kv: bool = False, rope: bool = False, bias: bool = False, kernel: str = "sdpa",
                 **kwargs) -> None:
        super().__init__(d_model, n_heads, **kwargs)
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got kernel={kernel!r}")
        if kernel == "fused" and importlib.util.find_spec("triton") is None:
            raise ValueError("kernel='fused' needs triton, which is not installed: pip install "
                             "'tucker-attention[kernels]' (or pip install triton), or use kernel='sdpa'")
        self.kernel = kernel
        self._fused_call: dict | None = None
        limits, names = (n_heads, d_model, d_model), ("n_heads", "d_model", "d_model")
        self.ranks = check_ranks("ranks", ranks, limits, names)
        self.post_ranks = self.ranks if post_ranks is None else check_ranks("post_ranks", post_ranks, limits, names)
        for arg, val in (("shared_kv", shared_kv), ("rope", rope), ("bias", bias)):
            if not isinstance(val, bool):
                raise TypeError(f"{arg} must be a bool, got {arg}={val!r}")
        if shared_kv and self.ranks[2] != self.post_ranks[2]:
            raise ValueError(f"shared_kv=True needs equal key and value ranks, got ranks[2]={self.ranks[2]} and "
                             f"post_ranks[2]={self.post_ranks[2]}")
        if rope:
            check_even("ranks[2]", self.ranks[2], "for latent RoPE (rope=True rotates pairs of the r3 key dims)")
        self.shared_kv = shared_kv
        self.rope = rope
        r1, r2, r3 = self.ranks
        p1, p2, p3 = self.post_ranks
        self.core = nn.Parameter(torch.empty(r1, r2, r3))
        self.U1 = nn.Parameter(torch.empty(n_heads, r1))
        self.U2 = nn.Parameter(torch.empty(d_model, r2))
        self.U3 = nn.Parameter(torch.empty(d_model, r3))
        self.post_core = nn.Parameter(torch.empty(p1, p2, p3))
        self.post_U1 = nn.Parameter(torch.empty(n_heads, p1))
        self.post_U2 = nn.Parameter(torch.empty(d_model, p2))
        # shared_kv: Ũ3 is U3 itself, one Parameter under both names (parameters() lists it once)
        self.post_U3 = self.U3 if shared_kv else nn.Parameter(torch.empty(d_model, p3))
        self.bias = bias
        self.q_bias = nn.Parameter(torch.empty(n_heads, r3)) if bias else None
        self.out_bias = nn.Parameter(torch.empty(d_model)) if bias else None
        self.reset_parameters()

    @property
    def has_rope(self) -> bool:
        return self.rope

    def reset_parameters(self) -> None:
        """Variance-preserving init: ``initialize(std=1/√d)`` (x U2, x U3, x Ũ3, each head's query and the
        output keep the variance of x)."""
        self.initialize(std=1.0 / math.sqrt(self.d_model))

    def _initialize(self, std: float, out_std: float) -> None:
        """The rule of ``AttentionLayer.initialize`` in Tucker form (with unit-variance x):

        - U2, U3, Ũ3 ~ N(0, std²): P = x U2, K = x U3 and V = x Ũ3 start at std·√d, like MHA's x W^Q, x W^K, x W^V;
        - U1 ~ N(0, 1/r1), 𝒞 ~ N(0, 1/r2): G_i = Σ_a U1[i,a] 𝒞[a] has variance 1/r2, so Q_i = P G_i keeps P's scale;
        - Ũ1 ~ N(0, 1/r̃1), 𝒞̃ ~ N(0, 1/(n_H r̃3)): Σ_i O_i G̃_iᵀ keeps the scale of the head outputs O_i;
        - Ũ2 ~ N(0, out_std² d / r̃2): the output has the variance of MHA's concat(O_i) W^O with W^O ~ N(0, out_std²).
        """
        d, H = self.d_model, self.n_heads
        r1, r2, _ = self.ranks
        p1, p2, p3 = self.post_ranks
        nn.init.normal_(self.U1, std=1 / math.sqrt(r1))
        nn.init.normal_(self.core, std=1 / math.sqrt(r2))
        nn.init.normal_(self.U2, std=std)
        nn.init.normal_(self.U3, std=std)
        nn.init.normal_(self.post_U1, std=1 / math.sqrt(p1))
        nn.init.normal_(self.post_core, std=1 / math.sqrt(p3 * H))
        nn.init.normal_(self.post_U2, std=out_std * math.sqrt(d / p2))
        if not self.shared_kv:
            nn.init.normal_(self.post_U3, std=std)
        if self.bias:
            nn.init.zeros_(self.q_bias)
            nn.init.zeros_(self.out_bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Also load state dicts written before Ũ3 was the parameter ``post_U3`` (``_post_U3``, or none when
        shared)."""
        old, new = prefix + "_post_U3", prefix + "post_U3"
        if old in state_dict:
            state_dict[new] = state_dict.pop(old)
        if self.shared_kv and new not in state_dict and prefix + "U3" in state_dict:
            state_dict[new] = state_dict[prefix + "U3"]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def cache_spec(self) -> dict[str, tuple[int, int]]:
        if self.shared_kv:
            return {"kv": (1, self.ranks[2])}
        return {"k": (1, self.ranks[2]), "v": (1, self.post_ranks[2])}

    # ------------------------------------------------------------------------------ head cores
    def head_cores(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``G = 𝒞 ×₁ U₁`` and ``G̃ = 𝒞̃ ×₁ Ũ₁`` laid out for one matrix product each (paper §3):

        - ``G_all`` (r2, n_H·r3): column block ``i`` is ``G_i``, so ``P @ G_all`` is every head's query ``Q_i``;
        - ``Gt_all`` (n_H·r̃3, r̃2): row block ``i`` is ``G̃_iᵀ``, so ``concat_i(O_i) @ Gt_all = Σ_i O_i G̃_iᵀ``.

        Formed once per forward. In inference (no gradient needed) they are kept and reused until a weight
        they come from changes — an optimizer step, ``load_state_dict``, any in-place write (tracked by the
        tensors' version counters) or ``.to()`` — so decoding does not form them for every token.
        """
        weights = (self.U1, self.core, self.post_U1, self.post_core)
        keep = not torch.compiler.is_compiling() and not (torch.is_grad_enabled()
                                                        and any(w.requires_grad for w in weights))
        if keep and any(w.is_inference() for w in weights):
            keep = False                                   # inference tensors have no version counter
        if keep:
            stamp = tuple((w._version, w.data_ptr(), w.dtype, w.device) for w in weights)
            hit = self._derived.get("head_cores")
            if hit is not None and hit[0] == stamp:
                return hit[1]
        H = self.n_heads
        r2, r3 = self.ranks[1], self.ranks[2]
        p2, p3 = self.post_ranks[1], self.post_ranks[2]
        G = (self.U1 @ self.core.reshape(self.ranks[0], r2 * r3)).view(H, r2, r3)         # (H, r2, r3)
        Gt = (self.post_U1 @ self.post_core.reshape(self.post_ranks[0], p2 * p3)).view(H, p2, p3)
        cores = (G.permute(1, 0, 2).reshape(r2, H * r3),                                   # (r2, H·r3)
                 Gt.permute(0, 2, 1).reshape(H * p3, p2))                                  # (H·r̃3, r̃2)
        if keep:
            self._derived["head_cores"] = (stamp, cores)
        return cores

    def _project(self, x, positions):
        B, N, _ = x.shape
        if self._fused_call is not None:                               # kernel="fused": queries stay latent
            self._fused_call["positions"] = positions
            k = (x @ self.U3).unsqueeze(1)
            if self.shared_kv:
                return x @ self.U2, {"kv": k}
            k = self._rope(k, positions) if self.rope else k
            return x @ self.U2, {"k": k, "v": (x @ self.post_U3).unsqueeze(1)}
        G_all, _ = self.head_cores()                                   # (r2, H·r3)
        P = x @ self.U2                                                # (B, N, r2)
        q = (P @ G_all).view(B, N, self.n_heads, self.ranks[2]).transpose(1, 2)   # (B, H, N, r3): Q_i = P G_i
        if self.bias:
            q = q + self.q_bias.unsqueeze(1)                           # (H, 1, r3): per-head query offset
        k = (x @ self.U3).unsqueeze(1)                                 # (B, 1, N, r3)
        if self.rope:
            q = self._rope(q, positions)
        if self.shared_kv:                                             # one latent; rotated when read
            return q, {"kv": k}
        if self.rope:
            k = self._rope(k, positions)                               # cache holds rotated keys
        v = (x @ self.post_U3).unsqueeze(1)                            # (B, 1, N, r̃3)
        return q, {"k": k, "v": v}

    def _keys_values(self, entries, positions):
        if self.shared_kv:
            kv = entries["kv"]                                         # (B, 1, S, r3)
            return (self._rope(kv, positions) if self.rope else kv), kv
        return entries["k"], entries["v"]

    def output(self, o):
        B, H, N, Dv = o.shape
        _, Gt_all = self.head_cores()                                  # (H·r̃3, r̃2)
        y = o.transpose(1, 2).reshape(B, N, H * Dv) @ Gt_all           # (B, N, r̃2): Σ_i O_i G̃_iᵀ
        y = y @ self.post_U2.T                                         # (B, N, d)
        return y + self.out_bias if self.bias else y

    def forward(self, x: torch.Tensor, *, causal: bool = False, cache: KVCache | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """As ``AttentionLayer.forward``; with ``kernel="fused"`` the attention runs in the fused Triton kernel
        (``fused.fused_tucker_attention``) on ``P = x U2`` and the head cores, and gives the same output."""
        if self.kernel != "fused":
            return super().forward(x, causal=causal, cache=cache, positions=positions)
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool, got {causal!r}")
        if self.training and self.dropout > 0:
            raise ValueError(f"kernel='fused' has no attention dropout, got dropout={self.dropout} in training; "
                             "use dropout=0.0, kernel='sdpa', or layer.eval()")
        from .fused import fused_tucker_attention, fused_unavailable

        why = fused_unavailable(x.device)
        if why is not None:
            raise RuntimeError(f"kernel='fused': {why}")
        self._fused_call = {}
        try:
            P, k, v = self.qkv(x, cache=cache, positions=positions)   # P (B, N, r2); k, v (B, 1, S, ·)
            positions = self._fused_call["positions"]
        finally:
            self._fused_call = None
        r3 = self.ranks[2]
        G_all, _ = self.head_cores()                                   # (r2, H·r3)
        G = G_all.view(-1, self.n_heads, r3).transpose(0, 1).to(P.dtype)   # (H, r2, r3)
        cos = sin = None
        if self.rope:
            cos, sin = rope_angles(positions, r3, base=self.rope_base)
        # a static-shape cache holds max_len slots; the kernel reads its fill count on the device
        kv_len = cache._filled if cache is not None and cache.static else None
        o = fused_tucker_attention(P, G, k[:, 0], v[:, 0], scale=self.scale, causal=causal,
                                   q_bias=self.q_bias.to(P.dtype) if self.bias else None, rope_cos=cos,
                                   rope_sin=sin, rope_style=self.rope_style, kv_len=kv_len)
        return self.output(o)                                          # (B, N, d_model)

    @property
    def latent_rope(self) -> bool:
        return self.rope

    def fold_queries(self) -> torch.Tensor:
        """``F_i = U2 G_i`` (n_H, d, r3), also with latent RoPE (the rotation acts on the r3 key latent)."""
        return self.U2 @ torch.einsum("ha,abc->hbc", self.U1, self.core)   # (H, d, r3)

    def tucker_factors(self) -> tuple[TuckerFactors, TuckerFactors]:
        """Its own parameters: (𝒞, U1, U2, U3) and (𝒞̃, Ũ1, Ũ2, Ũ3)."""
        if self.rope:
            raise ValueError("a layer with RoPE has no position-independent attention tensors (rope=True); "
                             "use a RoPE-free layer")
        return (TuckerFactors(self.core, self.U1, self.U2, self.U3),
                TuckerFactors(self.post_core, self.post_U1, self.post_U2, self.post_U3))

    def tucker_biases(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(q_bias (n_H, r3), out_bias (d,))`` with ``bias=True``, else None."""
        return (self.q_bias, self.out_bias) if self.bias else None

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, ranks={self.ranks}, post_ranks={self.post_ranks}, "
                f"shared_kv={self.shared_kv}, rope={self.rope}, bias={self.bias}"
                + (f", kernel={self.kernel!r}" if self.kernel != "sdpa" else ""))
