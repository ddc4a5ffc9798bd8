"""The tensor view (PAPER.md §2, §4): dense tensors, Eq. 6, unfoldings, mode products, multilinear ranks.

References here are written independently of the package: explicit per-head loops over the weights.
"""

from __future__ import annotations

import math

import pytest
import torch
from reference import randomize, rel

from tucker_attention import (
    GroupedQueryAttention,
    MultiHeadAttention,
    MultiHeadLatentAttention,
    TuckerAttention,
)
from tucker_attention.tensors import (
    attention_biases,
    attention_tensors,
    eq6_forward,
    mode_product,
    multilinear_rank,
    relative_error,
    tucker_decomposition,
    unfold,
    unfolding_spectra,
)

TOL = 1e-10



def softmax_rows(scores: torch.Tensor, causal: bool) -> torch.Tensor:
    if causal:
        n = scores.shape[-1]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(scores, dim=-1)


# ------------------------------------------------------------------ independent per-head references
def reference_gqa(layer: GroupedQueryAttention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """out = Σ_i softmax(s (x W^Q_i + b^Q_i)(x W^K_g + b^K_g)ᵀ)(x W^V_g + b^V_g) W^O_i + b^O, head by head."""
    H, dh, nkv = layer.n_heads, layer.head_dim, layer.n_kv_heads

    def lin(m, rows):
        W = m.weight[rows]
        b = m.bias[rows] if m.bias is not None else 0.0
        return x @ W.T + b

    out = 0.0
    for i in range(H):
        g = i * nkv // H
        hi, gi = slice(i * dh, (i + 1) * dh), slice(g * dh, (g + 1) * dh)
        q, k, v = lin(layer.q_proj, hi), lin(layer.k_proj, gi), lin(layer.v_proj, gi)
        A = softmax_rows(q @ k.transpose(-1, -2) / math.sqrt(dh), causal)
        out = out + (A @ v) @ layer.o_proj.weight[:, hi].T
    return out + (layer.o_proj.bias if layer.o_proj.bias is not None else 0.0)


def reference_mla(layer: MultiHeadLatentAttention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """MLA without absorption: per-head keys and values expanded from the latent(s)."""
    H, dh = layer.n_heads, layer.head_dim
    c_q = x @ layer.q_down.weight.T
    c_k = x @ layer.kv_down.weight.T
    c_v = x @ (layer.v_down.weight.T if layer.separate_kv else layer.kv_down.weight.T)
    out = 0.0
    for i in range(H):
        hi = slice(i * dh, (i + 1) * dh)
        q = c_q @ layer.q_up.weight[hi].T
        k = c_k @ layer.k_up.weight[hi].T
        v = c_v @ layer.v_up.weight[hi].T
        A = softmax_rows(q @ k.transpose(-1, -2) / math.sqrt(dh), causal)
        out = out + (A @ v) @ layer.o_proj.weight[:, hi].T
    return out


def reference_tucker(layer: TuckerAttention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """Σ_i softmax(s (x U2 G_i + c_i)(x U3)ᵀ)(x Ũ3) G̃_iᵀ Ũ2ᵀ + b, with G_i = Σ_a U1[i,a] 𝒞[a]."""
    out = 0.0
    for i in range(layer.n_heads):
        G = sum(layer.U1[i, a] * layer.core[a] for a in range(layer.ranks[0]))
        Gt = sum(layer.post_U1[i, a] * layer.post_core[a] for a in range(layer.post_ranks[0]))
        q = x @ layer.U2 @ G + (layer.q_bias[i] if layer.bias else 0.0)
        A = softmax_rows(q @ (x @ layer.U3).transpose(-1, -2) * layer.scale, causal)
        out = out + A @ (x @ layer.post_U3) @ Gt.T @ layer.post_U2.T
    return out + (layer.out_bias if layer.bias else 0.0)


def reference(layer, x, causal):
    if isinstance(layer, GroupedQueryAttention):
        return reference_gqa(layer, x, causal)
    if isinstance(layer, MultiHeadLatentAttention):
        return reference_mla(layer, x, causal)
    return reference_tucker(layer, x, causal)


LAYERS = {
    "mha": lambda: MultiHeadAttention(24, 4),
    "mha_bias": lambda: MultiHeadAttention(24, 4, bias=True),
    "gqa_kv2": lambda: GroupedQueryAttention(32, 8, 2),
    "gqa_kv4": lambda: GroupedQueryAttention(32, 8, 4),
    "gqa_bias": lambda: GroupedQueryAttention(32, 8, 4, bias=True),
    "mqa": lambda: GroupedQueryAttention(32, 8, 1),
    "mla": lambda: MultiHeadLatentAttention(24, 4, 10, 6),
    "mla_separate": lambda: MultiHeadLatentAttention(24, 4, 5, 9, separate_kv=True),
    "tucker": lambda: TuckerAttention(24, 4, (3, 10, 8), (2, 12, 6)),
    "tucker_shared_bias": lambda: TuckerAttention(24, 4, (3, 10, 8), (4, 7, 8), shared_kv=True, bias=True),
}


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", list(LAYERS))
def test_eq6_reproduces_every_layer(name, causal):
    layer = randomize(LAYERS[name]())
    x = torch.randn(2, 7, layer.d_model, dtype=torch.float64)
    W, Wt, s = attention_tensors(layer)
    assert W.shape == Wt.shape == (layer.n_heads, layer.d_model, layer.d_model)
    assert s == pytest.approx(1 / math.sqrt(layer.head_dim))
    biases = attention_biases(layer)
    kw = {} if biases is None else {"query_bias": biases[0], "out_bias": biases[1]}
    y_ref = reference(layer, x, causal)
    assert rel(layer(x, causal=causal), y_ref) < TOL
    assert rel(eq6_forward(W, Wt, s, x, causal, **kw), y_ref) < TOL


def test_dense_tensors_are_the_fused_head_matrices():
    """𝒲[i] = W^Q_i (W^K_i)ᵀ and 𝒲̃[i] = (W^V_i W^O_i)ᵀ, checked head by head for MHA (PAPER.md §2)."""
    layer = randomize(MultiHeadAttention(16, 4))
    W, Wt, _ = attention_tensors(layer)
    dh = layer.head_dim
    for i in range(4):
        hi = slice(i * dh, (i + 1) * dh)
        WQ, WK = layer.q_proj.weight[hi].T, layer.k_proj.weight[hi].T     # (d, d_H)
        WV, WO = layer.v_proj.weight[hi].T, layer.o_proj.weight[:, hi].T  # (d, d_H), (d_H, d)
        torch.testing.assert_close(W[i], WQ @ WK.T, rtol=0, atol=1e-13)
        torch.testing.assert_close(Wt[i], (WV @ WO).T, rtol=0, atol=1e-13)


def test_biases_dense_view_for_mha():
    """β_i = b^Q_i (W^K_i)ᵀ and out_bias = b^V W^O + b^O."""
    layer = randomize(MultiHeadAttention(16, 4, bias=True))
    beta, b_out = attention_biases(layer)
    dh = layer.head_dim
    for i in range(4):
        hi = slice(i * dh, (i + 1) * dh)
        torch.testing.assert_close(beta[i], layer.q_proj.bias[hi] @ layer.k_proj.weight[hi], rtol=0, atol=1e-13)
    torch.testing.assert_close(b_out, layer.v_proj.bias @ layer.o_proj.weight.T + layer.o_proj.bias,
                               rtol=0, atol=1e-13)
    assert attention_biases(randomize(MultiHeadAttention(16, 4))) is None


# --------------------------------------------------------------------------- theorem table (§4)
def theorem_ranks(layer) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """PAPER.md §4's table, maximal ranks for generic weights."""
    H, d, dh = layer.n_heads, layer.d_model, layer.head_dim
    if isinstance(layer, GroupedQueryAttention):
        r = (H, d, layer.n_kv_heads * dh)
        return r, r
    cq, ck = layer.q_latent, layer.kv_latent
    return (H, cq, ck), (H, min(d, H * ck), ck)


RANK_CASES = {
    "mha_24_4": lambda: MultiHeadAttention(24, 4),
    "mha_32_8": lambda: MultiHeadAttention(32, 8),
    "gqa_32_8_kv1": lambda: GroupedQueryAttention(32, 8, 1),
    "gqa_32_8_kv2": lambda: GroupedQueryAttention(32, 8, 2),
    "gqa_32_8_kv4": lambda: GroupedQueryAttention(32, 8, 4),
    "gqa_24_6_kv3": lambda: GroupedQueryAttention(24, 6, 3),
    "gqa_24_4_kv2": lambda: GroupedQueryAttention(24, 4, 2),
    "mla_cq10_ck6": lambda: MultiHeadLatentAttention(24, 4, 10, 6),          # H d_c^K = 24 = d
    "mla_cq5_ck9": lambda: MultiHeadLatentAttention(24, 4, 5, 9),            # output mode d = 24 < 36
    "mla_cq12_ck3": lambda: MultiHeadLatentAttention(32, 4, 12, 3),          # output mode H d_c^K = 12 < 32
    "mla_sep_cq7_ck4": lambda: MultiHeadLatentAttention(32, 8, 7, 4, separate_kv=True),
}


@pytest.mark.parametrize("name", list(RANK_CASES))
def test_multilinear_ranks_equal_theorem_table(name):
    layer = randomize(RANK_CASES[name](), seed=1)
    W, Wt, _ = attention_tensors(layer)
    pre, post = theorem_ranks(layer)
    assert multilinear_rank(W) == pre
    assert multilinear_rank(Wt) == post
    # the layer's exact factors have the theorem's Tucker ranks (MLA's post output mode is d: Ũ2 = I)
    f_pre, f_post = layer.tucker_factors()
    assert f_pre.ranks == pre
    if isinstance(layer, GroupedQueryAttention):
        assert f_post.ranks == post
    else:
        assert f_post.ranks == (layer.n_heads, layer.d_model, layer.kv_latent)


def test_every_method_keeps_the_head_mode_full():
    for make in RANK_CASES.values():
        layer = randomize(make(), seed=2)
        W, Wt, _ = attention_tensors(layer)
        assert multilinear_rank(W)[0] == multilinear_rank(Wt)[0] == layer.n_heads


# --------------------------------------------------------------------------- multilinear algebra
def test_unfold_matches_definition_and_tensorly_order():
    T = torch.randn(3, 4, 5, dtype=torch.float64)
    for mode in (1, 2, 3):
        M = unfold(T, mode)
        assert M.shape == (T.shape[mode - 1], T.numel() // T.shape[mode - 1])
        for i in range(T.shape[mode - 1]):                      # row i = the slice at index i, flattened
            torch.testing.assert_close(M[i], T.select(mode - 1, i).reshape(-1), rtol=0, atol=0)


def test_mode_product_matches_definition():
    T = torch.randn(3, 4, 5, dtype=torch.float64)
    U = torch.randn(6, 4, dtype=torch.float64)
    ref = torch.einsum("aib,ji->ajb", T, U)                     # (T ×₂ U)_{a j b} = Σ_i T_{a i b} U_{j i}
    torch.testing.assert_close(mode_product(T, U, 2), ref, rtol=1e-14, atol=1e-14)
    for mode, n in ((1, 3), (2, 4), (3, 5)):                    # Kolda: (T ×_n U)_(n) = U T_(n)
        V = torch.randn(2, n, dtype=torch.float64)
        torch.testing.assert_close(unfold(mode_product(T, V, mode), mode), V @ unfold(T, mode),
                                   rtol=1e-13, atol=1e-13)


def test_eq6_scores_are_mode_products():
    """H¹ = σ(s 𝒲 ×₂ X ×₃ X): (𝒲 ×₂ X ×₃ X)[i] = X W_i Xᵀ."""
    W = torch.randn(3, 6, 6, dtype=torch.float64)
    X = torch.randn(5, 6, dtype=torch.float64)
    S = mode_product(mode_product(W, X, 2), X, 3)
    for i in range(3):
        torch.testing.assert_close(S[i], X @ W[i] @ X.T, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("bad", [0, 4, -1])
def test_bad_modes_rejected(bad):
    T = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="mode must be in \\[1, 3\\]"):
        unfold(T, bad)
    with pytest.raises(ValueError, match="mode"):
        mode_product(T, torch.randn(2, 3), bad)
    with pytest.raises(ValueError, match="U.shape\\[1\\]=5 must equal the size of mode 2"):
        mode_product(T, torch.randn(2, 5), 2)
    with pytest.raises(TypeError, match="mode must be an int"):
        unfold(T, 1.0)


def test_multilinear_rank_of_a_tucker_tensor():
    torch.manual_seed(3)
    core = torch.randn(2, 3, 4, dtype=torch.float64)
    Us = [torch.randn(n, r, dtype=torch.float64) for n, r in ((5, 2), (7, 3), (9, 4))]
    T = torch.einsum("abc,ia,jb,kc->ijk", core, *Us)
    assert multilinear_rank(T) == (2, 3, 4)
    assert multilinear_rank(torch.zeros(2, 3, 4)) == (0, 0, 0)
    with pytest.raises(ValueError, match=r"rtol must be in \(0.0, 1.0\), got rtol=0"):
        multilinear_rank(T, rtol=0)


def test_unfolding_spectra():
    T = torch.randn(3, 5, 6, dtype=torch.float64)
    spectra = unfolding_spectra(T)
    assert [s.shape[0] for s in spectra] == [3, 5, 6]
    for mode, s in zip((1, 2, 3), spectra):
        assert torch.all(s[:-1] >= s[1:])                       # descending
        torch.testing.assert_close(s.pow(2).sum(), T.pow(2).sum(), rtol=1e-12, atol=0)   # energy = ‖T‖²
        torch.testing.assert_close(s, torch.linalg.svdvals(T.movedim(mode - 1, 0).reshape(T.shape[mode - 1], -1)))
    assert relative_error(T, T) == 0.0


# ------------------------------------------------------------------------------------------ errors
def test_rope_and_latent_norm_layers_have_no_tensors():
    for layer in (MultiHeadAttention(16, 4, rope=True), MultiHeadLatentAttention(16, 4, 6, 6, rope="latent"),
                  TuckerAttention(16, 4, (2, 4, 4), rope=True)):
        with pytest.raises(ValueError, match="RoPE"):
            attention_tensors(layer)
    with pytest.raises(ValueError, match="latent RMSNorm"):
        attention_tensors(MultiHeadLatentAttention(16, 4, 6, 6, latent_norm="kv"))
    with pytest.raises(TypeError, match="layer must be an attention layer"):
        attention_tensors(torch.nn.Linear(3, 3))


def test_eq6_rejects_bad_shapes():
    W = torch.randn(2, 4, 4)
    with pytest.raises(ValueError, match="x must have shape"):
        eq6_forward(W, W, 1.0, torch.randn(1, 3, 5))
    with pytest.raises(ValueError, match="W and W_tilde must have the same shape"):
        eq6_forward(W, torch.randn(3, 4, 4), 1.0, torch.randn(1, 3, 4))
    with pytest.raises(ValueError, match="query_bias must have shape"):
        eq6_forward(W, W, 1.0, torch.randn(1, 3, 4), query_bias=torch.randn(4))


def test_tucker_decomposition_and_hosvd_bounds():
    """Exact at the multilinear rank; HOOI <= HOSVD; the HOSVD error lies between the bounds."""
    from tucker_attention.attention.factors import TuckerFactors
    from tucker_attention.tensors import hosvd_error_bounds, tucker_decomposition

    g = torch.Generator().manual_seed(3)
    core = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    U = [torch.randn(n, r, generator=g, dtype=torch.float64) for n, r in ((5, 2), (6, 3), (7, 4))]
    T = TuckerFactors(core, *U).full()
    c, f = tucker_decomposition(T, (2, 3, 4))
    assert relative_error(TuckerFactors(c, *f).full(), T) < 1e-12
    assert all(torch.allclose(F.T @ F, torch.eye(F.shape[1], dtype=torch.float64), atol=1e-12) for F in f)
    noisy = T + 0.3 * torch.randn(T.shape, generator=g, dtype=torch.float64)
    for ranks in ((1, 2, 2), (2, 2, 3)):
        e = {m: relative_error(TuckerFactors(*(lambda cf: (cf[0], *cf[1]))(tucker_decomposition(noisy, ranks,
                                                                                            method=m))).full(), noisy)
             for m in ("hosvd", "hooi")}
        lower, upper = hosvd_error_bounds(noisy, ranks)
        assert lower <= e["hooi"] * (1 + 1e-12) and e["hooi"] <= e["hosvd"] * (1 + 1e-12) <= upper * (1 + 1e-12)
        assert upper <= 3 ** 0.5 * lower * (1 + 1e-12)
    assert hosvd_error_bounds(T, (2, 3, 4))[1] < 1e-12
    with pytest.raises(ValueError, match="method must be 'hosvd' or 'hooi'"):
        tucker_decomposition(T, (2, 3, 4), method="cp")
    with pytest.raises(ValueError, match=r"ranks must have one entry per decomposed mode \(1, 2, 3\)"):
        tucker_decomposition(T, (2, 9, 4))


def test_tucker_decomposition_of_some_modes_is_one_based():
    """``modes`` counts like the paper (1 = head): decomposing modes 1, 2 leaves mode 3 at full size."""
    T = torch.randn(4, 6, 5, dtype=torch.float64)
    core, (U1, U2) = tucker_decomposition(T, (4, 6), modes=(1, 2))
    assert core.shape == (4, 6, 5) and U1.shape == (4, 4) and U2.shape == (6, 6)
    rebuilt = mode_product(mode_product(core, U1, 1), U2, 2)
    assert relative_error(rebuilt, T) < 1e-12                         # full ranks: exact
    with pytest.raises(ValueError, match=r"mode must be in \[1, 3\]"):
        tucker_decomposition(T, (2,), modes=(0,))


def test_attention_tensors_are_detached_unless_asked():
    layer = MultiHeadAttention(8, 2)
    W, Wt, _ = attention_tensors(layer)
    assert not W.requires_grad and not Wt.requires_grad
    W, _, _ = attention_tensors(layer, grad=True)
    W.sum().backward()
    assert layer.q_proj.weight.grad is not None
