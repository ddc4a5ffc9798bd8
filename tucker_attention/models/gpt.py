"""A decoder-only GPT (nanoGPT / GPT-2 layout) with any attention of the paper.

    h_0 = Dropout(E[idx] + P[positions])            (P only with learned positions; none with RoPE)
    h_l = Block_l(h_{l-1})                          pre-norm, causal attention, GELU MLP
    logits = LayerNorm(h_L) Eᵀ                      (tied input/output embedding)

``generate`` decodes with each layer's KV cache (prefill, then one token per step), which holds what
paper §5 counts: ``2d`` per token and layer for MHA, ``r3 + r̃3`` for Tucker.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import KVCache
from .blocks import Block, attention_layers, count_attention_params, count_params, init_weights
from .config import GPTConfig

__all__ = ["GPT"]


class GPT(nn.Module):
    """GPT language model.

    Args:
        config: a :class:`GPTConfig` (keyword-only).

    Attributes:
        wte: token embedding (vocab, d), tied to ``lm_head``. wpe: learned positions (block_size, d) or None.
        blocks: ``n_layer`` :class:`~tucker_attention.models.blocks.Block` s. ln_f: final LayerNorm.
    """

    def __init__(self, *, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        d = config.d_model
        self.wte = nn.Embedding(config.vocab_size, d)
        self.wpe = nn.Embedding(config.block_size, d) if config.learned_positions else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, max_seq_len=config.block_size, causal=True)
                                    for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(d, bias=config.bias)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight                          # weight tying
        init_weights(self, config.n_layer)

    # ------------------------------------------------------------------------------------ counting
    def attention_params(self) -> int:
        """Attention parameters of all layers: ``n_layer * counting.attention_params(...)``."""
        return count_attention_params(self)

    def num_params(self, *, non_embedding: bool = False) -> int:
        """All parameters (the tied embedding once); ``non_embedding``: without the position embedding."""
        return count_params(self, exclude=(self.wpe.weight,) if non_embedding and self.wpe is not None else ())

    def kv_cache_per_token(self) -> int:
        """KV-cache elements per token, summed over layers (paper §5 × n_layer)."""
        return sum(layer.kv_cache_per_token() for layer in attention_layers(self))

    def no_weight_decay(self) -> set[str]:
        """Parameter names that AdamW should not decay (besides biases and norms): the embeddings."""
        return {"wte.weight", "lm_head.weight"} | ({"wpe.weight"} if self.wpe is not None else set())

    # ------------------------------------------------------------------------------------- forward
    def make_caches(self, batch_size: int, max_len: int | None = None, *,
                    dtype: torch.dtype | None = None, static: bool = False) -> list[KVCache]:
        """One empty KV cache per layer for ``batch_size`` sequences of up to ``max_len`` (block_size) tokens;
        ``static``: the static-shape layout that a compiled decoding step needs (``KVCache``)."""
        max_len = self.config.block_size if max_len is None else max_len
        if not 1 <= max_len <= self.config.block_size:
            raise ValueError(f"max_len must be in [1, block_size={self.config.block_size}], got max_len={max_len}")
        return [b.attn.make_cache(batch_size, max_len, dtype=dtype, static=static) for b in self.blocks]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                caches: list[KVCache] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next-token logits and the mean cross-entropy loss.

        Args:
            idx: (B, T) int64 token ids. targets: (B, T) int64 next tokens (-1 = ignore), or None.
            caches: per-layer KV caches (``make_caches``): ``idx`` continues the cached tokens, which
                hold positions ``0 .. caches[0].length - 1``.
        Returns:
            logits (B, T, vocab_size), loss (scalar, or None without targets).
        """
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype.is_floating_point:
            raise ValueError(f"idx must be a 2-D integer tensor (batch, seq), got "
                             f"{type(idx).__name__}{tuple(getattr(idx, 'shape', ()))}")
        B, T = idx.shape
        start = 0                  # tokens already cached: a host int, or (static caches) a device tensor
        if caches is not None:
            if len(caches) != len(self.blocks):
                raise ValueError(f"caches must hold one KVCache per layer ({len(self.blocks)}), got {len(caches)}")
            known = caches[0].known_length()
            start = caches[0].next_position() if known is None else known
        if isinstance(start, int) and start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens (cached {start} + new {T}) exceeds "
                             f"block_size={self.config.block_size}")
        if targets is not None and tuple(targets.shape) != (B, T):
            raise ValueError(f"targets must have shape {(B, T)} like idx, got {tuple(targets.shape)}")
        x = self.wte(idx)                                              # (B, T, d)
        if self.wpe is not None:
            pos = start + torch.arange(T, device=idx.device)
            x = x + self.wpe(pos)                                      # (B, T, d)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache=None if caches is None else caches[i])
        logits = self.lm_head(self.ln_f(x))                            # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T), ignore_index=-1)
        return logits, loss

    # ------------------------------------------------------------------------------------ decoding
    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None, use_cache: bool = True, compile: bool = False,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens to ``idx`` (B, T) and return (B, T + max_new_tokens).

        With ``use_cache`` the prompt is prefilled once into per-layer KV caches and each new token is one
        forward pass of length 1 — the same logits as re-running the whole context (the no-cache path).
        Once the sequence outgrows ``block_size``, both paths condition on the last ``block_size`` tokens
        (re-encoded from position 0, as nanoGPT does). ``top_k=1`` is greedy decoding.

        ``compile=True`` (with ``use_cache``) decodes with static-shape caches (``make_caches(static=True)``)
        and runs each one-token step through one ``torch.compile``-d function, compiled once per model,
        batch size and dtype: ``mode="reduce-overhead"`` on CUDA (the step replays as a CUDA graph), the
        default mode elsewhere. The prefill and the sampling stay eager. Same tokens as the eager path up to
        the compiler's floating-point reordering.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got temperature={temperature!r}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be None or an int >= 1, got top_k={top_k!r}")
        if not isinstance(compile, bool):
            raise TypeError(f"compile must be a bool, got compile={compile!r}")
        if idx.dim() != 2 or idx.shape[1] < 1:
            raise ValueError(f"idx must be (batch, seq) with seq >= 1, got {tuple(idx.shape)}")
        was_training = self.training
        self.eval()
        block = self.config.block_size
        caches = None
        autocast = torch.is_autocast_enabled(idx.device.type)
        cache_dtype = torch.get_autocast_dtype(idx.device.type) if autocast else None
        step = self._compiled_decode_step(idx.device) if compile and use_cache else self._decode_step
        try:
            for _ in range(max_new_tokens):
                if use_cache and idx.shape[1] <= block:
                    if caches is None:                                 # prefill the whole prompt
                        caches = self.make_caches(idx.shape[0], block, dtype=cache_dtype, static=compile)
                        logits, _ = self(idx, caches=caches)
                        logits = logits[:, -1, :]
                    else:                                              # one new token
                        logits = step(idx[:, -1:].contiguous(), caches)
                else:
                    logits, _ = self(idx[:, -block:])
                    logits = logits[:, -1, :]                          # (B, vocab)
                if logits.dtype in (torch.float16, torch.bfloat16):
                    logits = logits.float()
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = torch.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
                idx = torch.cat((idx, nxt), dim=1)
        finally:
            self.train(was_training)
        return idx

    def _decode_step(self, last: torch.Tensor, caches: list[KVCache]) -> torch.Tensor:
        """One cached decoding step: ``last`` (B, 1) token ids -> next-token logits (B, vocab)."""
        logits, _ = self(last, caches=caches)
        return logits[:, -1, :]

    def _compiled_decode_step(self, device: torch.device):
        """``_decode_step`` through ``torch.compile`` (made once per model and device type, then reused)."""
        kind = torch.device(device).type
        store = self.__dict__.setdefault("_compiled_steps", {})
        if kind not in store:
            mode = "reduce-overhead" if kind == "cuda" else None
            store[kind] = torch.compile(self._decode_step, mode=mode, dynamic=False)
        return store[kind]
