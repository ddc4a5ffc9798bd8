"""Decoding at the speed of its cache: folded heads, static-shape caches, no host reads, cached head cores,
RoPE tables, compiled decoding steps — each checked against the plain path in float64."""

from __future__ import annotations

import pytest
import torch

import tucker_attention as ta
from tucker_attention.attention import backends
from tucker_attention.attention.backends import attend
from tucker_attention.attention.rope import apply_rope, rope_angles

D, H = 24, 6
LAYERS = {
    "mha": lambda: ta.MultiHeadAttention(D, H),
    "mha-rope": lambda: ta.MultiHeadAttention(D, H, rope=True),
    "gqa": lambda: ta.GroupedQueryAttention(D, H, 2),
    "mqa-rope": lambda: ta.GroupedQueryAttention(D, H, 1, rope=True),
    "mla": lambda: ta.MultiHeadLatentAttention(D, H, 10, 8),
    "mla-latent": lambda: ta.MultiHeadLatentAttention(D, H, 10, 8, rope="latent"),
    "mla-decoupled": lambda: ta.MultiHeadLatentAttention(D, H, 10, 8, rope="decoupled", rope_dim=2),
    "mla-separate": lambda: ta.MultiHeadLatentAttention(D, H, 10, 8, separate_kv=True, rope="latent"),
    "tucker": lambda: ta.TuckerAttention(D, H, ranks=(3, 10, 8)),
    "tucker-rope": lambda: ta.TuckerAttention(D, H, ranks=(3, 10, 8), post_ranks=(2, 9, 6), rope=True),
    "tucker-shared-rope": lambda: ta.TuckerAttention(D, H, ranks=(3, 10, 8), shared_kv=True, rope=True),
    "tucker-bias": lambda: ta.TuckerAttention(D, H, ranks=(3, 10, 8), bias=True),
}


def build(name: str) -> ta.attention.AttentionLayer:
    torch.manual_seed(0)
    layer = LAYERS[name]().double().eval()
    for p in layer.parameters():                      # biases start at zero: make them count
        torch.nn.init.normal_(p, std=0.3) if p.dim() == 1 else None
    return layer


def loop_reference(q, k, v, scale, causal, mask=None):
    """Per-(batch, head) softmax attention with the bottom-right causal mask and an optional (N, S) mask."""
    B, Hq, N, _ = q.shape
    Hk, S = k.shape[1], k.shape[2]
    out = torch.empty(B, Hq, N, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for h in range(Hq):
            g = h // (Hq // Hk)
            s = scale * q[b, h] @ k[b, g].T
            for i in range(N):
                if causal:
                    s[i, i + (S - N) + 1:] = float("-inf")
                if mask is not None:
                    s[i, ~mask[i]] = float("-inf")
            out[b, h] = torch.softmax(s, -1) @ v[b, g]
    return out


# ------------------------------------------------------------------------------------------ folded heads
@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("N", [1, 3, 8, 9])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("Hk", [1, 2])
def test_folded_heads_equal_the_per_head_reference(backend, N, causal, with_mask, Hk, monkeypatch):
    torch.manual_seed(N)
    q = torch.randn(2, 6, N, 4, dtype=torch.float64)
    k, v = torch.randn(2, Hk, 11, 4, dtype=torch.float64), torch.randn(2, Hk, 11, 3, dtype=torch.float64)
    mask = None
    if with_mask:
        mask = torch.rand(N, 11) > 0.4
        mask[:, 11 - N:] = True                        # every query keeps at least its own key
    seen = []
    kernel = backends._KERNELS[backend]
    monkeypatch.setitem(backends._KERNELS, backend, lambda q, k, v, **kw: seen.append(q.shape) or kernel(q, k, v, **kw))
    out = attend(q, k, v, scale=0.4, causal=causal, backend=backend, mask=mask)
    torch.testing.assert_close(out, loop_reference(q, k, v, 0.4, causal, mask), rtol=1e-12, atol=1e-12)
    folded = N <= backends.FOLD_MAX_QUERIES
    assert seen == [(2, Hk, 6 // Hk * N, 4) if folded else (2, 6, N, 4)]


def test_fold_heads_layout():
    q = torch.arange(3 * 2 * 1.0).view(1, 3, 2, 1)                     # (B, H, N, D)
    mask = torch.tensor([[True, False], [True, True]])
    qf, mf = backends.fold_heads(q, mask)
    assert qf.shape == (1, 1, 6, 1) and qf.flatten().tolist() == q.flatten().tolist()   # row h·N + i
    assert mf.tolist() == [[True, False], [True, True]] * 3
    qg, mg = backends.fold_heads(torch.arange(4 * 2 * 1.0).view(1, 4, 2, 1), mask, 2)  # 2 K/V heads, G = 2
    assert qg.shape == (1, 2, 4, 1) and qg[0, 1, :, 0].tolist() == [4.0, 5.0, 6.0, 7.0]    # heads 2, 3
    assert mg.tolist() == [[True, False], [True, True]] * 2


def test_mask_argument_is_checked_and_keeps_flash_out():
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match=r"mask must be a boolean \(queries, keys\) = \(3, 5\)"):
        attend(q, k, v, mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="no explicit mask"):
        backends.resolve_backend("flash", q, k, v, torch.ones(3, 5, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------- caches
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("name", list(LAYERS))
def test_cached_decoding_equals_full_pass(name, static):
    """Prefill 4 tokens, then 3 tokens, then one at a time: the same outputs as one causal pass, with the
    dynamic and with the static-shape cache (masked attention over all slots, written by index_copy_)."""
    layer = build(name)
    x = torch.randn(2, 12, D, dtype=torch.float64)
    full = layer(x, causal=True)
    cache = layer.make_cache(2, 14, static=static)
    parts = [layer(x[:, :4], causal=True, cache=cache), layer(x[:, 4:7], causal=True, cache=cache)]
    parts += [layer(x[:, t:t + 1], causal=True, cache=cache) for t in range(7, 12)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-10, atol=1e-12)
    assert cache.length == 12 and cache.numel() == 2 * 12 * layer.kv_cache_per_token()
    assert int(cache.next_position()) == 12


@pytest.mark.parametrize("static", [False, True])
def test_cache_non_causal_and_explicit_positions(static):
    """Non-causal calls see every held token; explicit positions are kept and the defaults continue after them."""
    layer = build("tucker-shared-rope")
    x = torch.randn(1, 6, D, dtype=torch.float64)
    pos = torch.arange(6) + 40
    full = layer(x, positions=pos)                                   # non-causal over all 6
    cache = layer.make_cache(1, 8, static=static)
    layer(x[:, :4], cache=cache, positions=pos[:4])
    y = layer(x[:, 4:], cache=cache)                                 # default positions continue at 44
    torch.testing.assert_close(y, full[:, 4:], rtol=1e-10, atol=1e-12)
    assert cache.held_positions()[:6].tolist() == pos.tolist()
    assert int(cache.next_position()) == 46


def test_cache_rewind_and_reset():
    layer = build("tucker")
    x = torch.randn(1, 5, D, dtype=torch.float64)
    for static in (False, True):
        cache = layer.make_cache(1, 6, static=static)
        layer(x[:, :4], causal=True, cache=cache)
        ref = layer(x[:, 4:], causal=True, cache=cache)
        cache.length = 4                                             # decode the same step again
        torch.testing.assert_close(layer(x[:, 4:], causal=True, cache=cache), ref, rtol=0, atol=0)
        cache.reset()
        assert cache.length == 0 and int(cache.next_position()) == 0
        with pytest.raises(ValueError, match="length must be an int in"):
            cache.length = 7


def test_dynamic_cache_overflow_and_default_positions_past_max_seq_len():
    layer = ta.TuckerAttention(D, H, ranks=(3, 10, 8), max_seq_len=6)
    cache = layer.make_cache(1, 4)
    layer(torch.randn(1, 4, D), cache=cache)
    with pytest.raises(ValueError, match="cache overflow"):
        layer(torch.randn(1, 1, D), cache=cache)
    cache = layer.make_cache(1, 4)
    layer(torch.randn(1, 2, D), cache=cache, positions=torch.tensor([4, 5]))
    with pytest.raises(ValueError, match=r"positions 6..6 exceed max_seq_len=6"):
        layer(torch.randn(1, 1, D), cache=cache)


# ------------------------------------------------------------------------------------- no host reads
@pytest.fixture
def no_host_reads(monkeypatch):
    """Make every way of reading a tensor's value on the host raise."""
    def boom(*args, **kwargs):
        raise AssertionError("a decoding step read a tensor value back to the host")
    for name in ("item", "tolist", "__int__", "__index__", "__float__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, boom)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("name", ["mha-rope", "mqa-rope", "mla-decoupled", "tucker-rope", "tucker-shared-rope"])
def test_decode_step_reads_nothing_back(name, static, request):
    layer = build(name)
    cache = layer.make_cache(2, 10, static=static)
    with torch.no_grad():
        layer(torch.randn(2, 5, D, dtype=torch.float64), causal=True, cache=cache)
        request.getfixturevalue("no_host_reads")
        for _ in range(3):
            layer(torch.randn(2, 1, D, dtype=torch.float64), causal=True, cache=cache)


@pytest.mark.parametrize("name", ["mha-rope", "mqa-rope", "mla-decoupled", "tucker-rope", "tucker-shared-rope"])
def test_static_decode_step_is_one_graph_without_breaks(name):
    """torch.compile(fullgraph=True) fails on any graph break, including a host read (.item(), int(tensor));
    with the static cache, three steps at three fill levels run one graph (no recompilation)."""
    torch._dynamo.reset()
    layer = build(name)
    cache = layer.make_cache(2, 10, static=True)
    x = torch.randn(2, 8, D, dtype=torch.float64)
    counts = torch._dynamo.utils.counters
    counts.clear()
    step = torch.compile(lambda t: layer(t, causal=True, cache=cache), fullgraph=True, backend="eager")
    with torch.no_grad():
        layer(x[:, :5], causal=True, cache=cache)
        outs = [step(x[:, t:t + 1].clone()) for t in range(5, 8)]
    assert counts["stats"]["unique_graphs"] == 1
    with torch.no_grad():
        full = layer(x, causal=True)
    torch.testing.assert_close(torch.cat(outs, 1), full[:, 5:], rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_compiled_decode_step_equals_eager():
    """The inductor-compiled static decoding step gives the eager step's output (float64)."""
    torch._dynamo.reset()
    layer = build("tucker-rope")
    x = torch.randn(2, 7, D, dtype=torch.float64)
    eager_cache, comp_cache = layer.make_cache(2, 8, static=True), layer.make_cache(2, 8, static=True)
    step = torch.compile(lambda t, c: layer(t, causal=True, cache=c), dynamic=False)
    with torch.no_grad():
        layer(x[:, :4], causal=True, cache=eager_cache)
        layer(x[:, :4], causal=True, cache=comp_cache)
        for t in range(4, 7):
            xt = x[:, t:t + 1].clone()
            torch.testing.assert_close(step(xt, comp_cache), layer(xt, causal=True, cache=eager_cache),
                                       rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_generate_compiled_equals_eager():
    from tucker_attention.models import GPT, AttentionConfig, GPTConfig

    torch._dynamo.reset()
    torch.manual_seed(0)
    att = AttentionConfig(method="tucker", ranks=(2, 8, 8), rope=True)
    model = GPT(config=GPTConfig(vocab_size=50, block_size=12, n_layer=2, d_model=32, n_heads=4,
                                 attention=att)).double()
    prompt = torch.randint(0, 50, (2, 3))
    eager = model.generate(prompt, 12, top_k=1)                      # grows past block_size: slides eagerly
    assert torch.equal(model.generate(prompt, 12, top_k=1, compile=True), eager)
    with pytest.raises(TypeError, match="compile must be a bool"):
        model.generate(prompt, 1, compile="yes")


# ---------------------------------------------------------------------------- head cores, RoPE tables
def tucker_reference(layer: ta.TuckerAttention, x: torch.Tensor) -> torch.Tensor:
    """PAPER.md §3 computed from the factors with einsums (non-causal, no RoPE, no biases)."""
    G = torch.einsum("ha,abc->hbc", layer.U1, layer.core)
    Gt = torch.einsum("ha,abc->hbc", layer.post_U1, layer.post_core)
    q = torch.einsum("bnr,hrs->bhns", x @ layer.U2, G)
    k, v = (x @ layer.U3).unsqueeze(1), (x @ layer.post_U3).unsqueeze(1)
    o = torch.softmax(layer.scale * q @ k.transpose(-1, -2), -1) @ v
    return torch.einsum("bhnv,hov->bno", o, Gt) @ layer.post_U2.T


def test_head_cores_are_kept_in_inference_and_renewed_when_weights_change():
    layer = build("tucker")
    x = torch.randn(2, 5, D, dtype=torch.float64)
    with torch.no_grad():
        first = layer.head_cores()
        assert layer.head_cores() is first                           # kept while the weights are unchanged
    assert layer.head_cores() is not first                           # with gradients: formed per forward

    def check():
        with torch.no_grad():
            torch.testing.assert_close(layer(x), tucker_reference(layer, x), rtol=1e-10, atol=1e-12)

    check()
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(x).square().sum().backward()
    opt.step()                                                       # in-place update: versions change
    check()
    other = build("tucker")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    layer.load_state_dict(other.state_dict())                        # copy_ into the parameters
    check()
    with torch.no_grad():
        layer.post_core.mul_(-2.0)
    check()
    layer.float().double()                                           # .to(): the store is dropped
    check()
    G_all, Gt_all = layer.head_cores()
    r2, r3 = layer.ranks[1], layer.ranks[2]
    G = torch.einsum("ha,abc->hbc", layer.U1, layer.core)
    torch.testing.assert_close(G_all[:, 2 * r3:3 * r3], G[2])                       # column block i = G_i
    Gt = torch.einsum("ha,abc->hbc", layer.post_U1, layer.post_core)
    p3 = layer.post_ranks[2]
    torch.testing.assert_close(Gt_all[4 * p3:5 * p3], Gt[4].T)                      # row block i = G̃_iᵀ
    assert G_all.shape == (r2, H * r3)


def test_head_cores_of_inference_tensors_are_formed_each_call():
    with torch.inference_mode():
        layer = build("tucker")                                      # parameters are inference tensors
        x = torch.randn(1, 3, D, dtype=torch.float64)
        assert layer.head_cores() is not layer.head_cores()
        torch.testing.assert_close(layer(x), tucker_reference(layer, x), rtol=1e-10, atol=1e-12)


def test_gradients_flow_through_the_head_cores():
    layer = build("tucker")
    x = torch.randn(1, 4, D, dtype=torch.float64)
    torch.autograd.gradcheck(lambda c: torch.func.functional_call(layer, {"core": c}, (x,)).sum(),
                             (layer.core.detach().clone().requires_grad_(),))


def test_rope_table_rows_equal_the_angles():
    layer = build("tucker-rope")
    t = torch.randn(2, 6, 5, 8, dtype=torch.float64)
    pos = torch.tensor([0, 3, 7, 100, 4095])
    cos, sin = rope_angles(pos, 8, base=layer.rope_base)
    assert torch.equal(layer._rope(t, pos), apply_rope(t, cos, sin, style=layer.rope_style))
    keys = [k for k in layer._derived if k[0] == "rope"]
    layer._rope(t, pos)
    assert [k for k in layer._derived if k[0] == "rope"] == keys == [("rope", 8, t.device, torch.float64,
                                                                      layer.rope_base, layer.max_seq_len)]
    layer.float()
    assert not any(k[0] == "rope" for k in layer._derived)          # dropped by .to()


# ------------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("name", ["mqa-rope", "tucker-rope", "tucker-shared-rope", "mla-decoupled"])
def test_gpu_decode_step_does_not_synchronize(name, static):
    """On CUDA a decoding step never waits for the device (torch.cuda.set_sync_debug_mode raises on a sync)."""
    layer = build(name).cuda()
    cache = layer.make_cache(2, 16, static=static)
    x = torch.randn(2, 12, D, dtype=torch.float64, device="cuda")
    with torch.no_grad():
        full = layer(x, causal=True)
        parts = [layer(x[:, :8], causal=True, cache=cache)]
        torch.cuda.set_sync_debug_mode("error")
        try:
            parts += [layer(x[:, t:t + 1], causal=True, cache=cache) for t in range(8, 12)]
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-10, atol=1e-12)


@pytest.mark.gpu
def test_gpu_generate_compiled_with_cuda_graphs_equals_eager():
    """generate(compile=True) on CUDA: static caches, mode="reduce-overhead" (CUDA graphs), same greedy tokens."""
    from tucker_attention.models import GPT, AttentionConfig, GPTConfig

    torch._dynamo.reset()
    torch.manual_seed(0)
    att = AttentionConfig(method="tucker", ranks=(2, 8, 8), rope=True)
    model = GPT(config=GPTConfig(vocab_size=50, block_size=24, n_layer=2, d_model=32, n_heads=4,
                                 attention=att)).cuda().double()
    prompt = torch.randint(0, 50, (2, 3), device="cuda")
    assert torch.equal(model.generate(prompt, 16, top_k=1, compile=True), model.generate(prompt, 16, top_k=1))
