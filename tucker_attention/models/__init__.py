"""GPT and ViT with any attention of the paper, chosen by an :class:`AttentionConfig`.

    from tucker_attention.models import GPT, GPTConfig, AttentionConfig
    cfg = GPTConfig(vocab_size=256, block_size=64, n_layer=2, d_model=64, n_heads=4,
                    attention=AttentionConfig(method="tucker", ranks=(2, 16, 16)))
    model = GPT(config=cfg)
    logits, loss = model(idx, targets)
"""

from .blocks import MLP, Block, attention_layers, init_weights
from .config import AttentionConfig, GPTConfig, ViTConfig, build_attention
from .gpt import GPT
from .vit import ViT

__all__ = ["GPT", "MLP", "AttentionConfig", "Block", "GPTConfig", "ViT", "ViTConfig",
           "attention_layers", "build_attention", "build_model", "init_weights"]


def build_model(config: GPTConfig | ViTConfig) -> GPT | ViT:
    """``GPT`` for a ``GPTConfig``, ``ViT`` for a ``ViTConfig``."""
    if isinstance(config, GPTConfig):
        return GPT(config=config)
    if isinstance(config, ViTConfig):
        return ViT(config=config)
    raise TypeError(f"config must be a GPTConfig or ViTConfig, got {type(config).__name__}")
