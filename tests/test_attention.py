"""The attention family against independent references, PyTorch's own MHA, and each other (float64)."""

from __future__ import annotations

import pytest
import torch
from reference import reference, rel

import tucker_attention as ta

D, H = 24, 4


def make(name: str) -> torch.nn.Module:
    layers = {
        "mha": lambda: ta.MultiHeadAttention(D, H),
        "mha-rope": lambda: ta.MultiHeadAttention(D, H, rope=True),
        "mha-rope-half": lambda: ta.MultiHeadAttention(D, H, rope=True, rope_style="half"),
        "gqa": lambda: ta.GroupedQueryAttention(D, H, 2),
        "gqa-rope": lambda: ta.GroupedQueryAttention(D, H, 2, rope=True),
        "mqa": lambda: ta.GroupedQueryAttention(D, H, 1),
        "mla": lambda: ta.MultiHeadLatentAttention(D, H, 10, 8),
        "mla-sep": lambda: ta.MultiHeadLatentAttention(D, H, 10, 8, separate_kv=True),
        "mla-latent": lambda: ta.MultiHeadLatentAttention(D, H, 10, 8, rope="latent"),
        "mla-latent-sep": lambda: ta.MultiHeadLatentAttention(D, H, 10, 8, rope="latent", separate_kv=True),
        "mla-decoupled": lambda: ta.MultiHeadLatentAttention(D, H, 10, 8, rope="decoupled", rope_dim=4),
        "tucker": lambda: ta.TuckerAttention(D, H, ranks=(3, 10, 8)),
        "tucker-post": lambda: ta.TuckerAttention(D, H, ranks=(3, 10, 8), post_ranks=(2, 7, 5)),
        "tucker-shared": lambda: ta.TuckerAttention(D, H, ranks=(3, 10, 8), shared_kv=True),
        "tucker-rope": lambda: ta.TuckerAttention(D, H, ranks=(3, 10, 8), post_ranks=(2, 7, 5), rope=True),
        "tucker-shared-rope": lambda: ta.TuckerAttention(D, H, ranks=(2, 6, 6), shared_kv=True, rope=True),
    }
    return layers[name]().double()


ALL = ["mha", "mha-rope", "mha-rope-half", "gqa", "gqa-rope", "mqa", "mla", "mla-sep", "mla-latent",
       "mla-latent-sep", "mla-decoupled", "tucker", "tucker-post", "tucker-shared", "tucker-rope",
       "tucker-shared-rope"]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", ALL)
def test_matches_independent_reference(name, causal):
    layer = make(name)
    x = torch.randn(2, 7, D, dtype=torch.float64)
    assert rel(layer(x, causal=causal), reference(layer, x, causal)) < 1e-12


@pytest.mark.parametrize("name", ["mha-rope", "mla-latent", "mla-decoupled", "tucker-rope"])
def test_explicit_positions_match_reference(name):
    layer = make(name)
    x = torch.randn(1, 5, D, dtype=torch.float64)
    pos = torch.tensor([3, 9, 10, 17, 40])
    assert rel(layer(x, causal=True, positions=pos), reference(layer, x, True, pos)) < 1e-12


@pytest.mark.parametrize("causal", [False, True])
def test_mha_equals_torch_multihead_attention(causal):
    ours = ta.MultiHeadAttention(D, H).double()
    theirs = torch.nn.MultiheadAttention(D, H, bias=False, batch_first=True).double()
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        theirs.out_proj.weight.copy_(ours.o_proj.weight)
    x = torch.randn(3, 6, D, dtype=torch.float64)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(6, dtype=torch.float64) if causal else None
    y_theirs, _ = theirs(x, x, x, attn_mask=mask, need_weights=False)
    assert rel(ours(x, causal=causal), y_theirs) < 1e-12


def test_mqa_is_gqa_with_one_group_and_gqa_full_is_mha():
    x = torch.randn(2, 5, D, dtype=torch.float64)
    mha = ta.MultiHeadAttention(D, H).double()
    gqa = ta.GroupedQueryAttention(D, H, H).double()
    gqa.load_state_dict(mha.state_dict())
    assert rel(gqa(x, causal=True), mha(x, causal=True)) < 1e-14
    # MQA == GQA(n_kv=1) == MHA whose K/V heads are all copies of one head
    mqa = ta.GroupedQueryAttention(D, H, 1).double()
    with torch.no_grad():
        mha.q_proj.weight.copy_(mqa.q_proj.weight)
        mha.o_proj.weight.copy_(mqa.o_proj.weight)
        mha.k_proj.weight.copy_(mqa.k_proj.weight.repeat(H, 1))
        mha.v_proj.weight.copy_(mqa.v_proj.weight.repeat(H, 1))
    assert rel(mqa(x), mha(x)) < 1e-13


@pytest.mark.parametrize("name", ALL)
def test_incremental_decoding_equals_full_pass(name):
    layer = make(name)
    x = torch.randn(2, 9, D, dtype=torch.float64)
    full = layer(x, causal=True)
    cache = layer.make_cache(2, 12)
    parts = [layer(x[:, :4], causal=True, cache=cache)]
    parts += [layer(x[:, t:t + 1], causal=True, cache=cache) for t in range(4, 7)]
    parts.append(layer(x[:, 7:], causal=True, cache=cache))   # a 2-token chunk after single tokens
    assert rel(torch.cat(parts, 1), full) < 1e-12
    assert cache.length == 9
    assert cache.numel() == 2 * 9 * layer.kv_cache_per_token()


@pytest.mark.parametrize("name", ALL)
def test_causality_future_tokens_do_not_change_the_past(name):
    layer = make(name)
    x = torch.randn(1, 8, D, dtype=torch.float64)
    y = layer(x, causal=True)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(1, 3, D, dtype=torch.float64)
    y2 = layer(x2, causal=True)
    assert torch.allclose(y[:, :5], y2[:, :5], atol=1e-13, rtol=0)
    assert not torch.allclose(y[:, 5:], y2[:, 5:])
    # without the mask, the past does see the future
    assert not torch.allclose(layer(x)[:, :5], layer(x2)[:, :5])


@pytest.mark.parametrize("name", ["mha-rope", "gqa-rope", "mla-latent", "mla-latent-sep", "mla-decoupled",
                                  "tucker-rope", "tucker-shared-rope"])
def test_rope_outputs_depend_only_on_relative_positions(name):
    layer = make(name)
    x = torch.randn(2, 6, D, dtype=torch.float64)
    pos = torch.arange(6)
    y0 = layer(x, causal=True, positions=pos)
    y1 = layer(x, causal=True, positions=pos + 37)
    assert rel(y1, y0) < 1e-10
    # ... but the absolute permutation of positions matters (RoPE is active)
    y2 = layer(x, causal=True, positions=torch.tensor([0, 2, 4, 6, 8, 10]))
    assert rel(y2, y0) > 1e-4


def test_cache_continues_positions_after_explicit_ones():
    layer = make("tucker-rope")
    x = torch.randn(1, 6, D, dtype=torch.float64)
    pos = torch.arange(10, 16)
    full = layer(x, causal=True, positions=pos)
    cache = layer.make_cache(1, 8)
    a = layer(x[:, :3], causal=True, cache=cache, positions=pos[:3])
    b = layer(x[:, 3:], causal=True, cache=cache)        # default continues at 13
    assert rel(torch.cat([a, b], 1), full) < 1e-12


@pytest.mark.parametrize("name", ["mha", "gqa", "mqa", "mla", "mla-decoupled", "tucker", "tucker-shared-rope"])
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_equals_math_backend(name, causal):
    layer = make(name)
    x = torch.randn(2, 6, D, dtype=torch.float64)
    layer.backend = "math"
    y_math = layer(x, causal=causal)
    layer.backend = "sdpa"
    assert rel(layer(x, causal=causal), y_math) < 1e-12


@pytest.mark.parametrize("name", ["mha-rope", "gqa", "mla-latent", "mla-decoupled", "tucker-post",
                                  "tucker-shared-rope"])
def test_gradcheck(name):
    layer = make(name)
    x = torch.randn(1, 4, D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: layer(inp, causal=True), (x,), eps=1e-6, atol=1e-5)
    # and gradients reach every parameter
    layer(x, causal=True).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_scale_is_one_over_sqrt_head_dim():
    assert ta.TuckerAttention(64, 4, ranks=(2, 8, 8)).scale == pytest.approx(1 / 4)
    assert ta.MultiHeadAttention(64, 16).scale == pytest.approx(1 / 2)
    assert ta.MultiHeadLatentAttention(64, 4, 8, 8, rope="decoupled", rope_dim=8).scale == pytest.approx(1 / 24 ** 0.5)


def test_tucker_never_forms_dense_tensors_or_repeats_kv(monkeypatch):
    """The kernel receives one K/V head of width r3 / r~3, and no d×d intermediate appears."""
    layer = ta.TuckerAttention(48, 6, ranks=(2, 8, 6), post_ranks=(3, 5, 4))
    seen = {}
    orig = ta.attention.base.attend

    def spy(q, k, v, **kw):
        seen.update(q=q.shape, k=k.shape, v=v.shape)
        return orig(q, k, v, **kw)

    monkeypatch.setattr(ta.attention.base, "attend", spy)
    layer(torch.randn(2, 5, 48))
    assert seen == {"q": (2, 6, 5, 6), "k": (2, 1, 5, 6), "v": (2, 1, 5, 4)}


def test_float32_and_dropout_train_mode():
    layer = ta.TuckerAttention(32, 4, ranks=(2, 8, 8), dropout=0.5)
    x = torch.randn(2, 5, 32)
    layer.train()
    assert not torch.allclose(layer(x), layer(x))       # dropout active
    layer.eval()
    assert torch.equal(layer(x), layer(x))
