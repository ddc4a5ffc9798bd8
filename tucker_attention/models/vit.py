"""A Vision Transformer classifier with any attention of the paper.

    tokens = Conv_{p×p, stride p}(image) flattened        (B, (S/p)², d)   — one linear map per patch
    h_0 = Dropout([cls; tokens] + P)                      learned positions P; cls only with pool="cls"
    h_l = Block_l(h_{l-1})                                 pre-norm, bidirectional attention
    logits = Head(LayerNorm(h_L)[cls] or mean over patches)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Block, attention_layers, count_attention_params, count_params, init_weights
from .config import ViTConfig

__all__ = ["ViT"]


class ViT(nn.Module):
    """ViT classifier.

    Args:
        config: a :class:`ViTConfig` (keyword-only).

    Attributes:
        patch_embed: Conv2d(channels → d, kernel = stride = patch_size). cls_token: (1, 1, d) or None.
        pos_embed: (1, seq_len, d). blocks, ln_f, head: Linear(d → num_classes).
    """

    def __init__(self, *, config: ViTConfig) -> None:
        super().__init__()
        if not isinstance(config, ViTConfig):
            raise TypeError(f"config must be a ViTConfig, got {type(config).__name__}")
        self.config = config
        d = config.d_model
        self.patch_embed = nn.Conv2d(config.channels, d, kernel_size=config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if config.pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, config.seq_len, d))
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, max_seq_len=config.seq_len, causal=False)
                                    for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(d, bias=config.bias)
        self.head = nn.Linear(d, config.num_classes)
        init_weights(self, config.n_layer)
        with torch.no_grad():
            nn.init.normal_(self.pos_embed, std=0.02)
            if self.cls_token is not None:
                nn.init.normal_(self.cls_token, std=0.02)

    def attention_params(self) -> int:
        """Attention parameters of all layers: ``n_layer * counting.attention_params(...)``."""
        return count_attention_params(self)

    def num_params(self) -> int:
        """All parameters."""
        return count_params(self)

    def kv_cache_per_token(self) -> int:
        """KV-cache elements per token summed over layers (what a cache would hold; a ViT does not decode)."""
        return sum(layer.kv_cache_per_token() for layer in attention_layers(self))

    def no_weight_decay(self) -> set[str]:
        """Parameter names AdamW should not decay (besides biases and norms): position embedding, class token."""
        return {"pos_embed"} | ({"cls_token"} if self.cls_token is not None else set())

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits and the mean cross-entropy loss.

        Args:
            images: (B, channels, image_size, image_size) float. targets: (B,) int64 labels, or None.
        Returns:
            logits (B, num_classes), loss (scalar, or None without targets).
        """
        c = self.config
        expected = (c.channels, c.image_size, c.image_size)
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must have shape (batch, {c.channels}, {c.image_size}, {c.image_size}), "
                             f"got {tuple(getattr(images, 'shape', ()))}")
        B = images.shape[0]
        if targets is not None and tuple(targets.shape) != (B,):
            raise ValueError(f"targets must have shape ({B},), got {tuple(targets.shape)}")
        x = self.patch_embed(images).flatten(2).transpose(1, 2)       # (B, P, d)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(B, -1, -1).to(x.dtype), x), dim=1)   # (B, 1 + P, d)
        x = self.drop(x + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        pooled = x[:, 0] if self.cls_token is not None else x.mean(dim=1)   # (B, d)
        logits = self.head(pooled)                                     # (B, num_classes)
        loss = None if targets is None else F.cross_entropy(logits, targets)
        return logits, loss
