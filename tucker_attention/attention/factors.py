"""Tucker factors of an attention layer (paper §3–4).

Every layer of the family *is* a pair of Tucker tensors: the pre-softmax ``𝒲 = 𝒞 ×₁ U₁ ×₂ U₂ ×₃ U₃``
(modes head, query, key) and the post-softmax ``𝒲̃`` (modes head, output, value). Each layer class
returns its exact factors (MHA: Theorem B.2, GQA/MQA: B.3, MLA: B.4, Tucker: its own parameters), so the
dense tensors, conversions and rank analysis are generic functions of these factors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TuckerFactors:
    """``T = core ×₁ U1 ×₂ U2 ×₃ U3``.

    core: (r1, r2, r3). U1: (n_heads, r1). U2: (d, r2). U3: (d, r3). All tensors share dtype and device.
    """

    core: torch.Tensor
    U1: torch.Tensor
    U2: torch.Tensor
    U3: torch.Tensor

    def __post_init__(self) -> None:
        r1, r2, r3 = self.core.shape
        for name, U, r in (("U1", self.U1, r1), ("U2", self.U2, r2), ("U3", self.U3, r3)):
            if U.dim() != 2 or U.shape[1] != r:
                raise ValueError(f"{name} must have shape (n, {r}) to match core {tuple(self.core.shape)}, "
                                 f"got {tuple(U.shape)}")

    @property
    def ranks(self) -> tuple[int, int, int]:
        """The Tucker ranks (r1, r2, r3) of this parameterization (upper bounds of the multilinear rank)."""
        return tuple(self.core.shape)  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the dense tensor: (n_heads, d, d)."""
        return (self.U1.shape[0], self.U2.shape[0], self.U3.shape[0])

    def head_cores(self) -> torch.Tensor:
        """``G = core ×₁ U1``: (n_heads, r2, r3); head i's fused matrix is ``U2 @ G[i] @ U3.T``."""
        return torch.einsum("ha,abc->hbc", self.U1, self.core)

    def full(self) -> torch.Tensor:
        """The dense tensor (n_heads, d, d) — for analysis only; layers never form it in forward."""
        return torch.einsum("hbc,ib,jc->hij", self.head_cores(), self.U2, self.U3)

    def map(self, fn) -> TuckerFactors:
        """Apply ``fn`` to every tensor (e.g. ``lambda t: t.detach().double()``)."""
        return TuckerFactors(fn(self.core), fn(self.U1), fn(self.U2), fn(self.U3))


def fold_biases(pre: TuckerFactors, post: TuckerFactors, *, query_bias: torch.Tensor | None = None,
                value_bias: torch.Tensor | None = None, out_bias: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Biases of a layer in the Tucker view: ``(q_bias (n_H, r3), out_bias (d,))``.

    A layer whose query latent ``P = X U2`` carries a bias ``b_P`` (r2,), whose value latent ``V = X Ũ3``
    a bias ``b_V`` (r̃3,) and whose output a bias ``b_o`` (d,) computes, per head i,

        scores_i = s (P G_i + b_P G_i) Kᵀ                  -> a per-head query offset  q_bias_i = b_P G_i  (r3,)
        out      = Σ_i softmax(·)(V + b_V) G̃_iᵀ Ũ2ᵀ + b_o  -> out_bias = Σ_i b_V G̃_iᵀ Ũ2ᵀ + b_o       (d,)

    because softmax rows sum to 1 (``softmax(·)·1 b_V = 1 b_V``). A key bias ``b_K`` needs no term: it adds
    ``s (P G_i + b_P G_i) b_Kᵀ`` to every score of a query row, a per-row constant the softmax cancels.
    For MHA (U2 = W^Q, G_i = E_i E_iᵀ, U3 = W^K) this is the familiar
    ``s (x W^Q_i + b^Q_i)(x_k W^K_i)ᵀ = s x W_i x_kᵀ + s (b^Q_i (W^K_i)ᵀ) x_kᵀ`` and ``b_out' = b_V W^O + b_o``.
    """
    G, Gt = pre.head_cores(), post.head_cores()                        # (H, r2, r3), (H, r̃2, r̃3)
    n_heads, d = pre.U1.shape[0], post.U2.shape[0]
    q_bias = G.new_zeros(n_heads, G.shape[2]) if query_bias is None else torch.einsum("r,hrs->hs", query_bias, G)
    out = G.new_zeros(d) if out_bias is None else out_bias
    if value_bias is not None:
        out = out + torch.einsum("v,hov->o", value_bias, Gt) @ post.U2.T
    return q_bias, out
