"""Table-1 formulas against the real modules, and the paper's Table 2 / Table 3 megabytes."""

from __future__ import annotations

import pytest

import tucker_attention as ta
from tucker_attention import counting

CASES = [
    ("mha", 48, 6, {}),
    ("mha", 48, 6, {"rope": True}),
    ("gqa", 48, 6, {"n_kv_heads": 2}),
    ("gqa", 48, 6, {"n_kv_heads": 3}),
    ("mqa", 48, 6, {}),
    ("mla", 48, 6, {"q_latent": 20, "kv_latent": 12}),
    ("mla", 48, 6, {"q_latent": 20, "kv_latent": 12, "separate_kv": True}),
    ("mla", 48, 6, {"q_latent": 20, "kv_latent": 12, "rope": "latent"}),
    ("mla", 48, 6, {"q_latent": 20, "kv_latent": 12, "rope": "decoupled"}),
    ("mla", 48, 6, {"q_latent": 20, "kv_latent": 12, "rope": "decoupled", "rope_dim": 6, "separate_kv": True}),
    ("tucker", 48, 6, {"ranks": (3, 16, 8)}),
    ("tucker", 48, 6, {"ranks": (3, 16, 8), "post_ranks": (2, 10, 6)}),
    ("tucker", 48, 6, {"ranks": (3, 16, 8), "shared_kv": True}),
    ("tucker", 48, 6, {"ranks": (6, 48, 48), "rope": True}),
]


@pytest.mark.parametrize("method,d,h,sizes", CASES)
def test_formulas_equal_module_counts(method, d, h, sizes):
    layer = counting.build_layer(method, d, h, **sizes)
    assert counting.attention_params(method, d, h, **sizes) == sum(p.numel() for p in layer.parameters())
    assert counting.kv_cache_per_token(method, d, h, **sizes) == layer.kv_cache_per_token()
    assert counting.module_params(method, d, h, **sizes) == sum(p.numel() for p in layer.parameters())


def test_closed_forms_of_table_1():
    d, h, dh = 768, 12, 64
    assert counting.attention_params("mha", d, h) == 4 * d * d
    assert counting.attention_params("gqa", d, h, n_kv_heads=4) == 2 * d * d + 2 * 4 * dh * d
    assert counting.attention_params("mqa", d, h) == 2 * d * d + 2 * dh * d
    assert counting.attention_params("mla", d, h, q_latent=128, kv_latent=128) == d * d + 5 * d * 128
    assert counting.attention_params("mla", d, h, q_latent=128, kv_latent=128, separate_kv=True) == d * d + 6 * d * 128
    expect = 2 * (8 * 128 * 64 + h * 8 + d * 128 + d * 64)
    assert counting.attention_params("tucker", d, h, ranks=(8, 128, 64)) == expect
    assert counting.kv_cache_per_token("tucker", d, h, ranks=(8, 128, 64)) == 2 * 64
    assert counting.kv_cache_per_token("tucker", d, h, ranks=(8, 128, 64), shared_kv=True) == 64
    assert counting.kv_cache_per_token("mla", d, h, q_latent=128, kv_latent=128) == 128
    assert counting.kv_cache_per_token("gqa", d, h, n_kv_heads=2) == 2 * 2 * dh


@pytest.mark.parametrize("table", [counting.gpt2_small_table, counting.llama3_1b_table])
def test_paper_tables_within_the_papers_rounding(table):
    """PAPER.md §5: small differences (<= 0.05 MB or <= 1.1 %) against the formulas are the paper's."""
    for row in table():
        for ours, paper in ((row.attention_mb, row.paper_attention_mb), (row.kv_cache_mb, row.paper_kv_cache_mb)):
            if paper is None:
                continue
            assert abs(ours - paper) <= 0.05 or abs(ours - paper) / paper <= 0.011, (row.label, ours, paper)


def test_paper_ratios():
    rows = {r.label: r for r in counting.gpt2_small_table()}
    mha, mla = rows["MHA"].attention_params, rows["MLA d_c=128"].attention_params
    t = rows["Tucker [8,128,64]"].attention_params
    assert round(100 * t / mha) == 18
    assert round(100 * t / mla) == 39
    assert round(mha / rows["Tucker [8,64,64]"].attention_params) == 9


def test_bad_method_and_sizes():
    with pytest.raises(ValueError, match=r"method must be one of .* got method='gqa2'"):
        counting.attention_params("gqa2", 64, 4)
    with pytest.raises(TypeError, match=r"unknown size argument\(s\) \['n_kv_heads'\] for method='mha'"):
        counting.attention_params("mha", 64, 4, n_kv_heads=2)
    with pytest.raises(TypeError, match=r"needs size argument\(s\) \['ranks'\]"):
        counting.kv_cache_per_token("tucker", 64, 4)
    with pytest.raises(ValueError, match=r"ranks\[0\]=5 must be in \[1, n_heads=4\]"):
        counting.attention_params("tucker", 64, 4, ranks=(5, 8, 8))
    with pytest.raises(ValueError, match="divisible"):
        counting.attention_params("mha", 66, 4)


def test_top_level_api_names():
    for name in ("MultiHeadAttention", "GroupedQueryAttention", "MultiHeadLatentAttention", "TuckerAttention"):
        assert hasattr(ta, name)


def test_table_rows_carry_their_differences_and_cache_per_token():
    rows = {r.label: r for r in counting.gpt2_small_table()}
    mla = rows["MLA d_c=128"]
    assert mla.kv_cache_per_token == 128
    assert mla.attention_diff_percent == pytest.approx(100 * (mla.attention_mb - 26.00) / 26.00)
    assert rows["GQA n_KV=4"].kv_cache_diff_percent is None
