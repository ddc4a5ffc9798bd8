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

from ..attention import AttentionLayer, KVCache
from .config import _ModelConfig, build_attention

__all__ = ["MLP", "Block", "init_weights"]

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
    """nanoGPT / GPT-2 initialization, with one rule for every attention method.

    - every ``nn.Linear`` / ``nn.Conv2d`` weight and every ``nn.Embedding``: ``N(0, std²)``; biases 0;
      LayerNorm: weight 1, bias 0;
    - the MLP's residual projection ``c_proj``: ``N(0, (std / √(2 n_layer))²)``, so the residual stream's
      variance does not grow with depth;
    - every attention layer: ``layer.initialize(std=std, out_std=std / √(2 n_layer))`` — its queries, keys
      and values start at MHA's scale ``std·√d`` and its output like MHA's residual ``W^O``, however the
      layer factorizes its weights (MHA/GQA: exactly the two lines above; MLA and Tucker: input-side factors
      ``N(0, std²)``, the others variance-preserving; see ``AttentionLayer.initialize``).
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
    for module in model.modules():
        if isinstance(module, MLP):
            nn.init.normal_(module.c_proj.weight, mean=0.0, std=residual)
        elif isinstance(module, AttentionLayer):
            module.initialize(std=std, out_std=residual)


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
