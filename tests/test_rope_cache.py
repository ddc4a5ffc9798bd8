"""RoPE identities, latent RoPE, and the KV cache's accounting."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tucker_attention as ta
from tucker_attention.attention.rope import apply_rope, rope_angles, rope_matrix


@pytest.mark.parametrize("style", ["interleaved", "half"])
def test_rope_matrix_is_a_rotation_with_relative_identity(style):
    D = 8
    Rm, Rn = rope_matrix(7, D, style=style), rope_matrix(3, D, style=style)
    torch.testing.assert_close(Rm @ Rm.T, torch.eye(D, dtype=torch.float64))
    torch.testing.assert_close(Rm @ Rn.T, rope_matrix(4, D, style=style))       # R(m) R(n)^T = R(m - n)


def test_rope_angles_follow_theta_j():
    cos, sin = rope_angles(torch.tensor([0, 2]), 6, base=100.0)
    theta = torch.tensor([100.0 ** (-2 * j / 6) for j in range(3)], dtype=torch.float64)
    torch.testing.assert_close(cos[1], torch.cos(2 * theta))
    torch.testing.assert_close(sin[0], torch.zeros(3, dtype=torch.float64))


def test_apply_rope_equals_matrix_and_scores_depend_on_offset_only():
    D, N = 6, 5
    q, k = torch.randn(N, D, dtype=torch.float64), torch.randn(N, D, dtype=torch.float64)
    pos = torch.arange(N)
    cos, sin = rope_angles(pos, D)
    qr = apply_rope(q, cos, sin)
    torch.testing.assert_close(qr[3], q[3] @ rope_matrix(3, D))
    cos2, sin2 = rope_angles(pos + 11, D)
    s1 = qr @ apply_rope(k, cos, sin).T
    s2 = apply_rope(q, cos2, sin2) @ apply_rope(k, cos2, sin2).T
    torch.testing.assert_close(s1, s2)


def test_tucker_latent_rope_scores_are_shift_invariant():
    """PAPER.md §6: s (Q_i[m] R(m)) (K[n] R(n))^T = s Q_i[m] R(m-n) K[n]^T."""
    layer = ta.TuckerAttention(32, 4, ranks=(2, 8, 6), rope=True).double()
    x = torch.randn(1, 5, 32, dtype=torch.float64)
    G = layer.U1 @ layer.core.flatten(1)
    Q = (x[0] @ layer.U2) @ G.view(4, 8, 6)[1]                     # head 1's latent queries (N, r3)
    K = x[0] @ layer.U3
    for shift in (0, 9, 100):
        pos = torch.arange(5) + shift
        cos, sin = rope_angles(pos, 6)
        S = apply_rope(Q, cos, sin) @ apply_rope(K, cos, sin).T
        expect = torch.stack([torch.stack([Q[m] @ rope_matrix(m - n, 6) @ K[n] for n in range(5)])
                              for m in range(5)])
        torch.testing.assert_close(S, expect)


def test_cache_numel_and_capacity():
    layer = ta.GroupedQueryAttention(32, 4, 2)
    cache = layer.make_cache(3, 10)
    assert cache.numel() == 0 and cache.capacity_numel() == 3 * 10 * 2 * 2 * 8
    layer(torch.randn(3, 4, 32), causal=True, cache=cache)
    assert cache.numel() == 3 * 4 * (2 * 2 * 8)
    assert cache.held_positions().tolist() == [0, 1, 2, 3]
    cache.reset()
    assert cache.numel() == 0 and cache.next_position() == 0


@pytest.mark.parametrize("layer,per_token", [
    (lambda: ta.MultiHeadAttention(48, 6), 2 * 48),
    (lambda: ta.GroupedQueryAttention(48, 6, 2), 2 * 2 * 8),
    (lambda: ta.GroupedQueryAttention(48, 6, 1), 2 * 8),
    (lambda: ta.MultiHeadLatentAttention(48, 6, 16, 12), 12),
    (lambda: ta.MultiHeadLatentAttention(48, 6, 16, 12, separate_kv=True), 24),
    (lambda: ta.MultiHeadLatentAttention(48, 6, 16, 12, rope="decoupled", rope_dim=4), 16),
    (lambda: ta.TuckerAttention(48, 6, ranks=(2, 16, 10)), 20),
    (lambda: ta.TuckerAttention(48, 6, ranks=(2, 16, 10), post_ranks=(2, 16, 6)), 16),
    (lambda: ta.TuckerAttention(48, 6, ranks=(2, 16, 10), shared_kv=True), 10),
])
def test_cache_per_token_is_paper_formula(layer, per_token):
    layer = layer()
    cache = layer.make_cache(2, 8)
    layer(torch.randn(2, 5, 48), causal=True, cache=cache)
    assert cache.numel() == 2 * 5 * per_token


@settings(max_examples=25, deadline=None)
@given(n_heads=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([2, 4, 6]),
       r=st.tuples(st.integers(1, 4), st.integers(1, 12), st.integers(1, 6)),
       pr=st.tuples(st.integers(1, 4), st.integers(1, 12), st.integers(1, 6)),
       n=st.integers(1, 6), shared=st.booleans(), rope=st.booleans(), split=st.integers(0, 5))
def test_property_tucker_decode_equals_full_and_counts(n_heads, head_dim, r, pr, n, shared, rope, split):
    d = n_heads * head_dim
    r = (min(r[0], n_heads), min(r[1], d), min(2 * r[2], d) if rope else min(r[2], d))
    if rope and r[2] % 2:
        r = (r[0], r[1], r[2] - 1)
    if r[2] < 1:
        return
    pr = (min(pr[0], n_heads), min(pr[1], d), r[2] if shared else min(pr[2], d))
    layer = ta.TuckerAttention(d, n_heads, ranks=r, post_ranks=pr, shared_kv=shared, rope=rope).double()
    x = torch.randn(2, n, d, dtype=torch.float64)
    full = layer(x, causal=True)
    cache = layer.make_cache(2, n)
    k = min(split, n - 1) + 1
    parts = [layer(x[:, :k], causal=True, cache=cache)] + [layer(x[:, t:t + 1], causal=True, cache=cache)
                                                           for t in range(k, n)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-10, atol=1e-12)
    assert sum(p.numel() for p in layer.parameters()) == ta.counting.attention_params(
        "tucker", d, n_heads, ranks=r, post_ranks=pr, shared_kv=shared)
    assert cache.numel() == 2 * n * ta.counting.kv_cache_per_token("tucker", d, n_heads, ranks=r, post_ranks=pr,
                                                                   shared_kv=shared)


@settings(max_examples=20, deadline=None)
@given(n_heads=st.sampled_from([2, 4]), n_kv=st.sampled_from([1, 2]), head_dim=st.sampled_from([2, 4]),
       cq=st.integers(1, 4), ck=st.integers(1, 2), n=st.integers(1, 5), sep=st.booleans(),
       rope=st.sampled_from([None, "latent", "decoupled"]))
def test_property_sdpa_equals_math_for_gqa_and_mla(n_heads, n_kv, head_dim, cq, ck, n, sep, rope):
    d = n_heads * head_dim
    gqa = ta.GroupedQueryAttention(d, n_heads, n_kv).double()
    mla = ta.MultiHeadLatentAttention(d, n_heads, cq, 2 * ck, separate_kv=sep, rope=rope,
                                      rope_dim=2 if rope == "decoupled" else None).double()
    x = torch.randn(2, n, d, dtype=torch.float64)
    for layer in (gqa, mla):
        for causal in (False, True):
            layer.backend = "math"
            y = layer(x, causal=causal)
            layer.backend = "sdpa"
            torch.testing.assert_close(layer(x, causal=causal), y, rtol=1e-10, atol=1e-12)
