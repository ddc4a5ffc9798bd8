"""Multi-head latent attention (MLA, DeepSeek-V2) in the paper's form (paper §4–6).

Queries pass through a ``q_latent`` (d_c^Q), keys and values through one shared ``kv_latent`` (d_c^K)
— or, with ``separate_kv=True``, separate key and value latents of the same width. Head i:

    c_q = X W^{DQ};  c_kv = X W^{DKV};  q_i = c_q W^{UQ}_i;  k_i = c_kv W^{UK}_i;  v_i = c_kv W^{UV}_i
    out = concat_i softmax(s q_i k_iᵀ) v_i · W^O

Computed here in the absorbed ("latent MQA") form, which is mathematically identical: every head's query
is taken to the key latent, ``q̂_i = q_i (W^{UK}_i)ᵀ`` (N, d_c^K), and attends to the latent itself as one
shared key and value, ``o_i = softmax(s q̂_i c_kvᵀ) c_kv``; the output is ``Σ_i o_i W^{UV}_i W^O_i``. The
cache therefore holds only the latent: ``d_c^K`` per token (``2 d_c^K`` with separate latents).

RoPE (``rope=``):
- ``None``: no positions.
- ``"latent"``: rotate the latent query q̂_i and the latent key c_kv (dimension d_c^K, paper §6); the
  query side then folds into one matrix F_i = W^{DQ} W^{UQ}_i (W^{UK}_i)ᵀ. No decoupled part is needed.
- ``"decoupled"``: DeepSeek-V2's extra ``rope_dim`` (d_R) dims per head: q^R_i = RoPE(c_q W^{QR}_i) and one
  shared key k^R = RoPE(X W^{KR}) concatenated to the no-rope parts; s = 1/sqrt(d_H + d_R); the cache holds
  the latent and k^R (d_c^K + d_R per token).

Latent RMSNorm (``latent_norm=``, DeepSeek-V2's ``q_a_layernorm`` / ``kv_a_layernorm``): ``"kv"`` normalizes
the key/value latent(s) right after the down-projection, ``"q_kv"`` the query latent too (None: no norm,
the paper's MLA). ``RMSNorm(c) = c / sqrt(mean(c²) + eps) * w`` is nonlinear, so a layer with a latent norm
has no attention tensors (``tucker_factors`` raises); the cache holds the normalized latent.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import check_bool, check_even, check_float, check_int
from .base import AttentionLayer
from .factors import TuckerFactors

ROPE_MODES = (None, "latent", "decoupled")
LATENT_NORMS = (None, "kv", "q_kv")


class MultiHeadLatentAttention(AttentionLayer):
    """MLA without biases (latent RMSNorms optional, off by default).

    Args:
        q_latent: d_c^Q, width of the query latent. kv_latent: d_c^K, width of the key/value latent.
        separate_kv: separate key and value latents (W^{DK}, W^{DV}), each ``kv_latent`` wide.
        rope: None | "latent" | "decoupled". rope_dim: d_R for "decoupled" (default d_H / 2, even).
        latent_norm: None | "kv" | "q_kv": RMSNorm on the key/value latent(s) (``kv_norm``, ``v_norm`` if
            separate), and with "q_kv" on the query latent (``q_norm``); each + its width in parameters.
        norm_eps: the RMSNorms' epsilon.

    Weights: ``q_down`` W^{DQ} (d→d_c^Q), ``q_up`` W^{UQ} (d_c^Q→d), ``kv_down`` W^{DKV} (d→d_c^K),
    ``v_down`` W^{DV} (separate only), ``k_up`` W^{UK} (d_c^K→d), ``v_up`` W^{UV} (d_c^K→d), ``o_proj`` W^O;
    decoupled: ``q_rope`` W^{QR} (d_c^Q→n_H d_R), ``k_rope`` W^{KR} (d→d_R).
    Parameters: ``d² + 2 d d_c^Q + 3 d d_c^K`` (+ ``d d_c^K`` separate, + ``n_H d_R d_c^Q + d d_R`` decoupled).
    """

    def __init__(self, d_model: int, n_heads: int, q_latent: int, kv_latent: int, *, separate_kv: bool = False,
                 rope: str | None = None, rope_dim: int | None = None, latent_norm: str | None = None,
                 norm_eps: float = 1e-6, **kwargs) -> None:
        super().__init__(d_model, n_heads, **kwargs)
        # a latent wider than d_model adds parameters without adding rank (like Tucker ranks above d_model)
        self.q_latent = check_int("q_latent", q_latent, high=d_model, high_name="d_model")
        self.kv_latent = check_int("kv_latent", kv_latent, high=d_model, high_name="d_model")
        check_bool("separate_kv", separate_kv)
        if rope not in ROPE_MODES:
            raise ValueError(f"rope must be one of {ROPE_MODES} for MultiHeadLatentAttention, got rope={rope!r}")
        if latent_norm not in LATENT_NORMS:
            raise ValueError(f"latent_norm must be one of {LATENT_NORMS}, got latent_norm={latent_norm!r}")
        check_float("norm_eps", norm_eps, low=0.0)
        self.separate_kv = separate_kv
        self.rope = rope
        self.latent_norm = latent_norm
        if rope == "latent":
            check_even("kv_latent", kv_latent, "for latent RoPE (rope='latent' rotates pairs of latent dims)")
        if rope == "decoupled":
            rope_dim = self.head_dim // 2 if rope_dim is None else rope_dim
            rope_dim = check_int("rope_dim", rope_dim)
            check_even("rope_dim", rope_dim, "for decoupled RoPE")
        elif rope_dim is not None:
            raise ValueError(f"rope_dim={rope_dim} is only used with rope='decoupled', got rope={rope!r}")
        self.rope_dim = rope_dim if rope == "decoupled" else 0
        d = d_model
        self.q_down = nn.Linear(d, q_latent, bias=False)
        self.q_up = nn.Linear(q_latent, d, bias=False)
        self.kv_down = nn.Linear(d, kv_latent, bias=False)
        self.v_down = nn.Linear(d, kv_latent, bias=False) if separate_kv else None
        self.k_up = nn.Linear(kv_latent, d, bias=False)
        self.v_up = nn.Linear(kv_latent, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        if rope == "decoupled":
            self.q_rope = nn.Linear(q_latent, n_heads * self.rope_dim, bias=False)
            self.k_rope = nn.Linear(d, self.rope_dim, bias=False)
        if latent_norm is not None:
            self.kv_norm = nn.RMSNorm(kv_latent, eps=norm_eps)
            self.v_norm = nn.RMSNorm(kv_latent, eps=norm_eps) if separate_kv else None
            self.q_norm = nn.RMSNorm(q_latent, eps=norm_eps) if latent_norm == "q_kv" else None

    @property
    def has_rope(self) -> bool:
        return self.rope is not None

    def _initialize(self, std: float, out_std: float) -> None:
        """Down-projections of x ~ N(0, std²) (c_q, c_kv start like MHA's q, k, v); up-projections
        variance-preserving (N(0, 1/latent)), so q_i, k_i, v_i start at std·√d; W^O ~ N(0, out_std²);
        RMSNorm weights 1 (``AttentionLayer.initialize``)."""
        ups = [self.q_up, self.k_up, self.v_up] + ([self.q_rope] if self.rope == "decoupled" else [])
        downs = [self.q_down, self.kv_down] + ([self.v_down] if self.separate_kv else [])
        downs += [self.k_rope] if self.rope == "decoupled" else []
        for lin in downs:
            nn.init.normal_(lin.weight, std=std)
        for lin in ups:
            nn.init.normal_(lin.weight, std=1.0 / math.sqrt(lin.in_features))
        nn.init.normal_(self.o_proj.weight, std=out_std)
        for norm in (getattr(self, n, None) for n in ("kv_norm", "v_norm", "q_norm")):
            if norm is not None:
                norm.reset_parameters()

    @property
    def scale(self) -> float:
        """1/sqrt(d_H), or 1/sqrt(d_H + d_R) with decoupled RoPE (DeepSeek-V2)."""
        return 1.0 / math.sqrt(self.head_dim + self.rope_dim)

    def cache_spec(self) -> dict[str, tuple[int, int]]:
        spec = {"kv": (1, self.kv_latent)} if not self.separate_kv else {"k": (1, self.kv_latent),
                                                                         "v": (1, self.kv_latent)}
        if self.rope == "decoupled":
            spec["k_rope"] = (1, self.rope_dim)
        return spec

    # ------------------------------------------------------------------------------------- per head
    def _up(self, lin: nn.Linear) -> torch.Tensor:
        """An up-projection's weight as per-head matrices: (H, latent, d_H), head i = W^{U·}_i."""
        return lin.weight.T.reshape(lin.in_features, self.n_heads, self.head_dim).transpose(0, 1)

    def _project(self, x, positions):
        B, N, _ = x.shape
        c_q = self.q_down(x)                                            # (B, N, dcQ)
        if self.latent_norm == "q_kv":
            c_q = self.q_norm(c_q)
        q = self.q_up(c_q).view(B, N, self.n_heads, self.head_dim).transpose(1, 2)   # (B, H, N, d_H)
        q_lat = q @ self._up(self.k_up).transpose(1, 2)                 # (B, H, N, dcK): q_i (W^UK_i)^T
        c_k = self.kv_down(x).unsqueeze(1)                              # (B, 1, N, dcK)
        if self.latent_norm is not None:
            c_k = self.kv_norm(c_k)
        if self.rope == "latent":
            q_lat = self._rope(q_lat, positions)
        if self.separate_kv:
            if self.rope == "latent":
                c_k = self._rope(c_k, positions)                        # cache holds the rotated key latent
            c_v = self.v_down(x).unsqueeze(1)                           # (B, 1, N, dcK)
            entries = {"k": c_k, "v": self.v_norm(c_v) if self.latent_norm is not None else c_v}
        else:
            entries = {"kv": c_k}                                       # one latent; rotated when read
        if self.rope == "decoupled":
            q_r = self.q_rope(c_q).view(B, N, self.n_heads, self.rope_dim).transpose(1, 2)  # (B, H, N, dR)
            q_lat = torch.cat((q_lat, self._rope(q_r, positions)), dim=-1)
            entries["k_rope"] = self._rope(self.k_rope(x).unsqueeze(1), positions)          # (B, 1, N, dR)
        return q_lat, entries

    def _keys_values(self, entries, positions):
        if self.separate_kv:
            k, v = entries["k"], entries["v"]
        else:
            v = entries["kv"]
            k = self._rope(v, positions) if self.rope == "latent" else v
        if self.rope == "decoupled":
            k = torch.cat((k, entries["k_rope"]), dim=-1)               # (B, 1, S, dcK + dR)
        return k, v

    def output(self, o):
        B, H, N, _ = o.shape
        heads = o @ self._up(self.v_up)                                 # (B, H, N, d_H): o_i W^UV_i
        return self.o_proj(heads.transpose(1, 2).reshape(B, N, self.d_model))

    @property
    def latent_rope(self) -> bool:
        return self.rope == "latent"

    def fold_queries(self) -> torch.Tensor:
        """``F_i = W^{DQ} W^{UQ}_i (W^{UK}_i)ᵀ`` (n_H, d, d_c^K) for any ``rope`` (with "decoupled" this is the
        no-RoPE part; the decoupled dims stay separate). A query-latent RMSNorm sits between W^{DQ} and W^{UQ}
        and does not fold."""
        if self.latent_norm == "q_kv":
            raise ValueError("fold_queries: the query-latent RMSNorm (latent_norm='q_kv') sits between W^DQ and "
                             "W^UQ and does not fold; use latent_norm=None or 'kv'")
        G = self._up(self.q_up) @ self._up(self.k_up).transpose(1, 2)   # (H, dcQ, dcK)
        return self.q_down.weight.T @ G                                 # (d, dcQ) @ (H, dcQ, dcK) -> (H, d, dcK)

    def tucker_factors(self) -> tuple[TuckerFactors, TuckerFactors]:
        """Theorem B.4: U1 = I, U2 = W^{DQ}, U3 = W^{DKV}, G_i = W^{UQ}_i (W^{UK}_i)ᵀ; post-softmax Ũ1 = I,
        Ũ2 = I_d, Ũ3 = W^{DKV} (W^{DV} if separate), G̃_i = (W^O_i)ᵀ (W^{UV}_i)ᵀ."""
        if self.rope is not None:
            raise ValueError(f"a layer with RoPE has no position-independent attention tensors (rope={self.rope!r}); "
                             "use a RoPE-free layer")
        if self.latent_norm is not None:
            raise ValueError(f"a layer with a latent RMSNorm (latent_norm={self.latent_norm!r}) is not multilinear "
                             "in x and has no attention tensors; use latent_norm=None")
        W = self.q_down.weight
        eye_h = torch.eye(self.n_heads, dtype=W.dtype, device=W.device)
        G = self._up(self.q_up) @ self._up(self.k_up).transpose(1, 2)   # (H, dcQ, dcK)
        Wo = self.o_proj.weight.T.reshape(self.n_heads, self.head_dim, self.d_model)  # W^O_i: (H, d_H, d)
        Gt = Wo.transpose(1, 2) @ self._up(self.v_up).transpose(1, 2)   # (H, d, dcK)
        Wv_down = (self.v_down if self.separate_kv else self.kv_down).weight.T
        eye_d = torch.eye(self.d_model, dtype=W.dtype, device=W.device)
        return (TuckerFactors(G, eye_h, self.q_down.weight.T, self.kv_down.weight.T),
                TuckerFactors(Gt, eye_h, eye_d, Wv_down))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, q_latent={self.q_latent}, "
                f"kv_latent={self.kv_latent}, separate_kv={self.separate_kv}, rope={self.rope!r}, "
                f"rope_dim={self.rope_dim}, latent_norm={self.latent_norm!r}")
