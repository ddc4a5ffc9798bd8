"""Parameter and KV-cache accounting (paper §5, Table 1) and its model-level tables (Tables 2 and 3).

``attention_params(method, d_model, n_heads, **sizes)`` counts exactly the parameters of the layer that
``attention.build(method, d_model, n_heads, **sizes)`` constructs; both read the method's spec in
:mod:`tucker_attention.attention.registry`, which holds the formulas. ``**sizes`` use the constructors' own
argument names (``n_kv_heads``, ``q_latent``, ``kv_latent``, ``separate_kv``, ``rope``, ``rope_dim``,
``ranks``, ``post_ranks``, ``shared_kv``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .attention import registry
from .attention.registry import LAYER_OPTIONS, build

__all__ = ["GPT2_SMALL", "LAYER_OPTIONS", "LLAMA3_1B_LIKE", "ModelShape", "TableRow", "attention_params",
           "build_layer", "gpt2_small_table", "kv_cache_per_token", "llama3_1b_table", "model_attention_mb",
           "model_kv_cache_mb", "module_params"]

build_layer = build
"""The layer that ``attention_params`` counts: :func:`tucker_attention.attention.build` (kept under this name)."""


def attention_params(method: str, d_model: int, n_heads: int, **sizes) -> int:
    """Attention parameters of one layer (paper §5, Table 1), equal to the module's ``numel``."""
    sizes = registry.check_sizes(method, d_model, n_heads, sizes)
    return registry.spec(method).params(d_model, n_heads, sizes)


def kv_cache_per_token(method: str, d_model: int, n_heads: int, **sizes) -> int:
    """KV-cache elements per layer and token (paper §5), equal to the layer's ``cache_spec``."""
    sizes = registry.check_sizes(method, d_model, n_heads, sizes)
    return registry.spec(method).kv_cache(d_model, n_heads, sizes)


def module_params(method: str, d_model: int, n_heads: int, **sizes) -> int:
    """Parameters of the real module, counted on the meta device (no memory)."""
    layer = build(method, d_model, n_heads, device="meta", **sizes)
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
