"""Bad input gets a clear error naming the argument, the value and the rule."""

from __future__ import annotations

import pytest
import torch

import tucker_attention as ta


@pytest.mark.parametrize("build,exc,match", [
    (lambda: ta.MultiHeadAttention(30, 4), ValueError, r"d_model=30 must be divisible by n_heads=4"),
    (lambda: ta.MultiHeadAttention(0, 4), ValueError, r"d_model must be an int >= 1, got d_model=0"),
    (lambda: ta.MultiHeadAttention(32.0, 4), TypeError, r"d_model must be an int, got 32.0"),
    (lambda: ta.MultiHeadAttention(32, 4, dropout=1.0), ValueError, r"dropout must be in \[0.0, 1.0\)"),
    (lambda: ta.MultiHeadAttention(32, 4, backend="xformers"), ValueError, r"backend must be one of .*'xformers'"),
    (lambda: ta.MultiHeadAttention(32, 4, rope="latent"), TypeError, r"rope must be a bool"),
    (lambda: ta.MultiHeadAttention(12, 4, rope=True), ValueError, r"head size d_model/n_heads=3 must be even"),
    (lambda: ta.MultiHeadAttention(32, 4, rope_style="neox"), ValueError, r"rope_style must be one of"),
    (lambda: ta.GroupedQueryAttention(32, 4, 3), ValueError, r"n_heads=4 must be divisible by n_kv_heads=3"),
    (lambda: ta.GroupedQueryAttention(32, 4, 8), ValueError,
     r"n_kv_heads must be an int in \[1, n_heads=4\], got n_kv_heads=8"),
    (lambda: ta.MultiHeadLatentAttention(32, 4, 8, 7, rope="latent"), ValueError, r"kv_latent=7 must be even"),
    (lambda: ta.MultiHeadLatentAttention(32, 4, 8, 8, rope="rotary"), ValueError, r"rope must be one of"),
    (lambda: ta.MultiHeadLatentAttention(32, 4, 8, 8, rope_dim=4), ValueError, r"rope_dim=4 is only used"),
    (lambda: ta.MultiHeadLatentAttention(32, 4, 8, 8, rope="decoupled", rope_dim=3), ValueError,
     r"rope_dim=3 must be even"),
    (lambda: ta.MultiHeadLatentAttention(32, 4, 0, 8), ValueError,
     r"q_latent must be an int in \[1, d_model=32\], got q_latent=0"),
    (lambda: ta.TuckerAttention(32, 4, ranks=(5, 8, 8)), ValueError, r"ranks\[0\]=5 must be in \[1, n_heads=4\]"),
    (lambda: ta.TuckerAttention(32, 4, ranks=(2, 40, 8)), ValueError, r"ranks\[1\]=40 must be in \[1, d_model=32\]"),
    (lambda: ta.TuckerAttention(32, 4, ranks=(2, 8)), ValueError, r"ranks must have 3 entries"),
    (lambda: ta.TuckerAttention(32, 4, ranks=8), TypeError, r"ranks must be a sequence of 3 ints"),
    (lambda: ta.TuckerAttention(32, 4, ranks=(2, 8.0, 8)), TypeError, r"ranks\[1\] must be an int"),
    (lambda: ta.TuckerAttention(32, 4, ranks=(2, 8, 8), post_ranks=(2, 8, 0)), ValueError,
     r"post_ranks\[2\]=0 must be in \[1, d_model=32\]"),
    (lambda: ta.TuckerAttention(32, 4, ranks=(2, 8, 7), rope=True), ValueError, r"ranks\[2\]=7 must be even"),
    (lambda: ta.TuckerAttention(32, 4, ranks=(2, 8, 8), post_ranks=(2, 8, 6), shared_kv=True), ValueError,
     r"shared_kv=True needs equal key and value ranks"),
])
def test_constructor_errors(build, exc, match):
    with pytest.raises(exc, match=match):
        build()


@pytest.fixture
def layer():
    return ta.TuckerAttention(32, 4, ranks=(2, 8, 8), rope=True)


def test_call_errors(layer):
    with pytest.raises(ValueError, match=r"x must have shape \(batch, seq, d_model=32\), got x.shape=\(2, 5, 31\)"):
        layer(torch.randn(2, 5, 31))
    with pytest.raises(ValueError, match=r"x.shape=\(5, 32\)"):
        layer(torch.randn(5, 32))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        layer([[0.0] * 32])
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.ones(1, 2, 32, dtype=torch.long))
    with pytest.raises(TypeError, match=r"x.dtype=torch.float64 differs from the layer's weight dtype torch.float32"):
        layer(torch.randn(1, 2, 32, dtype=torch.float64))
    with pytest.raises(TypeError, match="causal must be a bool"):
        layer(torch.randn(1, 2, 32), causal=1)
    with pytest.raises(ValueError, match=r"positions must be 1-D with length seq_len=2"):
        layer(torch.randn(1, 2, 32), positions=torch.arange(3))
    with pytest.raises(TypeError, match="positions must be an integer tensor"):
        layer(torch.randn(1, 2, 32), positions=torch.zeros(2))
    with pytest.raises(ValueError, match=r"positions must lie in \[0, max_seq_len=4096\)"):
        layer(torch.randn(1, 2, 32), positions=torch.tensor([0, 5000]))
    short = ta.MultiHeadAttention(32, 4, rope=True, max_seq_len=4)
    with pytest.raises(ValueError, match=r"positions 0..4 exceed max_seq_len=4"):
        short(torch.randn(1, 5, 32))


def test_cache_errors(layer):
    cache = layer.make_cache(2, 4)
    layer(torch.randn(2, 3, 32), causal=True, cache=cache)
    with pytest.raises(ValueError, match=r"cache overflow: it holds 3 of max_len=4 tokens and cannot take 2 more"):
        layer(torch.randn(2, 2, 32), causal=True, cache=cache)
    assert cache.length == 3                                     # a refused call changes nothing
    with pytest.raises(ValueError, match=r"cache was made for batch_size=2, got input batch 1"):
        layer(torch.randn(1, 1, 32), causal=True, cache=cache)
    other = ta.TuckerAttention(32, 4, ranks=(2, 8, 6)).make_cache(2, 4)
    with pytest.raises(ValueError, match="cache layout"):
        layer(torch.randn(2, 1, 32), cache=other)
    with pytest.raises(TypeError, match="cache must be a KVCache"):
        layer(torch.randn(2, 1, 32), cache={"k": None})
    with pytest.raises(TypeError, match="cache dtype torch.float64 differs"):
        layer(torch.randn(2, 1, 32), cache=layer.make_cache(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"max_len must be an int >= 1, got max_len=0"):
        layer.make_cache(2, 0)


def test_rope_layer_has_no_tensor_view(layer):
    with pytest.raises(ValueError, match="RoPE"):
        layer.tucker_factors()


# ------------------------------------------------------------------------- the shared check helpers
def test_shared_checks_accept_integer_types_and_name_the_rule():
    import numpy as np

    from tucker_attention.validation import as_int_tuple, check_choice, check_float, check_int

    assert check_int("n", np.int64(3)) == 3 and type(check_int("n", torch.tensor(3))) is int
    for bad in (True, np.bool_(True), 3.0, "3"):
        with pytest.raises(TypeError, match="n must be an int"):
            check_int("n", bad)
    with pytest.raises(ValueError, match=r"n must be an int in \[1, d_model=8\], got n=9"):
        check_int("n", 9, high=8, high_name="d_model")
    assert check_float("p", np.float32(0.5), low=0.0, high=1.0) == 0.5
    for bad, exc in ((float("nan"), ValueError), (float("inf"), ValueError), (True, TypeError), ("x", TypeError)):
        with pytest.raises(exc, match="p must be"):
            check_float("p", bad, low=0.0)
    with pytest.raises(ValueError, match=r"p must be in \(0.0, 1.0\], got p=0.0"):
        check_float("p", 0.0, low=0.0, high=1.0, low_open=True)
    assert check_choice("rope", True, (False, True)) is True
    with pytest.raises(ValueError, match=r"rope must be one of \[False, True\], got rope=1"):
        check_choice("rope", 1, (False, True))                   # 1 is not True
    with pytest.raises(TypeError, match=r"name must be a str, one of \['a', 'b'\], got name=3"):
        check_choice("name", 3, ("a", "b"))
    assert as_int_tuple("r", np.array([1, 2, 3]), 3) == (1, 2, 3)
    with pytest.raises(ValueError, match=r"r\[1\] must be an int >= 1, got r\[1\]=0"):
        as_int_tuple("r", [1, 0, 3], 3, low=1)
