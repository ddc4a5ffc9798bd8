"""Parameter and KV-cache accounting (PAPER.md §5, the paper's Table 1) and its model-level tables.

``attention_params(method, d_model, n_heads, **sizes)`` counts exactly the parameters of the layer that
``build_layer(method, d_model, n_heads, **sizes)`` constructs; ``**sizes`` use the constructors' own
argument names (``n_kv_heads``, ``q_latent``, ``kv_latent``, ``separate_kv``, ``rope``, ``rope_dim``,
``ranks``, ``post_ranks``, ``shared_kv``). Formulas (per layer, no biases):

    mha     4 d²                                   cache 2 d
    gqa     2 d² + 2 n_kv d_H d                    cache 2 n_kv d_H       (mqa: n_kv = 1)
    mla     d² + 2 d d_c^Q + 3 d d_c^K             cache d_c^K
            (separate_kv: + d d_c^K, cache + d_c^K; decoupled RoPE: + n_H d_R d_c^Q + d d_R, cache + d_R)
    tucker  r1 r2 r3 + n_H r1 + d r2 + d r3  + (same with tildes)  (- d r3 if shared_kv)
                                                   cache r3 + r̃3          (r3 if shared_kv)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .attention import GroupedQueryAttention, MultiHeadAttention, MultiHeadLatentAttention, TuckerAttention
from .attention._checks import check_int, check_ranks

METHODS = ("mha", "gqa", "mqa", "mla", "tucker")
_SIZES = {
    "mha": {"rope"},
    "gqa": {"n_kv_heads", "rope"},
    "mqa": {"rope"},
    "mla": {"q_latent", "kv_latent", "separate_kv", "rope", "rope_dim"},
    "tucker": {"ranks", "post_ranks", "shared_kv", "rope"},
}
_REQUIRED = {"mha": set(), "gqa": {"n_kv_heads"}, "mqa": set(), "mla": {"q_latent", "kv_latent"},
             "tucker": {"ranks"}}


def _check(method: str, d_model: int, n_heads: int, sizes: dict) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got method={method!r}")
    check_int("d_model", d_model)
    check_int("n_heads", n_heads)
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
    unknown = set(sizes) - _SIZES[method]
    if unknown:
        raise TypeError(f"unknown size argument(s) {sorted(unknown)} for method={method!r}; "
                        f"allowed: {sorted(_SIZES[method])}")
    missing = _REQUIRED[method] - set(sizes)
    if missing:
        raise TypeError(f"method={method!r} needs size argument(s) {sorted(missing)}")


def _tucker_ranks(d_model: int, n_heads: int, sizes: dict) -> tuple[tuple[int, ...], tuple[int, ...]]:
    lim, names = (n_heads, d_model, d_model), ("n_heads", "d_model", "d_model")
    ranks = check_ranks("ranks", sizes["ranks"], lim, names)
    post = sizes.get("post_ranks")
    post = ranks if post is None else check_ranks("post_ranks", post, lim, names)
    return ranks, post


def _mla_rope_dim(d_model: int, n_heads: int, sizes: dict) -> int:
    if sizes.get("rope") != "decoupled":
        return 0
    rd = sizes.get("rope_dim")
    return (d_model // n_heads) // 2 if rd is None else rd


def attention_params(method: str, d_model: int, n_heads: int, **sizes) -> int:
    """Attention parameters of one layer (PAPER.md §5, Table 1), equal to the module's ``numel``."""
    _check(method, d_model, n_heads, sizes)
    d, dh = d_model, d_model // n_heads
    if method == "mha":
        return 4 * d * d
    if method in ("gqa", "mqa"):
        n_kv = 1 if method == "mqa" else check_int("n_kv_heads", sizes["n_kv_heads"], high=n_heads)
        return 2 * d * d + 2 * n_kv * dh * d
    if method == "mla":
        cq, ck = check_int("q_latent", sizes["q_latent"]), check_int("kv_latent", sizes["kv_latent"])
        total = d * d + 2 * d * cq + 3 * d * ck
        if sizes.get("separate_kv", False):
            total += d * ck
        dr = _mla_rope_dim(d, n_heads, sizes)
        return total + n_heads * dr * cq + d * dr
    (r1, r2, r3), (p1, p2, p3) = _tucker_ranks(d, n_heads, sizes)
    total = r1 * r2 * r3 + n_heads * r1 + d * r2 + d * r3 + p1 * p2 * p3 + n_heads * p1 + d * p2 + d * p3
    return total - (d * r3 if sizes.get("shared_kv", False) else 0)


def kv_cache_per_token(method: str, d_model: int, n_heads: int, **sizes) -> int:
    """KV-cache elements per layer and token (PAPER.md §5), equal to the layer's ``cache_spec``."""
    _check(method, d_model, n_heads, sizes)
    d, dh = d_model, d_model // n_heads
    if method == "mha":
        return 2 * d
    if method in ("gqa", "mqa"):
        n_kv = 1 if method == "mqa" else sizes["n_kv_heads"]
        return 2 * n_kv * dh
    if method == "mla":
        ck = sizes["kv_latent"]
        return (2 * ck if sizes.get("separate_kv", False) else ck) + _mla_rope_dim(d, n_heads, sizes)
    (_, _, r3), (_, _, p3) = _tucker_ranks(d, n_heads, sizes)
    return r3 if sizes.get("shared_kv", False) else r3 + p3


LAYER_OPTIONS = ("backend", "dropout", "max_seq_len", "rope_base", "rope_style")


def build_layer(method: str, d_model: int, n_heads: int, *, device: torch.device | str | None = None,
                **sizes) -> torch.nn.Module:
    """The layer that ``attention_params(method, d_model, n_heads, **sizes)`` counts.

    ``sizes`` may also carry the layers' options that do not change the counts (``LAYER_OPTIONS``:
    backend, dropout, max_seq_len, rope_base, rope_style). ``device="meta"`` builds it without allocating
    memory (for counting large models).
    """
    options = {k: sizes.pop(k) for k in LAYER_OPTIONS if k in sizes}
    _check(method, d_model, n_heads, sizes)
    sizes.update(options)
    with torch.device(device) if device is not None else _nullcontext():
        if method == "mha":
            return MultiHeadAttention(d_model, n_heads, **sizes)
        if method == "gqa":
            return GroupedQueryAttention(d_model, n_heads, **sizes)
        if method == "mqa":
            return GroupedQueryAttention(d_model, n_heads, 1, **sizes)
        if method == "mla":
            return MultiHeadLatentAttention(d_model, n_heads, **sizes)
        return TuckerAttention(d_model, n_heads, **sizes)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def module_params(method: str, d_model: int, n_heads: int, **sizes) -> int:
    """Parameters of the real module, counted on the meta device (no memory)."""
    layer = build_layer(method, d_model, n_heads, device="meta", **sizes)
    return sum(p.numel() for p in layer.parameters())


# ------------------------------------------------------------------------------------- model tables
@dataclass(frozen=True)
class ModelShape:
    """The sizes a whole-model table needs."""

    name: str
    d_model: int
    n_heads: int
    n_layers: int
    seq_len: int


GPT2_SMALL = ModelShape("GPT-2 small", d_model=768, n_heads=12, n_layers=12, seq_len=1024)
LLAMA3_1B_LIKE = ModelShape("LLaMA3-1B-like", d_model=2048, n_heads=32, n_layers=8, seq_len=1024)


@dataclass(frozen=True)
class TableRow:
    """One row of a paper table: our numbers from the real modules next to the paper's."""

    label: str
    method: str
    sizes: dict
    attention_params: int          # whole model, from the modules
    attention_mb: float            # bytes_per_param * params / 1e6
    kv_cache_mb: float             # bytes * n_layers * seq_len * per-token / 1e6 (batch 1)
    paper_attention_mb: float | None
    paper_kv_cache_mb: float | None
    kv_cache_per_token: int        # elements per layer and token

    @property
    def attention_diff_percent(self) -> float | None:
        """100 (ours − paper) / paper for the attention MB (None where the paper gives no number)."""
        return _diff_percent(self.attention_mb, self.paper_attention_mb)

    @property
    def kv_cache_diff_percent(self) -> float | None:
        """100 (ours − paper) / paper for the KV-cache MB (None where the paper gives no number)."""
        return _diff_percent(self.kv_cache_mb, self.paper_kv_cache_mb)


def _diff_percent(ours: float, paper: float | None) -> float | None:
    return None if paper is None else 100 * (ours - paper) / paper


def model_attention_mb(method: str, shape: ModelShape, *, bytes_per_param: int = 2, **sizes) -> float:
    """Attention weights of the whole model in MB (10⁶ bytes), bf16 by default."""
    return bytes_per_param * shape.n_layers * attention_params(method, shape.d_model, shape.n_heads, **sizes) / 1e6


def model_kv_cache_mb(method: str, shape: ModelShape, *, bytes_per_elem: int = 2, batch_size: int = 1,
                      **sizes) -> float:
    """KV cache of the whole model for ``batch_size`` sequences of ``shape.seq_len`` tokens, in MB."""
    per_tok = kv_cache_per_token(method, shape.d_model, shape.n_heads, **sizes)
    return bytes_per_elem * shape.n_layers * shape.seq_len * batch_size * per_tok / 1e6


def _rows(shape: ModelShape, entries: Sequence[tuple]) -> list[TableRow]:
    rows = []
    for label, method, sizes, paper_att, paper_kv in entries:
        n = shape.n_layers * module_params(method, shape.d_model, shape.n_heads, **sizes)
        rows.append(TableRow(label, method, dict(sizes), n, 2 * n / 1e6,
                             model_kv_cache_mb(method, shape, **sizes), paper_att, paper_kv,
                             kv_cache_per_token(method, shape.d_model, shape.n_heads, **sizes)))
    return rows


def gpt2_small_table() -> list[TableRow]:
    """Paper Table 2 (GPT-2 small, bf16, N=1024): attention MB and KV-cache MB per method."""
    return _rows(GPT2_SMALL, [
        ("MHA", "mha", {}, 56.62, 37.74),
        ("GQA n_KV=4", "gqa", {"n_kv_heads": 4}, 37.74, None),
        ("GQA n_KV=2", "gqa", {"n_kv_heads": 2}, 33.02, 6.29),
        ("MLA d_c=128", "mla", {"q_latent": 128, "kv_latent": 128}, 26.00, 3.14),
        ("Tucker [8,128,128]", "tucker", {"ranks": (8, 128, 128)}, 15.74, 6.28),
        ("Tucker [8,128,64]", "tucker", {"ranks": (8, 128, 64)}, 10.24, 3.14),
        ("Tucker [8,64,64]", "tucker", {"ranks": (8, 64, 64)}, 6.31, 3.14),
    ])


def llama3_1b_table() -> list[TableRow]:
    """Paper Table 3 (LLaMA3-1B-like, d=2048, 32 heads, 8 layers, bf16): attention MB per method."""
    return _rows(LLAMA3_1B_LIKE, [
        ("MHA", "mha", {}, 268.0, None),
        ("GQA n_KV=8", "gqa", {"n_kv_heads": 8}, 168.0, None),
        ("MQA", "mqa", {}, 138.0, None),
        ("MLA d_c=128 (separate K/V)", "mla", {"q_latent": 128, "kv_latent": 128, "separate_kv": True}, 93.3, None),
        ("Tucker [32,128,128]", "tucker", {"ranks": (32, 128, 128)}, 33.5, None),
        ("Tucker [32,128,64]", "tucker", {"ranks": (32, 128, 64)}, 21.0, None),
        ("Tucker [32,64,64]", "tucker", {"ranks": (32, 64, 64)}, 12.6, None),
    ])
