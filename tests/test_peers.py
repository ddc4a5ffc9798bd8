"""Peers' attention modules in (``convert.from_peer``): same weights, same output; biases exact.

PyTorch's ``nn.MultiheadAttention`` always runs. The 🤗 ``transformers`` modules (an optional extra) are built
from small configs with random weights — nothing is downloaded.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tucker_attention import (
    GroupedQueryAttention,
    MultiHeadAttention,
    MultiHeadLatentAttention,
    TuckerAttention,
    counting,
)
from tucker_attention.convert import from_peer, peer_kind, to_tucker

TOL = 1e-12          # max abs difference, float64, outputs of size O(1)


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Generic float64 weights of size O(1/sqrt(fan_in)); norm weights around 1."""
    torch.manual_seed(seed)
    module = module.double().eval()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.copy_(torch.randn_like(p) / math.sqrt(p.shape[-1] if p.dim() > 1 else 4))
    return module


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max())


def additive_causal_mask(n: int) -> torch.Tensor:
    return torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)


# ------------------------------------------------------------------------- torch.nn.MultiheadAttention
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_torch_multihead_attention(bias, causal):
    peer = randomize_(nn.MultiheadAttention(32, 4, bias=bias, batch_first=True))
    ours = from_peer(peer)
    assert isinstance(ours, MultiHeadAttention) and ours.bias == bias
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    mask = additive_causal_mask(9) if causal else None
    y, _ = peer(x, x, x, need_weights=False, attn_mask=mask, is_causal=causal)
    assert max_diff(ours(x, causal=causal), y) < TOL
    t = to_tucker(ours)                                          # biases fold exactly
    assert t.bias == bias
    assert max_diff(t(x, causal=causal), y) < TOL


def test_torch_multihead_attention_sequence_first():
    peer = randomize_(nn.MultiheadAttention(16, 2, batch_first=False))
    x = torch.randn(3, 5, 16, dtype=torch.float64)               # (batch, seq, d) for us
    y, _ = peer(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), need_weights=False)
    assert max_diff(from_peer(peer)(x), y.transpose(0, 1)) < TOL


def test_torch_multihead_attention_unsupported_options():
    with pytest.raises(ValueError, match="add_bias_kv"):
        from_peer(nn.MultiheadAttention(16, 2, add_bias_kv=True))
    with pytest.raises(ValueError, match="add_zero_attn"):
        from_peer(nn.MultiheadAttention(16, 2, add_zero_attn=True))
    with pytest.raises(ValueError, match="kdim=8"):
        from_peer(nn.MultiheadAttention(16, 2, kdim=8, vdim=8))
    with pytest.raises(TypeError, match="from_peer supports"):
        from_peer(nn.Linear(4, 4))
    with pytest.raises(TypeError, match="already a tucker_attention layer"):
        from_peer(MultiHeadAttention(16, 2))
    assert peer_kind(nn.Linear(4, 4)) is None


def test_query_bias_is_a_per_head_offset_in_the_key_space():
    """to_tucker's q_bias_i = b^Q G_i satisfies q_bias_i U3ᵀ = b^Q_i (W^K_i)ᵀ; out_bias = b^V W^O + b^O."""
    peer = randomize_(nn.MultiheadAttention(16, 4, batch_first=True))
    ours = from_peer(peer)
    t = to_tucker(ours)
    assert t.q_bias.shape == (4, 16) and t.out_bias.shape == (16,)
    dh = 4
    for i in range(4):
        hi = slice(i * dh, (i + 1) * dh)
        torch.testing.assert_close(t.q_bias[i] @ t.U3.T, ours.q_proj.bias[hi] @ ours.k_proj.weight[hi],
                                   rtol=0, atol=1e-13)
    torch.testing.assert_close(t.out_bias, ours.v_proj.bias @ ours.o_proj.weight.T + ours.o_proj.bias,
                               rtol=0, atol=1e-13)
    # a key bias only shifts each score row by a constant: changing it leaves the output unchanged
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    y = ours(x, causal=True)
    with torch.no_grad():
        ours.k_proj.bias.add_(torch.randn(16, dtype=torch.float64))
    assert max_diff(ours(x, causal=True), y) < TOL


# ------------------------------------------------------------------------------------------ GPT-2
def test_gpt2_attention():
    transformers = pytest.importorskip("transformers")
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

    config = transformers.GPT2Config(n_embd=32, n_head=4, n_layer=3, attn_pdrop=0.0, resid_pdrop=0.0,
                                     scale_attn_by_inverse_layer_idx=True)   # score scale 1/(sqrt(d_H) * 3)
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    for impl in ("eager", "sdpa"):
        config._attn_implementation = impl
        peer = randomize_(GPT2Attention(config, layer_idx=2))
        ours = from_peer(peer)
        assert isinstance(ours, MultiHeadAttention) and ours.bias
        mask = additive_causal_mask(9)[None, None] if impl == "eager" else None   # sdpa: causal by itself
        y, _ = peer(x, attention_mask=mask)
        assert max_diff(ours(x, causal=True), y) < TOL
        assert max_diff(to_tucker(ours)(x, causal=True), y) < TOL
    with pytest.raises(ValueError, match="is_cross_attention"):
        from_peer(GPT2Attention(config, is_cross_attention=True, layer_idx=0))


def test_gpt2_model_layers_are_found_by_peer_kind():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_embd=32, n_head=4, n_layer=2, vocab_size=64, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    kinds = [peer_kind(m) for m in model.modules() if peer_kind(m) is not None]
    assert kinds == ["GPT2Attention", "GPT2Attention"]


# -------------------------------------------------------------------------------------------- ViT
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_vit_attention(qkv_bias):
    transformers = pytest.importorskip("transformers")
    from transformers.models.vit.modeling_vit import ViTAttention

    config = transformers.ViTConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1,
                                    intermediate_size=64, qkv_bias=qkv_bias)
    config._attn_implementation = "sdpa"
    peer = randomize_(ViTAttention(config))
    ours = from_peer(peer)
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    y = peer(x)[0]
    assert max_diff(ours(x), y) < TOL                            # ViT is not causal
    assert max_diff(to_tucker(ours)(x), y) < TOL


class _ViT4SelfAttention(nn.Module):
    """The transformers 4.x layout (query/key/value Linear), written out with its forward."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.num_attention_heads, self.attention_head_size = heads, d // heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.dropout = nn.Dropout(0.0)

    def forward(self, x):
        B, N, d = x.shape
        q, k, v = (f(x).view(B, N, self.num_attention_heads, -1).transpose(1, 2)
                   for f in (self.query, self.key, self.value))
        A = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.attention_head_size), dim=-1)
        return (A @ v).transpose(1, 2).reshape(B, N, d)


def test_vit_attention_transformers4_layout():
    ViTSelfAttention = type("ViTSelfAttention", (_ViT4SelfAttention,), {})
    self_att = randomize_(ViTSelfAttention(16, 4))
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    assert max_diff(from_peer(self_att)(x), self_att(x)) < TOL   # W^O = I

    class ViTAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = ViTSelfAttention(16, 4)
            self.output = nn.Module()
            self.output.dense = nn.Linear(16, 16)

        def forward(self, x):
            return self.output.dense(self.attention(x))

    peer = randomize_(ViTAttention())
    assert max_diff(from_peer(peer)(x), peer(x)) < TOL


# ------------------------------------------------------------------------------------ DeepSeek-V2
def _deepseek(q_lora_rank):
    transformers = pytest.importorskip("transformers")
    from transformers.models.deepseek_v2 import modeling_deepseek_v2 as M

    config = transformers.DeepseekV2Config(
        hidden_size=32, num_attention_heads=4, num_hidden_layers=1, q_lora_rank=q_lora_rank, kv_lora_rank=10,
        qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, vocab_size=64, intermediate_size=64,
        moe_intermediate_size=16, n_routed_experts=4, num_experts_per_tok=2, max_position_embeddings=64)
    config._attn_implementation = "sdpa"
    return M, config, randomize_(M.DeepseekV2Attention(config, layer_idx=0))


@pytest.mark.parametrize("q_lora_rank", [12, None])
@pytest.mark.parametrize("causal", [False, True])
def test_deepseek_v2_attention(q_lora_rank, causal):
    """Exact up to the float32 steps inside 🤗's module (RMSNorm and RoPE run in float32 there)."""
    M, config, peer = _deepseek(q_lora_rank)
    ours = from_peer(peer)
    assert isinstance(ours, MultiHeadLatentAttention)
    assert (ours.rope, ours.rope_dim, ours.latent_norm) == ("decoupled", 4, "q_kv" if q_lora_rank else "kv")
    assert ours.kv_cache_per_token() == 10 + 4                   # latent + shared rope key
    N = 9
    x = torch.randn(2, N, 32, dtype=torch.float64)
    pos = torch.arange(5, 5 + N)
    pe = M.DeepseekV2RotaryEmbedding(config)(x, pos[None])
    mask = additive_causal_mask(N) if causal else torch.zeros(N, N, dtype=torch.float64)
    y = peer(x, attention_mask=mask[None, None], position_embeddings=pe)[0]
    assert max_diff(ours(x, causal=causal, positions=pos), y) < 1e-5 * float(y.detach().abs().max())


@pytest.mark.parametrize("q_lora_rank", [12, None])
def test_deepseek_v2_mapping_is_exact_in_float64(q_lora_rank, monkeypatch):
    """With 🤗's float32 RMSNorm and RoPE replaced by the same formulas in float64, outputs agree to round-off."""
    M, config, peer = _deepseek(q_lora_rank)

    def rms_norm64(self, h):
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def rotary64(xq, xk, freqs_cis):
        f = freqs_cis.unsqueeze(1)
        rot = [torch.view_as_real(torch.view_as_complex(t.reshape(*t.shape[:-1], -1, 2)) * f).flatten(3)
               for t in (xq, xk)]
        return rot[0], rot[1]

    monkeypatch.setattr(M.DeepseekV2RMSNorm, "forward", rms_norm64)
    monkeypatch.setattr(M, "apply_rotary_emb", rotary64)
    ours = from_peer(peer)
    N = 9
    x = torch.randn(2, N, 32, dtype=torch.float64)
    pos = torch.arange(3, 3 + N)
    inv_freq = 10000.0 ** (-torch.arange(0, 4, 2, dtype=torch.float64) / 4)
    pe = torch.polar(torch.ones(1, N, 2, dtype=torch.float64), pos[None, :, None].double() * inv_freq)
    y = peer(x, attention_mask=additive_causal_mask(N)[None, None], position_embeddings=pe)[0]
    assert max_diff(ours(x, causal=True, positions=pos), y) < TOL


def test_deepseek_v2_unsupported_configs():
    transformers = pytest.importorskip("transformers")
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2Attention

    base = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=1, q_lora_rank=12, kv_lora_rank=10,
                qk_rope_head_dim=4, vocab_size=64, intermediate_size=64, moe_intermediate_size=16,
                n_routed_experts=4, num_experts_per_tok=2)
    wrong_dims = transformers.DeepseekV2Config(**base, qk_nope_head_dim=6, v_head_dim=8)
    with pytest.raises(ValueError, match="qk_nope_head_dim = v_head_dim = hidden_size / num_heads = 8"):
        from_peer(DeepseekV2Attention(wrong_dims, 0))
    biased = transformers.DeepseekV2Config(**base, qk_nope_head_dim=8, v_head_dim=8, attention_bias=True)
    with pytest.raises(ValueError, match="attention_bias=True"):
        from_peer(DeepseekV2Attention(biased, 0))
    scaled = transformers.DeepseekV2Config(**base, qk_nope_head_dim=8, v_head_dim=8,
                                           rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                            "rope_theta": 10000.0})
    with pytest.raises(ValueError, match="rope_type='linear'"):
        from_peer(DeepseekV2Attention(scaled, 0))


def test_converted_peer_keeps_dtype_and_mode():
    peer = nn.MultiheadAttention(16, 2, batch_first=True)          # float32, training mode
    ours = from_peer(peer)
    assert next(ours.parameters()).dtype == torch.float32 and ours.training
    assert isinstance(to_tucker(ours.eval()), TuckerAttention)


# --------------------------------------------------------------- the layer options peers need
def test_bias_and_latent_norm_options_cost_nothing_when_off():
    def n_params(m):
        return sum(p.numel() for p in m.parameters())

    assert n_params(MultiHeadAttention(24, 4)) == counting.attention_params("mha", 24, 4)
    assert n_params(GroupedQueryAttention(24, 4, 2)) == counting.attention_params("gqa", 24, 4, n_kv_heads=2)
    assert n_params(MultiHeadLatentAttention(24, 4, 10, 6)) == counting.attention_params("mla", 24, 4, q_latent=10,
                                                                                          kv_latent=6)
    assert n_params(TuckerAttention(24, 4, (2, 8, 6))) == counting.attention_params("tucker", 24, 4, ranks=(2, 8, 6))
    assert n_params(MultiHeadAttention(24, 4, bias=True)) == 4 * 24 * 24 + 4 * 24
    gqa, tucker = GroupedQueryAttention(24, 4, 2), TuckerAttention(24, 4, (2, 8, 6))
    assert n_params(GroupedQueryAttention(24, 4, 2, bias=True)) == n_params(gqa) + 2 * 24 + 2 * 12
    assert n_params(TuckerAttention(24, 4, (2, 8, 6), bias=True)) == n_params(tucker) + 4 * 6 + 24   # n_H r3 + d
    assert n_params(MultiHeadLatentAttention(24, 4, 10, 6, latent_norm="q_kv")) == \
        n_params(MultiHeadLatentAttention(24, 4, 10, 6)) + 10 + 6
    with pytest.raises(ValueError, match="latent_norm must be one of"):
        MultiHeadLatentAttention(24, 4, 10, 6, latent_norm="q")
    with pytest.raises(TypeError, match="bias must be a bool"):
        TuckerAttention(24, 4, (2, 8, 6), bias=1)
    with pytest.raises(TypeError, match="bias must be a bool"):
        MultiHeadAttention(24, 4, bias="yes")


@pytest.mark.parametrize("make", [
    lambda: MultiHeadLatentAttention(24, 4, 10, 6, rope="decoupled", rope_dim=4, latent_norm="q_kv"),
    lambda: MultiHeadLatentAttention(24, 4, 10, 6, rope="latent", separate_kv=True, latent_norm="kv"),
    lambda: TuckerAttention(24, 4, (3, 10, 8), rope=True, bias=True),
    lambda: TuckerAttention(24, 4, (3, 10, 8), shared_kv=True, bias=True),
    lambda: MultiHeadAttention(24, 4, bias=True, rope=True),
], ids=["mla_decoupled_qkv_norm", "mla_latent_separate_kv_norm", "tucker_rope_bias", "tucker_shared_bias",
        "mha_rope_bias"])
def test_options_decode_token_by_token(make):
    layer = randomize_(make())
    x = torch.randn(2, 6, 24, dtype=torch.float64)
    cache = layer.make_cache(2, 6)
    steps = torch.cat([layer(x[:, i:i + 1], cache=cache, causal=True) for i in range(6)], dim=1)
    assert max_diff(steps, layer(x, causal=True)) < TOL
    assert cache.numel() == 2 * 6 * layer.kv_cache_per_token()


def test_latent_norm_is_an_rms_norm_of_the_cached_latent():
    layer = randomize_(MultiHeadLatentAttention(24, 4, 10, 6, latent_norm="kv", norm_eps=1e-5))
    x = torch.randn(1, 3, 24, dtype=torch.float64)
    cache = layer.make_cache(1, 3)
    layer(x, cache=cache)
    c = x @ layer.kv_down.weight.T
    want = c / torch.sqrt(c.pow(2).mean(-1, keepdim=True) + 1e-5) * layer.kv_norm.weight
    torch.testing.assert_close(cache.buffers["kv"][0, 0], want[0], rtol=1e-13, atol=1e-13)
