"""Kernel dispatch: math vs SDPA, bottom-right causal masks, flash-attn through a stand-in module."""

from __future__ import annotations

import types

import pytest
import torch

from tucker_attention.attention import backends
from tucker_attention.attention.backends import attend, causal_mask


def qkv(B=2, Hq=6, Hk=2, N=5, S=5, D=8, Dv=8, dtype=torch.float64):
    return (torch.randn(B, Hq, N, D, dtype=dtype), torch.randn(B, Hk, S, D, dtype=dtype),
            torch.randn(B, Hk, S, Dv, dtype=dtype))


def loop_reference(q, k, v, scale, causal):
    B, Hq, N, _ = q.shape
    Hk, S = k.shape[1], k.shape[2]
    out = torch.empty(B, Hq, N, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for h in range(Hq):
            g = h // (Hq // Hk)
            s = scale * q[b, h] @ k[b, g].T
            if causal:
                for i in range(N):
                    s[i, i + (S - N) + 1:] = float("-inf")
            out[b, h] = torch.softmax(s, -1) @ v[b, g]
    return out


@pytest.mark.parametrize("backend", ["math", "sdpa", "auto"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [dict(), dict(Hk=1), dict(Hk=6), dict(N=2, S=7), dict(N=1, S=9, Dv=3)])
def test_backends_match_loop_reference(backend, causal, shape):
    q, k, v = qkv(**shape)
    out = attend(q, k, v, scale=0.3, causal=causal, backend=backend)
    torch.testing.assert_close(out, loop_reference(q, k, v, 0.3, causal), rtol=1e-12, atol=1e-12)


def test_causal_mask_is_bottom_right_aligned():
    m = causal_mask(2, 5, torch.device("cpu"))
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    assert torch.equal(causal_mask(4, 4, torch.device("cpu")), torch.ones(4, 4, dtype=torch.bool).tril())


def test_sdpa_top_left_is_causal_would_be_wrong_for_decoding():
    """The trap the dispatch avoids: SDPA's is_causal with N < S masks from the top-left corner."""
    q, k, v = qkv(N=2, S=6, Hk=6)
    wrong = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)
    right = attend(q, k, v, scale=0.3, causal=True, backend="sdpa")
    assert not torch.allclose(wrong, right)
    torch.testing.assert_close(right, loop_reference(q, k, v, 0.3, True))


def test_math_path_does_not_repeat_kv(monkeypatch):
    """The math path broadcasts K/V over the query group instead of copying them per head."""
    called = []
    monkeypatch.setattr(torch.Tensor, "repeat_interleave", lambda *a, **k: called.append(1))
    q, k, v = qkv(Hk=1)
    attend(q, k, v, backend="math")
    assert not called


@pytest.fixture
def fake_flash(monkeypatch):
    """A stand-in for the flash_attn package with flash-attn 2's documented interface:
    flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False) on (B, N, H, D) tensors,
    fewer KV heads allowed (MQA/GQA), causal aligned to the bottom-right corner."""
    calls = []

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        calls.append(dict(q=q.shape, k=k.shape, v=v.shape, scale=softmax_scale, causal=causal, p=dropout_p))
        out = loop_reference(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale, causal)
        return out.transpose(1, 2)

    module = types.SimpleNamespace(flash_attn_func=flash_attn_func, __name__="flash_attn")
    monkeypatch.setitem(backends._flash_cache, "flash_attn", module)
    monkeypatch.setattr(backends, "FLASH_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(backends, "FLASH_DTYPES", (torch.float16, torch.bfloat16, torch.float64))
    return calls


def test_flash_path_with_stand_in_module(fake_flash):
    q, k, v = qkv(Hq=6, Hk=1, N=3, S=7)
    out = attend(q, k, v, scale=0.25, causal=True, backend="flash")
    assert fake_flash == [dict(q=(2, 3, 6, 8), k=(2, 7, 1, 8), v=(2, 7, 1, 8), scale=0.25, causal=True, p=0.0)]
    torch.testing.assert_close(out, loop_reference(q, k, v, 0.25, True))
    assert backends.resolve_backend("auto", q, k, v) == "flash"


def test_auto_falls_back_to_sdpa_when_flash_cannot_run(fake_flash):
    q, k, v = qkv(Dv=4)                                    # value head size != query head size
    assert backends.resolve_backend("auto", q, k, v) == "sdpa"
    with pytest.raises(ValueError, match="equal query and value head sizes"):
        attend(q, k, v, backend="flash")
    q, k, v = qkv(D=320, Dv=320)
    with pytest.raises(ValueError, match="head sizes <= 256"):
        attend(q, k, v, backend="flash")


def test_flash_unavailable_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(backends._flash_cache, "flash_attn", None)
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"backend='flash' cannot run here: flash_attn is not installed.*sdpa"):
        attend(q, k, v, backend="flash")
    assert "flash" not in backends.available_backends()
    assert backends.resolve_backend("auto", q, k, v) == "sdpa"


def test_unknown_backend_and_bad_shapes():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="backend must be one of"):
        attend(q, k, v, backend="cudnn")
    with pytest.raises(ValueError, match="divisible"):
        attend(*qkv(Hq=5, Hk=2))
    with pytest.raises(ValueError, match="4-D"):
        attend(q[0], k, v)
    with pytest.raises(ValueError, match="head size"):
        attend(q, k[..., :3], v)
    with pytest.raises(ValueError, match="at least as many"):
        attend(*qkv(N=6, S=4))


def test_layer_backend_argument_reaches_the_kernel(fake_flash):
    import tucker_attention as ta
    layer = ta.TuckerAttention(32, 4, ranks=(2, 8, 8), backend="flash").double()
    layer(torch.randn(1, 3, 32, dtype=torch.float64), causal=True)
    assert fake_flash and fake_flash[0]["k"] == (1, 3, 1, 8)
