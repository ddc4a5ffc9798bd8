"""The transformer block both models share, and their nanoGPT-style initialization.

Pre-norm block (GPT-2 / ViT):

    x = x + Dropout(Attention(LayerNorm(x)))
    x = x + MLP(LayerNorm(x)),        MLP(h) = Dropout(W_2 GELU(W_1 h + b_1) + b_2)

The attention is any layer of :mod:`tucker_attention.attention`, chosen by an ``AttentionConfig``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..attention import AttentionLayer, KVCache, TuckerAttention
from .config import _ModelConfig, build_attention

__all__ = ["MLP", "Block", "init_weights", "RESIDUAL_PROJECTIONS"]

RESIDUAL_PROJECTIONS = ("mlp.c_proj.weight", "attn.o_proj.weight")
"""Names (suffixes) of the linear maps that write into the residual stream; scaled at init."""


class MLP(nn.Module):
    """Position-wise MLP: Linear(d → hidden) → GELU → Linear(hidden → d) → Dropout."""

    def __init__(self, d_model: int, hidden: int, *, bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.c_fc = nn.Linear(d_model, hidden, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(hidden, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))      # (B, N, d)


class Block(nn.Module):
    """One pre-norm transformer block with the configured attention.

    Args:
        cfg: the model config (d_model, n_heads, mlp_ratio, dropout, bias, attention).
        max_seq_len: longest sequence the attention will see (its positions must be below it).
        causal: causal (GPT) or bidirectional (ViT) attention.
    """

    def __init__(self, cfg: _ModelConfig, *, max_seq_len: int, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        self.ln_1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn: AttentionLayer = build_attention(cfg.attention, cfg.d_model, cfg.n_heads, max_seq_len=max_seq_len)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.ln_2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = MLP(cfg.d_model, cfg.mlp_hidden, bias=cfg.bias, dropout=cfg.dropout)

    def forward(self, x: torch.Tensor, *, cache: KVCache | None = None) -> torch.Tensor:
        """x: (B, N, d) → (B, N, d); with ``cache``, the new tokens attend to all cached ones too."""
        x = x + self.resid_dropout(self.attn(self.ln_1(x), causal=self.causal, cache=cache))
        return x + self.mlp(self.ln_2(x))


@torch.no_grad()
def init_weights(model: nn.Module, n_layer: int, *, std: float = 0.02) -> None:
    """nanoGPT / GPT-2 initialization.

    - every ``nn.Linear`` and ``nn.Conv2d`` weight (the attention projections of MHA, GQA, MQA and MLA
      included) and every ``nn.Embedding``: ``N(0, std²)``; biases 0; LayerNorm: weight 1, bias 0;
    - residual projections (``mlp.c_proj``, ``attn.o_proj``): ``N(0, (std / sqrt(2 n_layer))²)``, so the
      residual stream's variance does not grow with depth;
    - Tucker layers keep their own variance-preserving init (``TuckerAttention.reset_parameters``: a
      Tucker factor has no fan-in of its own to take a fixed std from), and their residual output factor
      ``post_U2`` is scaled by the same ``1 / sqrt(2 n_layer)``.
    """
    residual = std / math.sqrt(2 * n_layer)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            if module.weight is not None:
                nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, TuckerAttention):
            module.reset_parameters()
            module.post_U2.mul_(1.0 / math.sqrt(2 * n_layer))
    for name, p in model.named_parameters():
        if name.endswith(RESIDUAL_PROJECTIONS):
            nn.init.normal_(p, mean=0.0, std=residual)


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """The attention layers of a model, in order."""
    return [m for m in model.modules() if isinstance(m, AttentionLayer)]


def count_attention_params(model: nn.Module) -> int:
    """Parameters of all attention layers (each counted once)."""
    seen: set[int] = set()
    total = 0
    for layer in attention_layers(model):
        for p in layer.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def count_params(model: nn.Module, *, exclude: tuple[nn.Parameter, ...] = ()) -> int:
    """Parameters of ``model`` (tied ones once), minus those in ``exclude``."""
    skip = {id(p) for p in exclude}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)
