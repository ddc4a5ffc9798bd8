"""The tensor view of attention (paper §2): the dense tensors 𝒲, 𝒲̃ of any layer, and tools on them.

Every RoPE-free layer of the family is, exactly, a pair of third-order tensors of shape ``(n_H, d, d)``

    𝒲[i]  = W_i    = W^Q_i (W^K_i)ᵀ      modes (head, query, key)    — pre-softmax
    𝒲̃[i]  = W̃_iᵀ   = (W^V_i W^O_i)ᵀ     modes (head, output, value) — post-softmax

and a score scale ``s``. Paper Eq. 6 computes the layer from them alone:

    H¹ = σ(s · 𝒲 ×₂ X ×₃ X)   (n_H, N, N)        H² = 𝒲̃ ×₃ X   (n_H, d, N)
    out_{jk} = Σ_i Σ_ℓ H¹_{ijℓ} H²_{ikℓ}

``attention_tensors`` builds (𝒲, 𝒲̃, s) generically from the layer's own exact Tucker factors
(``layer.tucker_factors()``), so it knows no layer class. Modes are numbered **1, 2, 3 as in the paper**
(1 = head, 2 = query/output, 3 = key/value) in every function that takes one; they reject 0.

Biases (peers' layers; paper §2 leaves them out) have a dense view too (``attention_biases``): a key-side
score bias per head ``β_i ∈ R^d`` (score ``s β_i · x_ℓ``) and one output bias ``b ∈ R^d``.
"""

from __future__ import annotations

import math

import tensorly as tl
import torch
from tensorly.base import unfold as _tl_unfold
from tensorly.tenalg import mode_dot as _tl_mode_dot

from .attention import AttentionLayer
from .validation import check_float

__all__ = ["attention_tensors", "attention_biases", "unfold", "mode_product", "multilinear_rank",
           "unfolding_spectra", "eq6_forward", "relative_error"]


def _check_layer(layer: object) -> AttentionLayer:
    if not isinstance(layer, AttentionLayer):
        raise TypeError("layer must be an attention layer of tucker_attention (MultiHeadAttention, "
                        "GroupedQueryAttention, MultiHeadLatentAttention, TuckerAttention), got "
                        f"{type(layer).__name__}; convert a peer's module first with convert.from_peer")
    return layer


def attention_tensors(layer: AttentionLayer, *, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The dense tensors of paper §2 of any RoPE-free layer: ``(W, W_tilde, scale)``.

    Returns:
        W: (n_H, d, d), ``W[i] = W_i`` (head, query, key). W_tilde: (n_H, d, d), ``W_tilde[i] = W̃_iᵀ``
        (head, output, value). scale: the layer's score scale ``s``. Same dtype/device as the weights;
        detached from autograd unless ``grad=True`` (then gradients flow back to the layer's weights).

    Raises ``ValueError`` for a layer with RoPE (its scores depend on positions, so no such tensors exist)
    or with a latent RMSNorm; biases are not part of the tensors (see ``attention_biases``).
    """
    with torch.enable_grad() if grad else torch.no_grad():
        pre, post = _check_layer(layer).tucker_factors()
        return pre.full(), post.full(), layer.scale


def attention_biases(layer: AttentionLayer) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The dense view of a layer's biases, or None if it has none: ``(query_bias (n_H, d), out_bias (d,))``.

    ``query_bias[i] = β_i = q_bias_i U3ᵀ``: head i's scores gain ``s β_i · x_ℓ`` for key token ℓ (for MHA
    ``β_i = b^Q_i (W^K_i)ᵀ``); ``out_bias`` is added to every output row (for MHA ``b^V W^O + b^O``).
    """
    biases = _check_layer(layer).tucker_biases()
    if biases is None:
        return None
    q_bias, out_bias = biases
    pre, _ = layer.tucker_factors()
    return q_bias @ pre.U3.T, out_bias


# ------------------------------------------------------------------------------ multilinear algebra
def _check_tensor(name: str, T: object) -> torch.Tensor:
    if not isinstance(T, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(T).__name__}")
    if T.dim() < 1:
        raise ValueError(f"{name} must have at least one mode, got {name}.shape={tuple(T.shape)}")
    return T


def _check_mode(mode: object, order: int) -> int:
    if isinstance(mode, bool) or not isinstance(mode, int):
        raise TypeError(f"mode must be an int, got mode={mode!r}")
    if not 1 <= mode <= order:
        raise ValueError(f"mode must be in [1, {order}] (1-based, as in the paper: 1 = head, 2 = query/output, "
                         f"3 = key/value), got mode={mode}")
    return mode - 1


def unfold(T: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-``mode`` unfolding (matricization): (I_mode, product of the other sizes), via ``tensorly.base.unfold``.

    Column order is tensorly's (C order of the remaining modes); ranks and singular values do not depend on it.
    """
    T = _check_tensor("T", T)
    m = _check_mode(mode, T.dim())
    with tl.backend_context("pytorch"):
        return _tl_unfold(T, m)


def mode_product(T: torch.Tensor, U: torch.Tensor, mode: int) -> torch.Tensor:
    """``T ×_mode U`` (paper §1): ``U`` (J, I_mode) replaces mode ``mode`` (size I_mode) by size J,
    ``(T ×_n U)_{…j…} = Σ_i T_{…i…} U_{j,i}``. Uses ``tensorly.tenalg.mode_dot``."""
    T = _check_tensor("T", T)
    m = _check_mode(mode, T.dim())
    if not isinstance(U, torch.Tensor) or U.dim() != 2:
        raise ValueError(f"U must be a 2-D torch.Tensor (J, I_mode), got {type(U).__name__} "
                         f"{tuple(U.shape) if isinstance(U, torch.Tensor) else ''}")
    if U.shape[1] != T.shape[m]:
        raise ValueError(f"U.shape[1]={U.shape[1]} must equal the size of mode {mode} of T, "
                         f"T.shape[{m}]={T.shape[m]} (T.shape={tuple(T.shape)})")
    with tl.backend_context("pytorch"):
        return _tl_mode_dot(T, U, m)


def unfolding_spectra(T: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Singular values (descending, float64) of every unfolding of ``T``: one 1-D tensor per mode."""
    T = _check_tensor("T", T).detach().to(torch.float64)
    return tuple(torch.linalg.svdvals(unfold(T, n)) for n in range(1, T.dim() + 1))


def multilinear_rank(T: torch.Tensor, rtol: float = 1e-10) -> tuple[int, ...]:
    """Numerical multilinear rank ``(r1, r2, r3)``: per mode, the number of singular values of the unfolding
    above ``rtol`` times the largest one (0 for a zero tensor).

    The SVD runs in float64; for tensors computed in float32 use ``rtol`` around 1e-5.
    """
    rtol = check_float("rtol", rtol, low=0.0, high=1.0, low_open=True, high_open=True)
    ranks = []
    for s in unfolding_spectra(T):
        top = s[0] if s.numel() else s.new_zeros(())
        ranks.append(int((s > rtol * top).sum()) if top > 0 else 0)
    return tuple(ranks)


def tucker_decomposition(T: torch.Tensor, ranks: tuple[int, ...] | list[int], *, method: str = "hosvd",
                         n_iter_max: int = 100, tol: float = 1e-8, modes: tuple[int, ...] | None = None
                         ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Truncated Tucker decomposition ``T ≈ core ×₁ U1 ×₂ U2 ×₃ U3`` with tensorly (pytorch backend).

    ``method="hosvd"``: truncated HOSVD (leading left singular vectors of each unfolding, no iterations);
    ``"hooi"``: higher-order orthogonal iteration started from the HOSVD (at most ``n_iter_max`` sweeps).
    ``modes`` (1-based, like ``unfold`` and ``mode_product``): decompose only these modes, one rank each,
    and leave the others as they are (the core keeps their full size); default every mode.
    Returns ``(core, [U_n for n in modes])`` with orthonormal factors, e.g. ``(core (r1, r2, r3), [U1 (I1, r1),
    U2 (I2, r2), U3 (I3, r3)])``.
    """
    from tensorly.decomposition import partial_tucker

    T = _check_tensor("T", T)
    if method not in ("hosvd", "hooi"):
        raise ValueError(f"method must be 'hosvd' or 'hooi', got method={method!r}")
    modes = tuple(range(1, T.dim() + 1)) if modes is None else tuple(modes)
    axes = [_check_mode(m, T.dim()) for m in modes]
    if len(ranks) != len(modes) or any(not 1 <= int(r) <= T.shape[a] for r, a in zip(ranks, axes)):
        raise ValueError(f"ranks must have one entry per decomposed mode {modes} with 1 <= r_n <= the mode's size; "
                         f"got ranks={tuple(ranks)} for T.shape={tuple(T.shape)}")
    with tl.backend_context("pytorch"):
        (core, factors), _ = partial_tucker(T, rank=[int(r) for r in ranks], modes=axes, init="svd",
                                            n_iter_max=0 if method == "hosvd" else n_iter_max, tol=tol)
    return core, list(factors)


def hosvd_error_bounds(T: torch.Tensor, ranks: tuple[int, ...] | list[int]) -> tuple[float, float]:
    """Bounds on the relative error of the best rank-``ranks`` Tucker approximation and of the HOSVD.

    With ``τ_n`` the norm of the singular values of unfolding n beyond ``r_n``:
    ``max_n τ_n ≤ ‖T − T_best‖ ≤ ‖T − T_HOSVD‖ ≤ sqrt(Σ_n τ_n²)`` (De Lathauwer et al. 2000), so the HOSVD is
    within a factor sqrt(3) of the best. Returns ``(max_n τ_n, sqrt(Σ τ_n²))`` divided by ``‖T‖``.
    """
    spectra = unfolding_spectra(T)
    if len(ranks) != len(spectra):
        raise ValueError(f"ranks must have one entry per mode ({len(spectra)}), got ranks={tuple(ranks)}")
    tau = [float(sv[int(r):].square().sum().sqrt()) for sv, r in zip(spectra, ranks)]
    norm = float(torch.linalg.vector_norm(T.detach().to(torch.float64)))
    return max(tau) / norm, math.sqrt(sum(t * t for t in tau)) / norm


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """``‖approx − exact‖_F / ‖exact‖_F`` in float64."""
    a, e = approx.detach().to(torch.float64), exact.detach().to(torch.float64)
    if a.shape != e.shape:
        raise ValueError(f"approx.shape={tuple(a.shape)} must equal exact.shape={tuple(e.shape)}")
    return float(torch.linalg.vector_norm(a - e) / torch.linalg.vector_norm(e))


# ---------------------------------------------------------------------------------------- Eq. 6
def eq6_forward(W: torch.Tensor, W_tilde: torch.Tensor, scale: float, x: torch.Tensor, causal: bool = False, *,
                query_bias: torch.Tensor | None = None, out_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Attention computed from the dense tensors alone, paper Eq. 6, for a batch ``x`` (B, N, d):

        H¹ = σ(s · 𝒲 ×₂ X ×₃ X)  (n_H, N, N),   H² = 𝒲̃ ×₃ X  (n_H, d, N),   out_{jk} = Σ_i Σ_ℓ H¹_{ijℓ} H²_{ikℓ}

    ``causal`` masks key ℓ > query j before σ. Optional biases in the dense view of ``attention_biases``:
    ``query_bias`` (n_H, d) adds ``s β_i · x_ℓ`` to head i's scores, ``out_bias`` (d,) to every output row.
    A reference (a loop over the batch with explicit mode products), not a fast path.
    """
    for name, T in (("W", W), ("W_tilde", W_tilde)):
        if not isinstance(T, torch.Tensor) or T.dim() != 3 or T.shape[1] != T.shape[2]:
            raise ValueError(f"{name} must be a (n_heads, d, d) tensor, got "
                             f"{tuple(T.shape) if isinstance(T, torch.Tensor) else type(T).__name__}")
    if W.shape != W_tilde.shape:
        raise ValueError(f"W and W_tilde must have the same shape, got {tuple(W.shape)} and {tuple(W_tilde.shape)}")
    n_heads, d, _ = W.shape
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != d:
        raise ValueError(f"x must have shape (batch, seq, d={d}), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if query_bias is not None and tuple(query_bias.shape) != (n_heads, d):
        raise ValueError(f"query_bias must have shape (n_heads, d)={(n_heads, d)}, got {tuple(query_bias.shape)}")
    if out_bias is not None and tuple(out_bias.shape) != (d,):
        raise ValueError(f"out_bias must have shape (d,)={(d,)}, got {tuple(out_bias.shape)}")
    N = x.shape[1]
    outs = []
    for X in x:                                                        # X: (N, d)
        scores = scale * mode_product(mode_product(W, X, 2), X, 3)     # 𝒲 ×₂ X ×₃ X: (n_H, N, N)
        if query_bias is not None:
            scores = scores + scale * (query_bias @ X.T).unsqueeze(1)  # s β_i · x_ℓ: (n_H, 1, N)
        if causal:
            future = torch.ones(N, N, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        H1 = torch.softmax(scores, dim=-1)                             # (n_H, N, N)
        H2 = mode_product(W_tilde, X, 3)                               # 𝒲̃ ×₃ X: (n_H, d, N)
        out = torch.einsum("ijl,ikl->jk", H1, H2)                      # Σ_i Σ_ℓ H¹_{ijℓ} H²_{ikℓ}: (N, d)
        outs.append(out if out_bias is None else out + out_bias)
    return torch.stack(outs)                                           # (B, N, d)
