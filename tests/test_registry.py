"""The method registry: one spec per method drives building, counting, configs and the command line; the
layers' public steps (``qkv``, ``attention``, ``output``); size arguments from any integer sequence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tucker_attention as ta
from tucker_attention import counting
from tucker_attention.attention import GroupedQueryAttention, registry
from tucker_attention.cli import build_parser
from tucker_attention.models import GPT, AttentionConfig, GPTConfig

D, H = 48, 6

# sizes per method, several each; together they exercise every size argument of every spec
SIZES = {
    "mha": [{}, {"rope": True}],
    "gqa": [{"n_kv_heads": 2}, {"n_kv_heads": 3, "rope": True}],
    "mqa": [{}, {"rope": True}],
    "mla": [{"q_latent": 20, "kv_latent": 12}, {"q_latent": 20, "kv_latent": 12, "separate_kv": True},
            {"q_latent": 8, "kv_latent": 12, "rope": "latent"},
            {"q_latent": 20, "kv_latent": 12, "rope": "decoupled", "rope_dim": 6, "separate_kv": True}],
    "tucker": [{"ranks": (3, 16, 8)}, {"ranks": (3, 16, 8), "post_ranks": (2, 10, 6)},
               {"ranks": (3, 16, 8), "shared_kv": True}, {"ranks": (6, 48, 48), "rope": True}],
}


def test_every_method_has_cases_and_every_size_field_is_exercised():
    assert set(SIZES) == set(registry.METHODS)
    used = {k for cases in SIZES.values() for sizes in cases for k in sizes}
    assert set(registry.SIZE_FIELDS) <= used | {"post_ranks"} and "post_ranks" in used


@pytest.mark.parametrize("method,sizes", [(m, s) for m, cases in SIZES.items() for s in cases])
def test_build_equals_formulas_equals_module(method, sizes):
    layer = ta.attention.build(method, D, H, **sizes)
    spec = registry.spec(method)
    assert isinstance(layer, spec.cls)
    numel = sum(p.numel() for p in layer.parameters())
    checked = registry.check_sizes(method, D, H, sizes)
    assert spec.params(D, H, checked) == counting.attention_params(method, D, H, **sizes) == numel
    assert spec.kv_cache(D, H, checked) == counting.kv_cache_per_token(method, D, H, **sizes) == \
        layer.kv_cache_per_token()
    assert counting.module_params(method, D, H, **sizes) == numel          # meta device
    assert counting.build_layer is ta.attention.build                      # the old name still works


def test_configs_and_cli_read_the_registry():
    assert {f.name for f in AttentionConfig.__dataclass_fields__.values()} >= set(registry.SIZE_FIELDS)
    parser = build_parser()
    train = parser.parse_args(["train", "lm"])
    assert all(hasattr(train, name) for name in registry.SIZE_FIELDS)
    for method, cases in SIZES.items():
        for sizes in cases:
            cfg = AttentionConfig(method=method, **sizes)
            assert cfg.sizes() == {k: v for k, v in sizes.items()}
            assert cfg.label() == registry.spec(method).label(sizes)


def test_adding_a_spec_is_all_it_takes(monkeypatch):
    """A new method is one MethodSpec: building, counting, configs, models and the CLI pick it up."""
    spec = registry.MethodSpec(
        "gqa2", "GQA-2", GroupedQueryAttention, fixed={"n_kv_heads": 2},
        params=lambda d, h, s: 2 * d * d + 2 * 2 * (d // h) * d, kv_cache=lambda d, h, s: 2 * 2 * (d // h))
    monkeypatch.setitem(registry.METHODS, "gqa2", spec)
    layer = ta.attention.build("gqa2", D, H)
    assert layer.n_kv_heads == 2
    assert counting.attention_params("gqa2", D, H) == sum(p.numel() for p in layer.parameters())
    assert counting.kv_cache_per_token("gqa2", D, H) == layer.kv_cache_per_token()
    cfg = GPTConfig(vocab_size=32, block_size=8, n_layer=2, d_model=D, n_heads=H,
                    attention=AttentionConfig(method="gqa2"))
    model = GPT(config=cfg)
    assert model.attention_params() == 2 * counting.attention_params("gqa2", D, H)
    assert cfg.attention.label() == "GQA-2"
    args = build_parser().parse_args(["train", "lm", "--attention", "gqa2"])
    assert args.attention == "gqa2"


@pytest.mark.parametrize("call, exc, match", [
    (lambda: counting.attention_params("sparse", D, H), ValueError, r"method must be one of \['mha'"),
    (lambda: counting.attention_params("gqa", D, H), TypeError, r"method='gqa' needs size argument\(s\) \['n_kv"),
    (lambda: counting.attention_params("mha", D, H, ranks=(1, 2, 3)), TypeError, r"unknown size argument"),
    (lambda: counting.attention_params("mla", D, H, q_latent=64, kv_latent=8), ValueError,
     r"q_latent must be an int in \[1, d_model=48\], got q_latent=64"),
    (lambda: ta.MultiHeadLatentAttention(D, H, 8, 50), ValueError,
     r"kv_latent must be an int in \[1, d_model=48\], got kv_latent=50"),
    (lambda: ta.TuckerAttention(D, H, ranks=np.array([2.0, 8, 8])), TypeError, r"ranks\[0\] must be an int"),
    (lambda: ta.TuckerAttention(D, H, ranks=np.array([7, 8, 8])), ValueError, r"ranks\[0\]=7 must be in \[1, n_h"),
    (lambda: AttentionConfig(method="tucker", ranks=np.array([1, 2])), ValueError, r"attention.ranks must have 3"),
    (lambda: ta.GroupedQueryAttention(D, H, True), TypeError, r"n_kv_heads must be an int, got True"),
])
def test_size_errors_name_argument_value_and_rule(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_sizes_accept_any_integer_sequence():
    ranks = np.array([2, 16, 8])
    layer = ta.TuckerAttention(D, H, ranks=ranks, post_ranks=torch.tensor([2, 8, 8]))
    assert layer.ranks == (2, 16, 8) and layer.post_ranks == (2, 8, 8)
    assert all(type(r) is int for r in layer.ranks + layer.post_ranks)
    assert counting.attention_params("tucker", D, H, ranks=ranks) == counting.attention_params(
        "tucker", D, H, ranks=(2, 16, 8))
    cfg = AttentionConfig(method="tucker", ranks=ranks)
    assert cfg.ranks == (2, 16, 8) and cfg.to_dict()["ranks"] == [2, 16, 8]
    assert ta.GroupedQueryAttention(D, H, np.int64(2)).n_kv_heads == 2
    assert AttentionConfig(method="gqa", n_kv_heads=np.int64(3)).n_kv_heads == 3


def test_old_kind_dicts_load():
    cfg = AttentionConfig.from_dict({"kind": "tucker", "ranks": [2, 8, 8]})
    assert cfg.method == "tucker" and cfg.ranks == (2, 8, 8)
    model_cfg = GPTConfig.from_dict({**GPTConfig().to_dict(), "attention": {"kind": "mqa"}})
    assert model_cfg.attention.method == "mqa"


# ------------------------------------------------------------------------------ public layer steps
@pytest.mark.parametrize("method,sizes", [(m, s) for m, cases in SIZES.items() for s in cases])
def test_qkv_attention_output_is_forward(method, sizes):
    layer = ta.attention.build(method, D, H, **sizes).double().eval()
    x = torch.randn(2, 5, D, dtype=torch.float64)
    q, k, v = layer.qkv(x)
    n_kv = {"mha": H, "gqa": sizes.get("n_kv_heads"), "mqa": 1}.get(method, 1)
    assert q.shape[:3] == (2, H, 5) and k.shape[:3] == (2, n_kv, 5) and v.shape[:3] == (2, n_kv, 5)
    assert q.shape[-1] == k.shape[-1]
    y = layer.output(layer.attention(q, k, v, causal=True))
    torch.testing.assert_close(y, layer(x, causal=True), rtol=0, atol=0)
    cache = layer.make_cache(2, 5)                                 # with a cache, qkv appends
    layer(x[:, :3], causal=True, cache=cache)
    q, k, v = layer.qkv(x[:, 3:], cache=cache)
    assert k.shape[2] == 5 and q.shape[2] == 2 and cache.length == 5
    step = layer.output(layer.attention(q, k, v, causal=True, cache=cache))
    torch.testing.assert_close(step, layer(x, causal=True)[:, 3:], rtol=1e-10, atol=1e-12)


def test_qkv_of_mha_are_the_projections():
    layer = ta.MultiHeadAttention(16, 2).double()
    x = torch.randn(1, 3, 16, dtype=torch.float64)
    q, k, v = layer.qkv(x)
    torch.testing.assert_close(q.transpose(1, 2).reshape(1, 3, 16), layer.q_proj(x), rtol=0, atol=0)
    torch.testing.assert_close(k.transpose(1, 2).reshape(1, 3, 16), layer.k_proj(x), rtol=0, atol=0)
    torch.testing.assert_close(v.transpose(1, 2).reshape(1, 3, 16), layer.v_proj(x), rtol=0, atol=0)


def test_post_U3_is_a_named_parameter_and_old_state_dicts_load():
    layer = ta.TuckerAttention(16, 2, ranks=(2, 8, 4))
    names = [n for n, _ in layer.named_parameters()]
    assert "post_U3" in names and not any(n.startswith("_") for n in names)
    shared = ta.TuckerAttention(16, 2, ranks=(2, 8, 4), shared_kv=True)
    assert shared.post_U3 is shared.U3 and "post_U3" not in dict(shared.named_parameters())
    assert sum(p.numel() for p in shared.parameters()) == counting.attention_params("tucker", 16, 2, ranks=(2, 8, 4),
                                                                                    shared_kv=True)
    old = {("_post_U3" if k == "post_U3" else k): v for k, v in layer.state_dict().items()}   # before the rename
    fresh = ta.TuckerAttention(16, 2, ranks=(2, 8, 4))
    fresh.load_state_dict(old)
    assert torch.equal(fresh.post_U3, layer.post_U3)
    old_shared = {k: v for k, v in shared.state_dict().items() if k != "post_U3"}
    fresh = ta.TuckerAttention(16, 2, ranks=(2, 8, 4), shared_kv=True)
    fresh.load_state_dict(old_shared)
    assert fresh.post_U3 is fresh.U3 and torch.equal(fresh.U3, shared.U3)


def test_package_text_cites_the_paper_not_repository_files():
    """Users have the paper and the book, not PAPER.md: docstrings and messages cite sections (paper §3)."""
    import pathlib

    root = pathlib.Path(ta.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py") if "PAPER.md" in p.read_text()]
    assert offenders == []
