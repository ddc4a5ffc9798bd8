"""A preallocated, per-layer key/value cache for incremental decoding.

Each layer says what it stores per token (its ``cache_spec``): named entries with a head count and a
width. MHA stores K and V per KV head; MLA stores its latent (and, with decoupled RoPE, the shared rope
key); Tucker stores one latent key of width r3 and one latent value of width r~3 (one entry if shared).
``cache.numel()`` counts the elements held for the tokens written so far, i.e.
``batch * tokens * kv_cache_per_token`` of paper §5.

Two layouts of the same buffers:

- **dynamic** (default): the number of tokens held is a Python int; a call attends to exactly the held
  tokens (``buffer[:, :, :length]``), so every decoding step has a new key length. Fastest in eager mode.
- **static** (``static=True``): the fill length and the next position are device tensors; new entries are
  written with ``index_copy_`` and a call attends to the whole preallocated length under a mask that hides
  the unwritten slots and the future. Every decoding step has the same shapes and reads nothing back to the
  host, so ``torch.compile`` captures it once (and, on CUDA, ``mode="reduce-overhead"`` replays it as a CUDA
  graph). The capacity is not checked per call there (that would read the device): size it to the tokens
  you will write (``GPT.generate`` does).

Neither layout reads a device value back to the host in a decoding step with default positions: the next
position is a device tensor (``next_position()``), and the dynamic layout knows it on the host as long as
every token was appended at the default positions ``0, 1, 2, ...``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["KVCache"]


def _mark_static(t: torch.Tensor) -> None:
    """Tell torch.compile that ``t`` keeps its address (CUDA graphs may then update it in place)."""
    mark = getattr(getattr(torch, "_dynamo", None), "mark_static_address", None)
    if mark is not None:
        mark(t)


class KVCache:
    """Preallocated buffers ``name -> (batch, heads, max_len, width)`` plus a fill length.

    Args:
        spec: ``{name: (heads, width)}`` per-token layout, from the layer.
        batch_size, max_len: capacity. dtype, device: of the buffers.
        static: the static-shape layout (see the module docstring); default the dynamic one.
    """

    def __init__(self, spec: Mapping[str, tuple[int, int]], *, batch_size: int, max_len: int,
                 dtype: torch.dtype, device: torch.device | str, static: bool = False) -> None:
        for arg, val in (("batch_size", batch_size), ("max_len", max_len)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{arg} must be a positive int, got {arg}={val!r}")
        if not isinstance(static, bool):
            raise TypeError(f"static must be a bool, got static={static!r}")
        self.spec = dict(spec)
        self.batch_size = batch_size
        self.max_len = max_len
        self.static = static
        self.buffers = {name: torch.zeros(batch_size, h, max_len, w, dtype=dtype, device=device)
                        for name, (h, w) in self.spec.items()}
        self.positions = torch.zeros(max_len, dtype=torch.long, device=device)  # (max_len,)
        self._length = 0                  # dynamic: tokens held (host)
        self._default_positions = True    # every token so far at the default positions 0, 1, 2, ...
        self._filled = torch.zeros((), dtype=torch.long, device=device)  # static: tokens held (device)
        self._next = torch.zeros((), dtype=torch.long, device=device)    # static: next default position
        self._slots = torch.arange(max_len, device=device)               # static: key slot indices
        if static:
            for t in (*self.buffers.values(), self.positions, self._filled, self._next, self._slots):
                _mark_static(t)

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.buffers.values())).dtype

    @property
    def device(self) -> torch.device:
        return next(iter(self.buffers.values())).device

    # ----------------------------------------------------------------------------------- fill state
    @property
    def length(self) -> int:
        """Tokens held. (A static cache reads its device counter here: for reporting, not in a step.)"""
        return int(self._filled) if self.static else self._length

    @length.setter
    def length(self, n: int) -> None:
        """Keep only the first ``n`` tokens (e.g. to decode the same step again in a benchmark)."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= self.max_len:
            raise ValueError(f"length must be an int in [0, max_len={self.max_len}], got length={n!r}")
        self._length = n
        self._filled.fill_(n)
        if n == 0:
            self._next.zero_()
        else:
            self._next.copy_(self.positions[n - 1] + 1)

    def known_length(self) -> int | None:
        """Tokens held if the host knows it without reading the device (dynamic layout), else None."""
        return None if self.static else self._length

    def known_next_position(self) -> int | None:
        """The next default position if the host knows it without reading the device, else None."""
        if self.static or not self._default_positions:
            return None
        return self._length

    def next_position(self) -> torch.Tensor:
        """The default position of the next token, a 0-d long tensor on the cache's device: one after the last
        held one (0 when empty). Computed on the device; nothing is read back to the host."""
        if self.static:
            return self._next
        if self._default_positions or self._length == 0:
            return torch.tensor(self._length, device=self.device)
        return self.positions[self._length - 1] + 1

    def held_positions(self) -> torch.Tensor:
        """Absolute positions of the tokens held, (length,); the static layout returns all ``max_len`` slots
        (unwritten ones are masked in attention)."""
        return self.positions if self.static else self.positions[: self._length]

    def per_token(self) -> int:
        """Elements stored per token and batch row (the paper's §5 KV cache per token)."""
        return sum(h * w for h, w in self.spec.values())

    def numel(self) -> int:
        """Elements held for the tokens written so far: batch * length * per_token()."""
        return self.batch_size * self.length * self.per_token()

    def capacity_numel(self) -> int:
        """Elements allocated: batch * max_len * per_token()."""
        return self.batch_size * self.max_len * self.per_token()

    def nbytes(self) -> int:
        """Bytes held for the tokens written so far: ``numel() * element size``."""
        return self.numel() * self.buffers[next(iter(self.buffers))].element_size()

    def reset(self) -> None:
        """Forget all tokens (buffers are kept)."""
        self.length = 0
        self._default_positions = True

    # -------------------------------------------------------------------------------------- writing
    def check_append(self, batch: int, n_new: int, dtype: torch.dtype, device: torch.device) -> None:
        """Raise a clear error if ``n_new`` tokens of this batch cannot be appended (host-side facts only;
        a static cache's fill level lives on the device and is not checked)."""
        if batch != self.batch_size:
            raise ValueError(f"cache was made for batch_size={self.batch_size}, got input batch {batch}")
        if not self.static and self._length + n_new > self.max_len:
            raise ValueError(f"cache overflow: it holds {self._length} of max_len={self.max_len} tokens and "
                             f"cannot take {n_new} more; make_cache(batch_size, max_len) with a larger max_len")
        if n_new > self.max_len:
            raise ValueError(f"cannot append {n_new} tokens to a cache of max_len={self.max_len}")
        if device != self.device:
            raise ValueError(f"cache is on {self.device} but the input is on {device}")
        if dtype != self.dtype:
            raise TypeError(f"cache dtype {self.dtype} differs from the computation dtype {dtype}")

    def append(self, positions: torch.Tensor, **new: torch.Tensor) -> dict[str, torch.Tensor]:
        """Write ``new[name]`` (batch, heads, n, width) after the held tokens; return all entries.

        Every entry of the spec must be given, with the same ``n``; ``positions`` (n,) are the tokens'
        absolute positions (kept so that keys can be rotated when they are read back). Returns views of the
        held tokens (dynamic layout) or the whole buffers (static layout; see ``attention_mask``).
        """
        if set(new) != set(self.spec):
            raise ValueError(f"cache entries must be exactly {sorted(self.spec)}, got {sorted(new)}")
        n_new = {t.shape[2] for t in new.values()}
        if len(n_new) != 1:
            raise ValueError(f"all cache entries must add the same number of tokens, got {n_new}")
        n = n_new.pop()
        first = next(iter(new.values()))
        self.check_append(first.shape[0], n, first.dtype, first.device)
        for name, t in new.items():
            h, w = self.spec[name]
            if tuple(t.shape) != (self.batch_size, h, n, w):
                raise ValueError(f"cache entry {name!r} must have shape {(self.batch_size, h, n, w)}, "
                                 f"got {tuple(t.shape)}")
        return self.write(positions, new, default_positions=False)

    def write(self, positions: torch.Tensor, new: Mapping[str, torch.Tensor], *,
              default_positions: bool) -> dict[str, torch.Tensor]:
        """``append`` without its checks (the layer ran ``check_append`` once); ``default_positions`` says
        whether ``positions`` are the defaults ``length, length+1, ...`` (then the host keeps knowing them)."""
        n = positions.shape[0]
        if self.static:
            idx = self._filled + torch.arange(n, device=self.device)                  # (n,) slots
            for name, t in new.items():
                self.buffers[name].index_copy_(2, idx, t)
            self.positions.index_copy_(0, idx, positions)
            self._filled.add_(n)
            self._next.copy_(positions[-1] + 1)
            return dict(self.buffers)
        start, end = self._length, self._length + n
        for name, t in new.items():
            self.buffers[name][:, :, start:end] = t
        self.positions[start:end] = positions
        self._length = end
        self._default_positions = self._default_positions and default_positions
        return {name: buf[:, :, :end] for name, buf in self.buffers.items()}

    def attention_mask(self, n_new: int, causal: bool) -> torch.Tensor | None:
        """For the ``n_new`` tokens just written: the (n_new, key slots) boolean mask of what each may see,
        or None in the dynamic layout (there the keys are exactly the held tokens and ``causal`` is the
        kernel's bottom-right mask). Static layout: slot ``j`` is visible to new token ``i`` if it is written
        (``j < filled``) and, with ``causal``, not in its future (``j <= filled - n_new + i``)."""
        if not self.static:
            return None
        if causal:
            last = self._filled - n_new + torch.arange(n_new, device=self.device)    # (n_new,) own slot
            return self._slots.unsqueeze(0) <= last.unsqueeze(1)
        return (self._slots < self._filled).unsqueeze(0).expand(n_new, self.max_len)

    def __repr__(self) -> str:
        length = "<device>" if self.static else self._length
        return (f"KVCache(spec={self.spec}, batch_size={self.batch_size}, length={length}, "
                f"max_len={self.max_len}, dtype={self.dtype}, static={self.static})")
