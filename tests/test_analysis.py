"""Model-level ranks, spectra, energy ranks and rank budgets (``tucker_attention.analysis``)."""

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
from tucker_attention.analysis import (
    energy_ranks,
    model_ranks,
    model_spectra,
    named_attention_layers,
    rank_budget,
)
from tucker_attention.convert import compress
from tucker_attention.tensors import attention_tensors, relative_error, unfolding_spectra


class TinyModel(nn.Module):
    """Blocks with attention of every kind, plus a non-attention submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(24, 24)
        self.blocks = nn.ModuleList([
            nn.ModuleDict({"attn": MultiHeadAttention(24, 4), "mlp": nn.Linear(24, 24)}),
            nn.ModuleDict({"attn": GroupedQueryAttention(24, 4, 2), "mlp": nn.Linear(24, 24)}),
            nn.ModuleDict({"attn": MultiHeadLatentAttention(24, 4, 10, 3), "mlp": nn.Linear(24, 24)}),
            nn.ModuleDict({"attn": TuckerAttention(24, 4, (2, 8, 6), (3, 5, 4)), "mlp": nn.Linear(24, 24)}),
        ])


def tiny_model(seed: int = 0) -> TinyModel:
    torch.manual_seed(seed)
    model = TinyModel().double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) / math.sqrt(p.shape[-1]))
    return model


def test_model_ranks_are_the_theorem_table():
    ranks = model_ranks(tiny_model())
    assert [r.name for r in ranks] == [f"blocks.{i}.attn" for i in range(4)]
    assert [r.kind for r in ranks] == ["MultiHeadAttention", "GroupedQueryAttention", "MultiHeadLatentAttention",
                                       "TuckerAttention"]
    expected = [
        ((4, 24, 24), (4, 24, 24)),       # MHA
        ((4, 24, 12), (4, 24, 12)),       # GQA n_kv = 2: key/value mode n_kv d_H
        ((4, 10, 3), (4, 12, 3)),         # MLA: output mode min(d, n_H d_c^K) = 12
        ((2, 8, 6), (3, 5, 4)),           # Tucker: its own ranks
    ]
    assert [(r.ranks, r.post_ranks) for r in ranks] == expected
    assert ranks[2].tucker_post_ranks == (4, 24, 3)                # MLA's factors carry the full output mode


def test_model_spectra():
    model = tiny_model()
    spectra = model_spectra(model)
    assert len(spectra) == 4
    mha = spectra[0]
    assert [s.shape[0] for s in mha.pre] == [4, 24, 24]
    W, Wt, _ = attention_tensors(model.blocks[0]["attn"])
    for got, want in zip(mha.pre + mha.post, unfolding_spectra(W) + unfolding_spectra(Wt)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    gqa = spectra[1]
    assert float(gqa.pre[2][12]) < 1e-12 * float(gqa.pre[2][0])   # key mode: rank n_kv d_H = 12 exactly


def test_rope_layers_are_reported_by_name():
    model = nn.Sequential(MultiHeadAttention(16, 4), MultiHeadAttention(16, 4, rope=True))
    with pytest.raises(ValueError, match=r"layer '1' \(MultiHeadAttention\): .*RoPE"):
        model_ranks(model)
    with pytest.raises(ValueError, match="contains no attention layer"):
        named_attention_layers(nn.Linear(3, 3))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        named_attention_layers("gpt2")


def test_peer_models_are_converted():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_embd=32, n_head=4, n_layer=2, vocab_size=64, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).double()
    layers = named_attention_layers(model)
    assert [n for n, _ in layers] == ["transformer.h.0.attn", "transformer.h.1.attn"]
    ranks = model_ranks(model)
    assert all(r.ranks == r.post_ranks == (4, 32, 32) for r in ranks)
    with pytest.raises(ValueError, match="contains no attention layer"):
        named_attention_layers(model, peers=False)


def test_energy_ranks():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])                        # energies 9, 4, 1, 0 of 14
    assert energy_ranks(s, 0.6) == 1
    assert energy_ranks(s, 0.9) == 2                              # 13/14 = 0.929
    assert energy_ranks(s, 0.95) == 3
    assert energy_ranks(s, 1.0) == 3                              # zero singular values are never needed
    assert energy_ranks(torch.tensor([1.0, 1.0, 1.0, 1.0]), 0.5) == 2
    assert energy_ranks((s, torch.tensor([5.0, 0.0])), 0.99) == (3, 1)
    assert energy_ranks(torch.zeros(3)) == 0
    with pytest.raises(ValueError, match=r"energy must be in \(0.0, 1.0\], got energy=1.5"):
        energy_ranks(s, 1.5)
    with pytest.raises(ValueError, match="non-empty 1-D tensor"):
        energy_ranks(torch.ones(2, 2))


def test_energy_ranks_drive_compression_within_the_hosvd_bound():
    """Truncating to the energy ranks leaves relative error² <= Σ_modes (1 - kept energy)."""
    layer = tiny_model().blocks[0]["attn"]
    W, Wt, _ = attention_tensors(layer)
    sp = model_spectra(nn.Sequential(layer))[0]
    for energy in (0.5, 0.8, 0.95):
        ranks, post_ranks = energy_ranks(sp.pre, energy), energy_ranks(sp.post, energy)
        c = compress(layer, ranks, post_ranks)
        Wc, Wtc, _ = attention_tensors(c)
        for T, Tc, spectra, r in ((W, Wc, sp.pre, ranks), (Wt, Wtc, sp.post, post_ranks)):
            dropped = sum(float(s[k:].pow(2).sum() / s.pow(2).sum()) for s, k in zip(spectra, r))
            assert dropped <= 3 * (1 - energy) + 1e-12
            assert relative_error(Tc, T) ** 2 <= dropped + 1e-12


def test_rank_budget_matches_modules_and_paper():
    b = rank_budget(24, 4, (2, 8, 6), (3, 5, 4), n_layers=3)
    layer = TuckerAttention(24, 4, (2, 8, 6), (3, 5, 4))
    assert b.params == 3 * sum(p.numel() for p in layer.parameters())
    assert b.kv_cache_per_token == 3 * layer.kv_cache_per_token() == 3 * (6 + 4)
    assert b.mha_params == 3 * 4 * 24 * 24 and b.mha_kv_cache_per_token == 3 * 2 * 24
    shared = rank_budget(24, 4, (2, 8, 6), (3, 5, 6), shared_kv=True)
    assert shared.params == sum(p.numel() for p in TuckerAttention(24, 4, (2, 8, 6), (3, 5, 6),
                                                                  shared_kv=True).parameters())
    # GPT-2 small, Tucker [8,128,64]: 10.24 MB of attention weights, 3.14 MB of cache, ≈ 18% of MHA (PAPER.md §5)
    gpt2 = rank_budget(768, 12, (8, 128, 64), n_layers=12)
    assert gpt2.attention_mb() == pytest.approx(10.24, abs=0.05)
    assert gpt2.kv_cache_mb(1024) == pytest.approx(3.14, abs=0.01)
    assert gpt2.param_fraction == pytest.approx(0.18, abs=0.005)
    assert gpt2.params == 12 * counting.attention_params("tucker", 768, 12, ranks=(8, 128, 64))
    with pytest.raises(ValueError, match=r"ranks\[1\]=800 must be in \[1, d_model=768\]"):
        rank_budget(768, 12, (8, 800, 64))
    with pytest.raises(ValueError, match="shared_kv=True needs equal key and value ranks"):
        rank_budget(24, 4, (2, 8, 6), (3, 5, 4), shared_kv=True)
    with pytest.raises(ValueError, match="n_layers must be an int >= 1"):
        rank_budget(24, 4, (2, 8, 6), n_layers=0)
