"""GPT and ViT with every attention method: shapes, parameter counts, KV-cache decoding, configs."""

from __future__ import annotations

import math

import pytest
import torch

from tucker_attention import counting
from tucker_attention.models import GPT, AttentionConfig, GPTConfig, ViT, ViTConfig, build_model

D, H, L = 32, 4, 2

ATTENTIONS = {
    "mha": AttentionConfig(method="mha"),
    "gqa": AttentionConfig(method="gqa", n_kv_heads=2),
    "mqa": AttentionConfig(method="mqa"),
    "mla": AttentionConfig(method="mla", q_latent=16, kv_latent=8),
    "mla-sep": AttentionConfig(method="mla", q_latent=8, kv_latent=8, separate_kv=True),
    "tucker": AttentionConfig(method="tucker", ranks=(2, 16, 8)),
    "tucker-post": AttentionConfig(method="tucker", ranks=(2, 16, 8), post_ranks=(3, 8, 4)),
    "tucker-shared": AttentionConfig(method="tucker", ranks=(4, 8, 8), shared_kv=True),
}
ROPE_ATTENTIONS = {
    "mha-rope": AttentionConfig(method="mha", rope=True),
    "gqa-rope": AttentionConfig(method="gqa", n_kv_heads=2, rope=True),
    "mla-latent": AttentionConfig(method="mla", q_latent=16, kv_latent=8, rope="latent"),
    "mla-decoupled": AttentionConfig(method="mla", q_latent=16, kv_latent=8, rope="decoupled"),
    "tucker-rope": AttentionConfig(method="tucker", ranks=(2, 16, 8), rope=True),
    "tucker-shared-rope": AttentionConfig(method="tucker", ranks=(2, 8, 8), shared_kv=True, rope=True),
}
ALL = {**ATTENTIONS, **ROPE_ATTENTIONS}



def gpt(att: AttentionConfig, **kw) -> GPT:
    cfg = dict(vocab_size=50, block_size=16, n_layer=L, d_model=D, n_heads=H, attention=att)
    cfg.update(kw)
    return GPT(config=GPTConfig(**cfg))


def vit(att: AttentionConfig, **kw) -> ViT:
    cfg = dict(image_size=8, patch_size=2, channels=1, num_classes=10, n_layer=L, d_model=D, n_heads=H,
               attention=att)
    cfg.update(kw)
    return ViT(config=ViTConfig(**cfg))


# ------------------------------------------------------------------------------ shapes and counting
@pytest.mark.parametrize("name", list(ALL))
def test_gpt_shapes_and_counts(name):
    att = ALL[name]
    model = gpt(att)
    idx = torch.randint(0, 50, (3, 11))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 11, 50)
    assert loss.shape == () and torch.isfinite(loss)
    assert model(idx)[1] is None
    sizes = att.sizes()
    assert model.attention_params() == L * counting.attention_params(att.method, D, H, **sizes)
    assert model.kv_cache_per_token() == L * counting.kv_cache_per_token(att.method, D, H, **sizes)
    assert (model.wpe is None) == att.has_rope                  # RoPE: no learned positions


@pytest.mark.parametrize("name", list(ATTENTIONS))
def test_vit_shapes_and_counts(name):
    att = ATTENTIONS[name]
    for pool in ("cls", "mean"):
        model = vit(att, pool=pool)
        x = torch.randn(5, 1, 8, 8)
        logits, loss = model(x, torch.randint(0, 10, (5,)))
        assert logits.shape == (5, 10) and torch.isfinite(loss)
        assert model.attention_params() == L * counting.attention_params(att.method, D, H, **att.sizes())
        assert model.kv_cache_per_token() == L * counting.kv_cache_per_token(att.method, D, H, **att.sizes())
        assert model.pos_embed.shape == (1, 16 + (pool == "cls"), D)


def test_gpt_num_params_by_hand():
    """MHA GPT, counted from the architecture: embeddings (tied once), blocks, final norm."""
    V, N = 50, 16
    model = gpt(ATTENTIONS["mha"])
    block = 4 * D * D + 2 * (2 * D) + (D * 4 * D + 4 * D) + (4 * D * D + D)   # attn, 2 LN, MLP
    expected = V * D + N * D + L * block + 2 * D
    assert model.num_params() == expected
    assert model.num_params(non_embedding=True) == expected - N * D
    assert model.lm_head.weight is model.wte.weight


def test_vit_num_params_by_hand():
    model = vit(ATTENTIONS["mha"], pool="cls")
    block = 4 * D * D + 2 * (2 * D) + (D * 4 * D + 4 * D) + (4 * D * D + D)
    patch = 1 * 2 * 2 * D + D
    expected = patch + D + 17 * D + L * block + 2 * D + (D * 10 + 10)
    assert model.num_params() == expected


def test_residual_projection_init_is_scaled():
    torch.manual_seed(0)
    model = gpt(ATTENTIONS["mha"], d_model=128, n_heads=4, n_layer=8)
    target = 0.02 / math.sqrt(2 * 8)
    for block in model.blocks:
        assert block.mlp.c_proj.weight.std().item() == pytest.approx(target, rel=0.05)
        assert block.attn.o_proj.weight.std().item() == pytest.approx(target, rel=0.05)
        assert block.mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)


# ------------------------------------------------------------------------------ causality, caches
@pytest.mark.parametrize("name", ["mha", "tucker", "mla-decoupled"])
def test_gpt_is_causal(name):
    model = gpt(ALL[name]).double().eval()
    idx = torch.randint(0, 50, (2, 12))
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 50
    a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-12)
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-3


@pytest.mark.parametrize("name", list(ALL))
def test_incremental_forward_with_caches_equals_full_forward(name):
    model = gpt(ALL[name]).double().eval()
    idx = torch.randint(0, 50, (2, 13))
    full, _ = model(idx)
    caches = model.make_caches(2)
    parts = [model(idx[:, :5], caches=caches)[0]]
    for t in range(5, 13):
        parts.append(model(idx[:, t:t + 1], caches=caches)[0])
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-10, atol=1e-10)
    assert caches[0].length == 13
    assert sum(c.numel() for c in caches) == 2 * 13 * model.kv_cache_per_token()


@pytest.mark.parametrize("name", list(ALL))
def test_generate_with_cache_equals_without(name, monkeypatch):
    """Greedy float64 decoding: the KV-cache path gives the same tokens as re-running the context, both
    inside the context window and after the sequence outgrows block_size (16)."""
    torch.manual_seed(1)
    model = gpt(ALL[name]).double()
    prompt = torch.randint(0, 50, (2, 3))
    lengths = []
    forward = GPT.forward

    def spy(self, idx, targets=None, *, caches=None):
        lengths.append((idx.shape[1], caches is not None))
        return forward(self, idx, targets, caches=caches)

    monkeypatch.setattr(GPT, "forward", spy)
    with_cache = model.generate(prompt, 20, top_k=1, use_cache=True)
    assert lengths[0] == (3, True) and all(n == (1, True) for n in lengths[1:14])   # prefill, then 1 token
    assert all(n == (16, False) for n in lengths[14:])                              # window slides
    lengths.clear()
    without = model.generate(prompt, 20, top_k=1, use_cache=False)
    assert all(not cached for _, cached in lengths)
    assert with_cache.shape == (2, 23)
    assert torch.equal(with_cache, without)
    assert torch.equal(with_cache[:, :3], prompt)


def test_generate_sampling_is_reproducible_and_checks_arguments():
    model = gpt(ATTENTIONS["tucker"])
    prompt = torch.zeros(1, 1, dtype=torch.long)
    a = model.generate(prompt, 8, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(3))
    b = model.generate(prompt, 8, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and model.training
    with pytest.raises(ValueError, match="temperature"):
        model.generate(prompt, 2, temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(prompt, 2, top_k=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(prompt, -1)


def test_forward_rejects_bad_inputs():
    model = gpt(ATTENTIONS["mha"])
    with pytest.raises(ValueError, match="block_size=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="2-D integer"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="targets"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long))
    caches = model.make_caches(1)
    model(torch.zeros(1, 10, dtype=torch.long), caches=caches)
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, 7, dtype=torch.long), caches=caches)
    with pytest.raises(ValueError, match=r"images must have shape \(batch, 1, 8, 8\)"):
        vit(ATTENTIONS["mha"])(torch.zeros(2, 3, 8, 8))


def test_vit_attention_is_bidirectional():
    model = vit(ATTENTIONS["tucker"], pool="cls").double().eval()
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    y = x.clone()
    y[..., -2:, -2:] += 1.0                                       # change only the last patch
    assert (model(x)[0] - model(y)[0]).abs().max() > 1e-6         # the class token (first) sees it


def test_build_model_dispatch_and_config_round_trip():
    g = GPTConfig(attention=AttentionConfig(method="tucker", ranks=(2, 16, 8), post_ranks=(2, 8, 8)))
    assert isinstance(build_model(g), GPT)
    assert GPTConfig.from_dict(g.to_dict()) == g
    v = ViTConfig(attention={"method": "gqa", "n_kv_heads": 2})
    assert isinstance(build_model(v), ViT) and v.attention.n_kv_heads == 2
    assert ViTConfig.from_dict(v.to_dict()) == v
    with pytest.raises(TypeError, match="GPTConfig or ViTConfig"):
        build_model({"method": "mha"})


def test_labels():
    assert ATTENTIONS["tucker"].label() == "Tucker [2,16,8]"
    assert ATTENTIONS["gqa"].label() == "GQA n_kv=2"
    assert AttentionConfig(method="mla", q_latent=8, kv_latent=8).label() == "MLA d_c=8"
    assert ROPE_ATTENTIONS["mla-latent"].label().endswith("+RoPE(latent)")


# ------------------------------------------------------------------------------------- bad configs
@pytest.mark.parametrize("kwargs, exc, match", [
    ({"method": "sparse"}, ValueError, "attention.method must be one of"),
    ({"method": "gqa"}, ValueError, "needs attention.n_kv_heads"),
    ({"method": "mla", "q_latent": 8}, ValueError, "needs attention.kv_latent"),
    ({"method": "tucker"}, ValueError, "needs attention.ranks"),
    ({"method": "mha", "ranks": (1, 2, 3)}, ValueError, r"does not use ranks=\(1, 2, 3\)"),
    ({"method": "tucker", "ranks": (1, 2)}, ValueError, "3 entries"),
    ({"method": "tucker", "ranks": "8,64,64"}, TypeError, "sequence of 3 ints"),
    ({"method": "tucker", "ranks": (0, 2, 2)}, ValueError, r"attention.ranks\[0\] must be an int >= 1"),
    ({"method": "mla", "q_latent": 8, "kv_latent": 8, "rope": True}, ValueError,
     r"attention.rope \(for method='mla'\) must be one of \[None, 'latent', 'decoupled'\]"),
    ({"method": "mha", "rope": "latent"}, ValueError, r"must be one of \[False, True\], got .*'latent'"),
    ({"method": "mha", "backend": "cuda"}, ValueError, "attention.backend"),
    ({"method": "mha", "dropout": 1.0}, ValueError, r"attention.dropout must be in \[0.0, 1.0\)"),
])
def test_attention_config_rejects(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        AttentionConfig(**kwargs)


@pytest.mark.parametrize("make, exc, match", [
    (lambda: GPTConfig(d_model=30, n_heads=4), ValueError, "d_model=30 must be divisible by n_heads=4"),
    (lambda: GPTConfig(attention=AttentionConfig(method="tucker", ranks=(8, 16, 16))), ValueError,
     r"ranks\[0\]=8 must be in \[1, n_heads=4\]"),
    (lambda: GPTConfig(attention=AttentionConfig(method="gqa", n_kv_heads=3)), ValueError,
     "n_heads=4 must be divisible by n_kv_heads=3"),
    (lambda: GPTConfig(attention=AttentionConfig(method="tucker", ranks=(2, 8, 7), rope=True)), ValueError,
     "must be even"),
    (lambda: GPTConfig(attention=AttentionConfig(method="mla", q_latent=8, kv_latent=8, rope_dim=4)), ValueError,
     "rope_dim=4 is only used with rope='decoupled'"),
    (lambda: GPTConfig(attention=AttentionConfig(method="mla", q_latent=80, kv_latent=8)), ValueError,
     r"q_latent must be an int in \[1, d_model=64\], got q_latent=80"),
    (lambda: GPTConfig(block_size=0), ValueError, "block_size must be an int >= 1"),
    (lambda: GPTConfig(vocab_size=2.5), TypeError, "vocab_size must be an int"),
    (lambda: GPTConfig(position="rotary"), ValueError, "position must be one of"),
    (lambda: GPTConfig(dropout=-0.1), ValueError, "dropout"),
    (lambda: ViTConfig(image_size=10, patch_size=4), ValueError, "image_size=10 must be divisible by patch_size=4"),
    (lambda: ViTConfig(pool="max"), ValueError, "pool must be one of"),
    (lambda: GPT(config=ViTConfig()), TypeError, "GPTConfig"),
])
def test_model_config_rejects(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


# ------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["tucker", "mqa", "tucker-rope"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_sdpa_kernels_match_math_path(name, dtype):
    """SDPA on CUDA (flash kernel in bf16, efficient/cuDNN in fp32) equals the explicit math path."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    att = ALL[name]
    ref = gpt(AttentionConfig(**{**att.to_dict(), "backend": "math"}), d_model=128, n_heads=4, block_size=64).cuda()
    fast = gpt(AttentionConfig(**{**att.to_dict(), "backend": "sdpa"}), d_model=128, n_heads=4, block_size=64).cuda()
    fast.load_state_dict(ref.state_dict())
    assert ref.blocks[0].attn.backend == "math" and fast.blocks[0].attn.backend == "sdpa"
    idx = torch.randint(0, 50, (4, 64), device="cuda")
    backends = [SDPBackend.FLASH_ATTENTION] if dtype == torch.bfloat16 else [
        SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32), sdpa_kernel(backends):
        a, b = ref(idx)[0].float(), fast(idx)[0].float()
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(b, a, rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["mha", "tucker", "mla-latent"])
def test_gpu_generate_with_cache_equals_without(name):
    torch.manual_seed(0)
    model = gpt(ALL[name]).cuda().double()
    prompt = torch.randint(0, 50, (2, 3), device="cuda")
    a = model.generate(prompt, 20, top_k=1, use_cache=True)
    b = model.generate(prompt, 20, top_k=1, use_cache=False)
    assert torch.equal(a, b)
    with torch.autocast("cuda", dtype=torch.bfloat16):               # bf16 cache under autocast runs
        c = model.float().generate(prompt, 10, top_k=1)
    assert c.shape == (2, 13)
