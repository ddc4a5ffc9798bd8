"""A preallocated, per-layer key/value cache for incremental decoding.

Each layer says what it stores per token (its ``cache_spec``): named entries with a head count and a
width. MHA stores K and V per KV head; MLA stores its latent (and, with decoupled RoPE, the shared rope
key); Tucker stores one latent key of width r3 and one latent value of width r~3 (one entry if shared).
``cache.numel()`` counts the elements held for the tokens written so far, i.e.
``batch * tokens * kv_cache_per_token`` of PAPER.md §5.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["KVCache"]


class KVCache:
    """Preallocated buffers ``name -> (batch, heads, max_len, width)`` plus a fill length.

    Args:
        spec: ``{name: (heads, width)}`` per-token layout, from the layer.
        batch_size, max_len: capacity. dtype, device: of the buffers.
    """

    def __init__(self, spec: Mapping[str, tuple[int, int]], *, batch_size: int, max_len: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        for arg, val in (("batch_size", batch_size), ("max_len", max_len)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{arg} must be a positive int, got {arg}={val!r}")
        self.spec = dict(spec)
        self.batch_size = batch_size
        self.max_len = max_len
        self.length = 0
        self.buffers = {name: torch.zeros(batch_size, h, max_len, w, dtype=dtype, device=device)
                        for name, (h, w) in self.spec.items()}
        self.positions = torch.zeros(max_len, dtype=torch.long, device=device)  # (max_len,)

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.buffers.values())).dtype

    @property
    def device(self) -> torch.device:
        return next(iter(self.buffers.values())).device

    def per_token(self) -> int:
        """Elements stored per token and batch row (PAPER.md §5's KV cache per token)."""
        return sum(h * w for h, w in self.spec.values())

    def numel(self) -> int:
        """Elements held for the tokens written so far: batch * length * per_token()."""
        return self.batch_size * self.length * self.per_token()

    def capacity_numel(self) -> int:
        """Elements allocated: batch * max_len * per_token()."""
        return self.batch_size * self.max_len * self.per_token()

    def held_positions(self) -> torch.Tensor:
        """Absolute positions of the tokens held, (length,)."""
        return self.positions[: self.length]

    def next_position(self) -> int:
        """The default position of the next token: one after the last held one (0 when empty)."""
        return int(self.positions[self.length - 1]) + 1 if self.length else 0

    def reset(self) -> None:
        """Forget all tokens (buffers are kept)."""
        self.length = 0

    def check_append(self, batch: int, n_new: int, dtype: torch.dtype, device: torch.device) -> None:
        """Raise a clear error if ``n_new`` tokens of this batch cannot be appended."""
        if batch != self.batch_size:
            raise ValueError(f"cache was made for batch_size={self.batch_size}, got input batch {batch}")
        if self.length + n_new > self.max_len:
            raise ValueError(f"cache overflow: it holds {self.length} of max_len={self.max_len} tokens and "
                             f"cannot take {n_new} more; make_cache(batch_size, max_len) with a larger max_len")
        if device != self.device:
            raise ValueError(f"cache is on {self.device} but the input is on {device}")
        if dtype != self.dtype:
            raise TypeError(f"cache dtype {self.dtype} differs from the computation dtype {dtype}")

    def append(self, positions: torch.Tensor, **new: torch.Tensor) -> dict[str, torch.Tensor]:
        """Write ``new[name]`` (batch, heads, n, width) after the held tokens; return views of all tokens.

        Every entry of the spec must be given, with the same ``n``; ``positions`` (n,) are the tokens'
        absolute positions (kept so that keys can be rotated when they are read back).
        """
        if set(new) != set(self.spec):
            raise ValueError(f"cache entries must be exactly {sorted(self.spec)}, got {sorted(new)}")
        n_new = {t.shape[2] for t in new.values()}
        if len(n_new) != 1:
            raise ValueError(f"all cache entries must add the same number of tokens, got {n_new}")
        n = n_new.pop()
        first = next(iter(new.values()))
        self.check_append(first.shape[0], n, first.dtype, first.device)
        start, end = self.length, self.length + n
        for name, t in new.items():
            h, w = self.spec[name]
            if tuple(t.shape) != (self.batch_size, h, n, w):
                raise ValueError(f"cache entry {name!r} must have shape {(self.batch_size, h, n, w)}, "
                                 f"got {tuple(t.shape)}")
            self.buffers[name][:, :, start:end] = t
        self.positions[start:end] = positions
        self.length = end
        return {name: buf[:, :, :end] for name, buf in self.buffers.items()}

    def __repr__(self) -> str:
        return (f"KVCache(spec={self.spec}, batch_size={self.batch_size}, length={self.length}, "
                f"max_len={self.max_len}, dtype={self.dtype})")
