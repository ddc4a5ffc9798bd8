"""Exact conversions to Tucker (PAPER.md §4), HOSVD/HOOI compression, and query folding with RoPE (§6)."""

from __future__ import annotations

import copy

import pytest
import torch
from reference import randomize, rel

from tucker_attention import (
    GroupedQueryAttention,
    MultiHeadAttention,
    MultiHeadLatentAttention,
    TuckerAttention,
)
from tucker_attention.attention.rope import rope_matrix
from tucker_attention.convert import compress, fold_queries, folded_scores, head_rope_scores, layer_scores, to_tucker
from tucker_attention.tensors import attention_tensors, relative_error, unfold

TOL = 1e-10



# (layer, expected ranks, expected post_ranks, shared_kv) — PAPER.md §4's constructions, d = 24, n_H = 4, d_H = 6
CASES = {
    "mha": (lambda: MultiHeadAttention(24, 4), (4, 24, 24), (4, 24, 24), False),
    "mha_bias": (lambda: MultiHeadAttention(24, 4, bias=True), (4, 24, 24), (4, 24, 24), False),
    "gqa_kv2": (lambda: GroupedQueryAttention(24, 4, 2), (4, 24, 12), (4, 24, 12), False),
    "gqa_bias": (lambda: GroupedQueryAttention(24, 4, 2, bias=True), (4, 24, 12), (4, 24, 12), False),
    "mqa": (lambda: GroupedQueryAttention(24, 4, 1), (4, 24, 6), (4, 24, 6), False),
    "mla_shared": (lambda: MultiHeadLatentAttention(24, 4, 10, 6), (4, 10, 6), (4, 24, 6), True),
    "mla_separate": (lambda: MultiHeadLatentAttention(24, 4, 5, 9, separate_kv=True), (4, 5, 9), (4, 24, 9), False),
    "tucker": (lambda: TuckerAttention(24, 4, (3, 10, 8), (2, 12, 6), bias=True), (3, 10, 8), (2, 12, 6), False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_to_tucker_is_exact_with_theorem_ranks(name):
    make, ranks, post_ranks, shared = CASES[name]
    layer = randomize(make())
    t = to_tucker(layer)
    assert isinstance(t, TuckerAttention)
    assert (t.ranks, t.post_ranks, t.shared_kv) == (ranks, post_ranks, shared)
    assert t.bias == (getattr(layer, "bias", False) is True)
    assert next(t.parameters()).dtype == torch.float64 and not t.training
    x = torch.randn(2, 9, 24, dtype=torch.float64)
    for causal in (False, True):
        assert rel(t(x, causal=causal), layer(x, causal=causal)) < TOL
    if name.startswith("mla"):                                  # the converted layer keeps MLA's cache size
        assert t.kv_cache_per_token() == layer.kv_cache_per_token()


def test_to_tucker_of_tucker_is_an_independent_copy():
    layer = randomize(TuckerAttention(16, 4, (2, 6, 6), rope=True))
    t = to_tucker(layer)
    assert t is not layer and t.rope
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(t(x), layer(x), rtol=0, atol=0)
    with torch.no_grad():
        t.core.zero_()
    assert layer.core.abs().sum() > 0


def test_to_tucker_keeps_decoding_exact():
    """The converted MLA decodes token by token from a d_c^K-wide cache, like the original."""
    layer = randomize(MultiHeadLatentAttention(24, 4, 10, 6))
    t = to_tucker(layer)
    x = torch.randn(1, 6, 24, dtype=torch.float64)
    cache = t.make_cache(1, 6)
    steps = torch.cat([t(x[:, i:i + 1], cache=cache, causal=True) for i in range(6)], dim=1)
    assert rel(steps, layer(x, causal=True)) < TOL
    assert cache.numel() == 6 * 6


def test_to_tucker_errors():
    with pytest.raises(ValueError, match="RoPE"):
        to_tucker(MultiHeadAttention(16, 4, rope=True))
    with pytest.raises(ValueError, match="latent RMSNorm"):
        to_tucker(MultiHeadLatentAttention(16, 4, 6, 6, latent_norm="kv"))
    with pytest.raises(TypeError, match="layer must be an attention layer"):
        to_tucker(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"q_latent must be an int in \[1, d_model=16\], got q_latent=20"):
        MultiHeadLatentAttention(16, 4, 20, 6)                 # a latent wider than d_model adds no rank


# ------------------------------------------------------------------------------------ compression
def independent_hosvd(T: torch.Tensor, ranks) -> torch.Tensor:
    """T ×₁ P1 ×₂ P2 ×₃ P3 with P_n the projector on the leading r_n left singular vectors of T_(n)."""
    out = T
    for mode, r in zip((0, 1, 2), ranks):
        M = T.movedim(mode, 0).reshape(T.shape[mode], -1)
        U = torch.linalg.svd(M, full_matrices=False).U[:, :r]
        out = torch.tensordot(U @ U.T, out.movedim(mode, 0), dims=1).movedim(0, mode)
    return out


@pytest.mark.parametrize("method", ["hosvd", "hooi"])
@pytest.mark.parametrize("name", ["mha_bias", "gqa_kv2", "mla_shared"])
def test_compress_at_full_rank_reproduces_the_layer(name, method):
    layer = randomize(CASES[name][0]())
    d, H = layer.d_model, layer.n_heads
    c = compress(layer, (H, d, d), method=method, n_iter_max=5)
    assert c.ranks == c.post_ranks == (H, d, d)
    x = torch.randn(2, 7, d, dtype=torch.float64)
    for causal in (False, True):
        assert rel(c(x, causal=causal), layer(x, causal=causal)) < TOL


def test_compress_shared_kv():
    layer = randomize(MultiHeadAttention(16, 4))
    full = compress(layer, (4, 16, 16), shared_kv=True)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    assert full.shared_kv and full.kv_cache_per_token() == 16
    assert rel(full(x), layer(x)) < TOL
    small = compress(layer, (2, 8, 6), (3, 8, 6), shared_kv=True, method="hooi")
    assert small.shared_kv and small.kv_cache_per_token() == 6
    assert small.U3 is small.post_U3
    with pytest.raises(ValueError, match="shared_kv=True needs equal key and value ranks"):
        compress(layer, (2, 8, 6), (2, 8, 4), shared_kv=True)


def test_compress_matches_an_independent_hosvd_and_error_shrinks():
    layer = randomize(MultiHeadAttention(16, 4))
    W, Wt, _ = attention_tensors(layer)
    schedule = [(1, 4, 4), (2, 6, 6), (2, 8, 8), (3, 10, 10), (3, 12, 12), (4, 16, 16)]
    errors, hooi_errors = [], []
    for ranks in schedule:
        c = compress(layer, ranks)
        assert c.ranks == c.post_ranks == ranks                    # exactly the ranks asked for
        assert c.core.shape == ranks and c.U2.shape == (16, ranks[1]) and c.post_U3.shape == (16, ranks[2])
        Wc, Wtc, _ = attention_tensors(c)
        torch.testing.assert_close(Wc, independent_hosvd(W, ranks), rtol=0, atol=1e-10)
        torch.testing.assert_close(Wtc, independent_hosvd(Wt, ranks), rtol=0, atol=1e-10)
        errors.append(relative_error(Wc, W) + relative_error(Wtc, Wt))
        h = compress(layer, ranks, method="hooi", n_iter_max=3)
        Wh, Wth, _ = attention_tensors(h)
        hooi_errors.append(relative_error(Wh, W) + relative_error(Wth, Wt))
    assert all(a >= b - 1e-12 for a, b in zip(errors, errors[1:]))   # monotone in the rank
    assert errors[0] > 0.1 and errors[-1] < 1e-12
    assert all(h <= e + 1e-12 for h, e in zip(hooi_errors, errors))   # HOOI improves on its HOSVD start


def test_compress_keeps_dtype_and_device_and_needs_no_grad():
    layer = randomize(MultiHeadAttention(16, 4)).float()
    c = compress(layer, (2, 8, 8))
    assert next(c.parameters()).dtype == torch.float32
    assert all(p.requires_grad and p.grad_fn is None for p in c.parameters())


@pytest.mark.parametrize("bad, exc, pattern", [
    ({"ranks": (0, 4, 4)}, ValueError, r"ranks\[0\]=0 must be in \[1, n_heads=4\]"),
    ({"ranks": (5, 4, 4)}, ValueError, r"ranks\[0\]=5 must be in \[1, n_heads=4\]"),
    ({"ranks": (2, 17, 4)}, ValueError, r"ranks\[1\]=17 must be in \[1, d_model=16\]"),
    ({"ranks": (2, 4)}, ValueError, r"ranks must have 3 entries"),
    ({"ranks": (2, 4.0, 4)}, TypeError, r"ranks\[1\] must be an int"),
    ({"ranks": (2, 4, 4), "post_ranks": (2, 4, 40)}, ValueError, r"post_ranks\[2\]=40 must be in \[1, d_model=16\]"),
    ({"ranks": (2, 4, 4), "method": "cp"}, ValueError, r"method must be one of \('hosvd', 'hooi'\)"),
    ({"ranks": (2, 4, 4), "n_iter_max": 0}, ValueError, r"n_iter_max must be an int >= 1"),
])
def test_compress_rejects_bad_arguments(bad, exc, pattern):
    layer = MultiHeadAttention(16, 4)
    with pytest.raises(exc, match=pattern):
        compress(layer, **bad)


# -------------------------------------------------------------------------- folding and RoPE (§6)
def test_fold_queries_is_the_product_of_mla_weights():
    layer = randomize(MultiHeadLatentAttention(24, 4, 10, 6, rope="latent"))
    F = fold_queries(layer)
    assert F.shape == (4, 24, 6)
    dh = layer.head_dim
    for i in range(4):
        hi = slice(i * dh, (i + 1) * dh)
        WDQ, WUQ, WUK = layer.q_down.weight.T, layer.q_up.weight[hi].T, layer.k_up.weight[hi].T
        torch.testing.assert_close(F[i], WDQ @ WUQ @ WUK.T, rtol=0, atol=1e-13)


FOLD_CASES = {
    "mla_latent": lambda: MultiHeadLatentAttention(24, 4, 10, 6, rope="latent"),
    "mla_latent_separate": lambda: MultiHeadLatentAttention(24, 4, 10, 6, rope="latent", separate_kv=True),
    "mla_latent_kv_norm": lambda: MultiHeadLatentAttention(24, 4, 10, 6, rope="latent", latent_norm="kv"),
    "mla_decoupled": lambda: MultiHeadLatentAttention(24, 4, 10, 6, rope="decoupled", rope_dim=4),
    "mla_no_rope": lambda: MultiHeadLatentAttention(24, 4, 10, 6),
    "tucker_rope_bias": lambda: TuckerAttention(24, 4, (3, 10, 8), rope=True, bias=True),
    "gqa": lambda: GroupedQueryAttention(24, 4, 2),
}


@pytest.mark.parametrize("name", list(FOLD_CASES))
def test_folded_scores_are_exact_with_latent_rope(name):
    layer = randomize(FOLD_CASES[name]())
    x = torch.randn(2, 8, 24, dtype=torch.float64)
    pos = torch.arange(5, 13)
    assert rel(folded_scores(layer, x, pos), layer_scores(layer, x, pos)) < TOL
    if layer.has_rope:                                          # relative positions only: shift all by 7
        torch.testing.assert_close(folded_scores(layer, x, pos + 7), folded_scores(layer, x, pos),
                                   rtol=1e-10, atol=1e-10)


def test_head_dim_rope_cannot_be_folded():
    """The control of PAPER.md §6: with RoPE between W^UQ_i and W^UK_i the folded computation fails."""
    layer = randomize(MultiHeadLatentAttention(24, 4, 10, 6, rope="latent"))
    x = torch.randn(2, 8, 24, dtype=torch.float64)
    pos = torch.arange(8)
    ref = head_rope_scores(layer, x, pos)
    # independent head-dim RoPE MLA: q_i R(m), k_i R(n) per head, with explicit rotation matrices
    dh = layer.head_dim
    c_q, c_kv = x @ layer.q_down.weight.T, x @ layer.kv_down.weight.T
    for i in range(4):
        hi = slice(i * dh, (i + 1) * dh)
        q, k = c_q @ layer.q_up.weight[hi].T, c_kv @ layer.k_up.weight[hi].T       # (B, N, d_H)
        R = torch.stack([rope_matrix(int(m), dh) for m in pos])                     # (N, d_H, d_H)
        qr, kr = torch.einsum("bnd,nde->bne", q, R), torch.einsum("bnd,nde->bne", k, R)
        assert rel(ref[:, i], layer.scale * qr @ kr.transpose(-1, -2)) < TOL
    folded = folded_scores(layer, x, pos)                        # latent RoPE on the folded queries
    no_rope = layer.scale * torch.einsum("bnd,hdr,bmr->bhnm", x, fold_queries(layer), c_kv)
    assert rel(folded, ref) > 1e-2
    assert rel(no_rope, ref) > 1e-2
    with pytest.raises(TypeError, match="head_rope_scores needs a MultiHeadLatentAttention"):
        head_rope_scores(MultiHeadLatentAttention(24, 4, 10, 6, rope="decoupled", rope_dim=4), x)


def test_fold_queries_rejects_query_norm():
    with pytest.raises(ValueError, match="query-latent RMSNorm"):
        fold_queries(MultiHeadLatentAttention(24, 4, 10, 6, latent_norm="q_kv"))


def test_converted_copies_do_not_share_storage():
    layer = randomize(MultiHeadAttention(16, 4))
    before = copy.deepcopy(layer.state_dict())
    t = to_tucker(layer)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(1.0)
    for k, v in layer.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert unfold(attention_tensors(t)[0].detach(), 1).shape == (4, 256)
